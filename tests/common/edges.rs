//! Test harness for edges and real clients: `raftcast edge` processes in front of a
//! [`Cluster`], and ffmpeg/ffprobe/rtmpdump child processes that are killed when their
//! guard drops.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{eventually, free_addr, Cluster, BIN};

/// A running `raftcast edge`.
pub struct EdgeProc {
    pub name: String,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl EdgeProc {
    /// Starts edge `name` in front of every origin of `c` and waits for `/health`.
    pub async fn start(c: &Cluster, name: &str, extra: &[&str]) -> EdgeProc {
        let origins: Vec<u64> = c.origins.keys().copied().collect();
        Self::start_with_origins(c, name, &origins, extra).await
    }

    /// Starts edge `name` listing only the origins `ids` and waits for `/health`.
    pub async fn start_with_origins(c: &Cluster, name: &str, ids: &[u64], extra: &[&str]) -> EdgeProc {
        let origins: Vec<String> = ids.iter().map(|id| c.http(*id).to_string()).collect();
        let (rtmp, http) = (free_addr(), free_addr());
        let log = c.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(BIN)
            .arg("edge")
            .args(["--id", name])
            .args(["--rtmp", &rtmp.to_string()])
            .args(["--http", &http.to_string()])
            .args(["--origins", &origins.join(",")])
            .arg("--cluster-secret-file")
            .arg(c.dir.path().join("cluster-secret"))
            .args(extra)
            .env_remove("RAFTCAST_CLUSTER_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let edge = EdgeProc { name: name.to_owned(), rtmp, http, log, child: Some(child) };
        let client = reqwest::Client::new();
        let url = format!("http://{http}/health");
        eventually(Duration::from_secs(10), "the edge to serve /health", || {
            let req = client.get(&url).send();
            async move { req.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        edge
    }

    pub fn rtmp_url(&self, app: &str, name: &str) -> String {
        format!("rtmp://{}/{app}/{name}", self.rtmp)
    }

    pub fn flv_url(&self, app: &str, name: &str) -> String {
        format!("http://{}/{app}/{name}.flv", self.http)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit status (10 s at most).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        eventually(Duration::from_secs(10), "the edge to exit", || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    /// Waits up to `limit` for the edge to exit on its own; its status, or `None`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self) -> Value {
        reqwest::get(format!("http://{}/status", self.http)).await.unwrap().json().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http)).await.unwrap().text().await.unwrap()
    }

    /// The value of the sample `series` (name with labels, as printed) in `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    pub fn dump_log(&self) {
        if let Ok(log) = std::fs::read_to_string(&self.log) {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} log (last 60 lines) ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The value of `series` in a Prometheus text page.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a tool is installed; a test that needs a missing one fails loudly (the
/// project's `scripts/install-deps.sh` installs them).
pub fn require(tool: &str) {
    let found = Command::new(tool).arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(found, "{tool} is not installed: run scripts/install-deps.sh (Debian packages ffmpeg, rtmpdump)");
}

/// ffmpeg publishing a libx264 + AAC test pattern (30 fps, 2 s GOP) in real time to `url`.
pub fn ffmpeg_publish(url: &str, log: PathBuf) -> Proc {
    ffmpeg_publish_with(url, &[], log)
}

/// [`ffmpeg_publish`] with output options `extra` (e.g. `-tls_verify 1 -ca_file CA`).
pub fn ffmpeg_publish_with(url: &str, extra: &[&str], log: PathBuf) -> Proc {
    require("ffmpeg");
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "60", "-threads", "1"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc(child)
}

/// Video packets ffprobe reads from `url` in `secs` seconds of stream time.
pub async fn ffprobe_video_packets(url: &str, secs: u32) -> Result<u64, String> {
    ffprobe_video_packets_with(url, &[], secs).await
}

/// [`ffprobe_video_packets`] with input options `extra` (e.g. `-tls_verify 1 -ca_file CA`).
pub async fn ffprobe_video_packets_with(url: &str, extra: &[&str], secs: u32) -> Result<u64, String> {
    require("ffprobe");
    let out = tokio::process::Command::new("ffprobe")
        .args(extra)
        .args(["-v", "error", "-rw_timeout", "5000000", "-select_streams", "v:0", "-count_packets"])
        .args(["-read_intervals", &format!("%+{secs}"), "-show_entries", "stream=nb_read_packets,codec_name"])
        .args(["-of", "json", url])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(u64::from(secs) + 20), out)
        .await
        .map_err(|_| format!("ffprobe {url} hung"))?
        .map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ffprobe output: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let stream = &json["streams"][0];
    if stream["codec_name"] != "h264" {
        return Err(format!("expected an h264 stream, got {json}"));
    }
    stream["nb_read_packets"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no packet count in {json}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `dir/source.flv`: a 20 s libx264 + AAC file whose every video frame differs (temporal noise).
pub fn noisy_source(dir: &Path) -> PathBuf {
    require("ffmpeg");
    let path = dir.join("source.flv");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30,noise=alls=12:allf=t+u"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440"])
        .args(["-t", "20", "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-threads", "1"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "encoding the source failed");
    path
}

/// rtmpdump (librtmp: RTMP or its own RTMPT) plays `url` live into `out` for `secs`,
/// then SIGINT makes it finish the file. Panics if it stopped before that or wrote
/// under 50 KB; returns ffprobe's `codec_name,nb_read_packets` lines for the file.
pub async fn rtmpdump_records(url: &str, out: &Path, secs: u64) -> String {
    require("rtmpdump");
    let mut rtmpdump = tokio::process::Command::new("rtmpdump")
        .args(["--live", "-r", url, "-o"])
        .arg(out)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    if rtmpdump.try_wait().unwrap().is_some() {
        let done = rtmpdump.wait_with_output().await.unwrap();
        panic!("rtmpdump stopped within {secs} s: {}", String::from_utf8_lossy(&done.stderr));
    }
    let _ = Command::new("kill").args(["-INT", &rtmpdump.id().unwrap().to_string()]).status();
    let done = tokio::time::timeout(Duration::from_secs(10), rtmpdump.wait_with_output()).await.unwrap().unwrap();
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    assert!(size > 50_000, "rtmpdump wrote {size} bytes: {}", String::from_utf8_lossy(&done.stderr));
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-show_entries", "stream=codec_name,nb_read_packets", "-of", "csv=p=0"])
        .arg(out)
        .output()
        .unwrap();
    String::from_utf8_lossy(&probe.stdout).into_owned()
}

/// ffmpeg publishing `source` in a loop, in real time, to `url`.
pub fn publish_file(source: &Path, url: &str, log: PathBuf) -> Proc {
    let child = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-re", "-stream_loop", "-1", "-i"])
        .arg(source)
        .args(["-c", "copy", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

/// Each video packet of `file` (a path or a URL) as ffmpeg's framehash muxer prints
/// it: (dts, sha256). HLS VOD's fMP4 carries the FLV file's H.264 packets unchanged, so
/// the hashes compare across the two.
pub fn packets(file: impl AsRef<OsStr>, out: &Path) -> Vec<(i64, String)> {
    let file = file.as_ref();
    assert!(framehash(file, out).success(), "ffmpeg could not read {}", file.to_string_lossy());
    read_framehash(out)
}

/// ffmpeg's framehash (sha256) of each video packet of `file` into `out`.
pub fn framehash(file: impl AsRef<OsStr>, out: &Path) -> std::process::ExitStatus {
    Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(file)
        .args(["-map", "0:v", "-c", "copy", "-f", "framehash", "-hash", "sha256"])
        .arg(out)
        .status()
        .unwrap()
}

/// ffmpeg playing `url`, writing each video packet's hash to `out` as it comes.
pub fn play_hashes(url: &str, out: &Path, log: &Path) -> Proc {
    let child = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-rw_timeout", "15000000", "-i", url])
        .args(["-map", "0:v", "-c", "copy", "-f", "framehash", "-hash", "sha256", "-flush_packets", "1", "-y"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

/// The video packets (stream 0) of a file ffmpeg's framehash muxer wrote: (dts, hash).
pub fn read_framehash(out: &Path) -> Vec<(i64, String)> {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("0,"))
        .map(|l| {
            let fields: Vec<&str> = l.split(',').map(str::trim).collect();
            (fields[1].parse().unwrap(), fields.last().unwrap().to_string())
        })
        .collect()
}

/// The sha256 of each video packet, as ffmpeg's framehash muxer prints them.
pub fn read_hashes(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with("0,"))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

/// The source's video packets, hashed like the players' ([`read_hashes`]): every one
/// distinct, so a frame is known by its hash.
pub fn reference(source: &Path, dir: &Path) -> Vec<String> {
    let hashes: Vec<String> = packets(source, &dir.join("reference.hash")).into_iter().map(|(_, h)| h).collect();
    assert!(hashes.len() >= 590, "{} reference frames", hashes.len());
    let unique: std::collections::HashSet<_> = hashes.iter().collect();
    assert_eq!(unique.len(), hashes.len(), "every source frame is distinct");
    hashes
}

/// Checks that `got` is a run of the looped `reference`: every frame after the first,
/// in order, none missing, none twice. Returns how many frames it covers.
pub fn assert_run_of(reference: &[String], got: &[String], who: &str) -> usize {
    assert!(got.len() > 30, "{who} received only {} video frames", got.len());
    let start = reference.iter().position(|h| *h == got[0]).unwrap_or_else(|| panic!("{who}: unknown first frame"));
    for (i, h) in got.iter().enumerate() {
        let want = &reference[(start + i) % reference.len()];
        if h != want {
            let at = reference.iter().position(|r| r == h);
            let expected = (start + i) % reference.len();
            let what = match at {
                Some(at) if at > expected => format!("{} frames skipped", at - expected),
                Some(at) => format!("{} frames repeated", expected - at),
                None => "not a source frame".to_owned(),
            };
            panic!("{who}: frame {i} of {} is source frame {at:?}, expected {expected} ({what})", got.len());
        }
    }
    got.len()
}
