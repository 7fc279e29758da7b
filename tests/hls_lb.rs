//! Issue 13's end-to-end proof, on the deployment operators run
//! (`RAFTCAST_LB=1 scripts/bootstrap.sh start`: three origins, two edges, HAProxy):
//! ffmpeg publishes through the balancer's RTMP port (and keeps the encoded source in
//! an FLV file); through the balancer's HTTP port, with no stickiness, hls.js in
//! low-latency mode plays (`tests/hls/play.mjs`) and an ffmpeg recorder records
//! (`tests/hls/record.mjs`), while `tests/hls/check-playlists.mjs` reloads the playlist
//! from both edges directly. Meanwhile: SIGKILL the edge that served the player's last
//! request (from HAProxy's log), restart it, then SIGKILL the stream's owner origin.
//!
//! Expected: no fatal player error, no stall over 2 s, LL latency p50 ≤ 1.5 s; the
//! recorder gets every source frame exactly once, in order; every playlist valid
//! (RFC 8216bis, m3u8-parser); both edges list the same segments under the same URIs
//! with byte-identical bytes.
//!
//! About 130 s of wall clock. HLS_LB_SECONDS sets the run's length (default 120,
//! enough for 100 segments of 1 s).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hls")
}

fn script(data: &Path, base: u16, action: &str) -> Output {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bootstrap.sh"))
        .arg(action)
        .env("RAFTCAST_BIN", common::BIN)
        .env("RAFTCAST_DATA_DIR", data)
        .env("RAFTCAST_HTTP_BASE", base.to_string())
        .env("RAFTCAST_MEDIA_BASE", (base + 10).to_string())
        .env("RAFTCAST_RTMP_BASE", (base + 4).to_string())
        .env("RAFTCAST_EDGE_HTTP_BASE", (base + 14).to_string())
        .env("RAFTCAST_LB_STATS", format!("127.0.0.1:{}", base + 19))
        .env("RAFTCAST_LB", "1")
        // One-second segments (the GOP is 1 s): 100 of them in the default 120 s.
        .env("RAFTCAST_EDGE_HLS_SEGMENT_MS", "1000")
        .env_remove("RAFTCAST_ADMIN_TOKEN")
        .env_remove("RAFTCAST_CLUSTER_SECRET")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "failed:\n{text}");
    text
}

fn free_base() -> u16 {
    (0..100)
        .map(|_| 20_000 + (rand::random::<u16>() % 30_000))
        .find(|b| (1..=20).all(|i| std::net::TcpListener::bind(("127.0.0.1", b + i)).is_ok()))
        .expect("a free port range")
}

fn kill(data: &Path, name: &str) {
    let pid = std::fs::read_to_string(data.join(format!("pids/{name}.pid"))).unwrap();
    assert!(Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success(), "kill {name}");
}

fn node(args: &[&str], out: &Path) -> Child {
    Command::new("node")
        .args(args)
        .current_dir(harness())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct StopOnDrop<'a>(&'a Path, u16);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = script(self.0, self.1, "stop");
    }
}

#[test]
fn players_behind_haproxy_never_notice_an_edge_or_the_owner_dying() {
    let secs: u64 = std::env::var("HLS_LB_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = free_base();
    let _stop = StopOnDrop(&data, base);
    ok(script(&data, base, "start"));
    // The publisher is on edge-1 (directly: an RTMP connection through the balancer dies
    // with its edge, and ffmpeg does not reconnect); the players' edge that dies below
    // is edge-2, the next time it served the player's last request.
    let (lb_http, publish_rtmp) = (base + 14, base + 4 + 1);
    let source = dir.path().join("source.flv");
    let _ffmpeg = Reaped(
        Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440", "-map", "0:v", "-map", "1:a"])
            // ffmpeg's tee muxer gives x264 no global header unless asked: the FLV then
            // carries an empty AVC sequence header and Annex-B frames, which the HLS
            // packager does not take (noted in docs/hls.md).
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-c:a", "aac"])
            .args(["-flags", "+global_header"])
            .args(["-t", &(secs + 30).to_string(), "-f", "tee"])
            .arg(format!("[f=flv]{}|[f=flv]rtmp://127.0.0.1:{publish_rtmp}/live/lbtest", source.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{lb_http}/live/lbtest/index.m3u8");
    let edge = |i: u16| format!("http://127.0.0.1:{}/live/lbtest/index.m3u8", lb_http + i);
    common_wait_playlist(&url);

    let (play_out, rec_out, check_out) =
        (dir.path().join("play.json"), dir.path().join("record.json"), dir.path().join("check.json"));
    let s = secs.to_string();
    let mut play = node(&["play.mjs", &url, &s, "--max-stall-ms", "2000", "--max-p50-ms", "1500"], &play_out);
    let mut rec = node(&["record.mjs", &url, &s, "--source", &source.display().to_string()], &rec_out);
    let mut check = node(
        &["check-playlists.mjs", "--edge", &edge(1), "--edge", &edge(2), "--lb", &url, "--seconds", &s]
            .into_iter()
            .chain(["--ll", "--pdt", "--parts", "--min-segments", "100"])
            .collect::<Vec<_>>(),
        &check_out,
    );

    // A third in: the edge that served the player's last request dies, and comes back.
    std::thread::sleep(Duration::from_secs(secs / 3));
    let victim = "edge-2";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(data.join("logs/haproxy.log")).unwrap_or_default();
        let last = log.lines().rev().find(|l| l.contains("/live/lbtest/")).unwrap_or_default().to_owned();
        if last.contains("edges_http/edge-2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "edge-2 served none of the player's requests: {last}");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(&data, victim);
    std::thread::sleep(Duration::from_secs(3));
    ok(script(&data, base, "start"));
    // Two thirds in: the stream's owner origin dies.
    std::thread::sleep(Duration::from_secs(secs / 3));
    let streams = ok(Command::new(common::BIN)
        .args(["ctl", "--json", "--origin", &format!("127.0.0.1:{}", base + 1), "--token-file"])
        .arg(data.join("admin-token"))
        .arg("streams")
        .output()
        .unwrap());
    let streams: serde_json::Value = serde_json::from_str(&streams).unwrap();
    let owner = streams["streams"][0]["owner"].as_u64().expect("the stream's owner");
    kill(&data, &format!("origin-{owner}"));

    let (p, r, c) = (play.wait().unwrap(), rec.wait().unwrap(), check.wait().unwrap());
    let (p_json, r_json, c_json) = (report(&play_out), report(&rec_out), report(&check_out));
    eprintln!("play: {p_json:#}\nrecord: {r_json:#}\ncheck: {c_json:#}");
    assert!(p.success(), "player: {:?}", p_json["problems"]);
    assert!(r.success(), "recorder: {}", r_json["firstProblem"]);
    assert!(c.success(), "playlists: {:?}", c_json["errors"]);
}

/// Until the balancer serves the stream's playlist with a segment (30 s at most).
fn common_wait_playlist(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl").args(["-fsS", "--max-time", "5", url]).output().unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("#EXTINF") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no playlist at {url} within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}
