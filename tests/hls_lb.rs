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
//! About 70 s of wall clock. HLS_LB_SECONDS sets the run's length: default 60 (50
//! segments of 1 s) to keep CI within its budget; `HLS_LB_SECONDS=120` is the
//! nightly-style run issue 13 was closed on (100 segments, about 130 s).
//!
//! The second test does the same across a publisher reconnecting through the other
//! edge (about 60 s).

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
        // HAProxy's agent checks: base+9 and base+10, free in this layout.
        .env("RAFTCAST_AGENT_BASE", (base + 8).to_string())
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

fn kill(data: &Path, name: &str) {
    let pid = std::fs::read_to_string(data.join(format!("pids/{name}.pid"))).unwrap();
    assert!(Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success(), "kill {name}");
}

/// The first publisher's picture: a test pattern with a running clock, so every frame
/// differs from every other.
const TESTSRC2: &str = "testsrc2=size=640x360:rate=30";

/// ffmpeg publishing `lavfi` (and a 440 Hz tone) for `secs` to
/// `rtmp://127.0.0.1:{rtmp}/live/{name}`, keeping the encoded stream in `source` (FLV).
fn publish(lavfi: &str, secs: u64, source: &Path, rtmp: u16, name: &str) -> Child {
    Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", lavfi])
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-map", "0:v", "-map", "1:a"])
        // ffmpeg's tee muxer gives x264 no global header unless asked: the FLV then
        // carries an empty AVC sequence header and Annex-B frames, which the HLS
        // packager does not take (noted in docs/hls.md).
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-c:a", "aac"])
        .args(["-flags", "+global_header"])
        // 4:2:0, what players decode (an RGB source such as testsrc would make x264
        // encode 4:4:4, which browsers do not play).
        .args(["-pix_fmt", "yuv420p"])
        .args(["-t", &secs.to_string(), "-f", "tee"])
        // The file flushed at every packet: the recorder reads it while this still
        // runs, and unflushed it lagged the stream by more than the recorder's latency
        // (a growing FLV read 0 frames 4 s into a run; flushed, 117 of 120).
        .arg(format!("[f=flv:flush_packets=1]{}|[f=flv]rtmp://127.0.0.1:{rtmp}/live/{name}", source.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
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

/// The two tests take turns: each is a whole cluster, Chromium and three ffmpegs, and
/// side by side on two cores hls.js started ~2 s behind live (p50 1,975 ms, no stall)
/// and failed the latency bound.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn players_behind_haproxy_never_notice_an_edge_or_the_owner_dying() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let secs: u64 = std::env::var("HLS_LB_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = common::free_base();
    let _stop = StopOnDrop(&data, base);
    ok(script(&data, base, "start"));
    // The publisher is on edge-1 (directly: an RTMP connection through the balancer dies
    // with its edge, and ffmpeg does not reconnect); the players' edge that dies below
    // is edge-2, the next time it served the player's last request.
    let (lb_http, publish_rtmp) = (base + 14, base + 4 + 1);
    let source = dir.path().join("source.flv");
    let _ffmpeg = Reaped(publish(TESTSRC2, secs + 30, &source, publish_rtmp, "lbtest"));
    let url = format!("http://127.0.0.1:{lb_http}/live/lbtest/index.m3u8");
    let edge = |i: u16| format!("http://127.0.0.1:{}/live/lbtest/index.m3u8", lb_http + i);
    common_wait_playlist(&url);

    let (play_out, rec_out, check_out) =
        (dir.path().join("play.json"), dir.path().join("record.json"), dir.path().join("check.json"));
    let s = secs.to_string();
    let min_segments = (secs * 5 / 6).to_string();
    // A low-latency player catches up after a slow start or a stall (AVPlayer does so on
    // its own; hls.js when maxLiveSyncPlaybackRate > 1): the bound is then on the latency
    // the edges allow, not on how busy the machine was when Chromium started.
    let mut play = node(
        &["play.mjs", &url, &s, "--max-stall-ms", "2000", "--max-p50-ms", "1500", "--catch-up", "1.25"],
        &play_out,
    );
    let mut rec = node(&["record.mjs", &url, &s, "--source", &source.display().to_string()], &rec_out);
    let mut check = node(
        &["check-playlists.mjs", "--edge", &edge(1), "--edge", &edge(2), "--lb", &url, "--seconds", &s]
            .into_iter()
            // 1 s segments: all but the first fifth of the run, whatever HLS_LB_SECONDS says.
            .chain(["--ll", "--pdt", "--parts", "--min-segments", &min_segments])
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
    eprintln!("{} SIGKILL {victim}", common_now());
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
    let status = Command::new(common::BIN)
        .args(["ctl", "--origin", &format!("127.0.0.1:{}", base + 1), "--token-file"])
        .arg(data.join("admin-token"))
        .arg("status")
        .output()
        .unwrap();
    eprintln!("before the owner's kill:\n{}", String::from_utf8_lossy(&status.stdout));
    kill(&data, &format!("origin-{owner}"));
    eprintln!("{} SIGKILL origin-{owner} (the owner)", common_now());

    let (p, r, c) = (play.wait().unwrap(), rec.wait().unwrap(), check.wait().unwrap());
    let (p_json, r_json, c_json) = (report(&play_out), report(&rec_out), report(&check_out));
    eprintln!("play: {p_json:#}\nrecord: {r_json:#}\ncheck: {c_json:#}");
    assert!(p.success(), "player: {:?}", p_json["problems"]);
    assert!(r.success(), "recorder: {}", r_json["firstProblem"]);
    assert!(c.success(), "playlists: {:?}", c_json["errors"]);
}

/// The second publisher's picture: `testsrc` draws other bars and its own counter, so
/// none of its decoded frames equals one of `testsrc2`'s (both counters restart at 0: a
/// second `testsrc2` would repeat the first one's opening frames, and a repeat is what
/// the recorder must catch).
const TESTSRC: &str = "testsrc=size=640x360:rate=30";

/// "The same across a publisher reconnect through the other edge": ffmpeg publishes
/// through edge-1 for `HLS_RECONNECT_AFTER` s (default 25) and ends cleanly; as soon as
/// it has exited a second ffmpeg publishes the same stream, another picture, through
/// edge-2. Through HAProxy meanwhile: hls.js (LL) plays, the recorder records, and
/// both edges' playlists are checked. Expected: no stall longer than 2 s, or than the
/// publisher's absence plus 1 s when that is longer (the time from publisher 1's exit
/// to publisher 2's first segment, set by ffmpeg's start-up: a player cannot play
/// frames nobody has sent; `HLS_RECONNECT_GAP_MS` keeps publisher 2 back that long on
/// purpose; on a busy CI machine ffmpeg alone took about 3 s once), every frame of both
/// sources exactly once and in order, the same segments and bytes on both edges, and
/// the timeline breaking exactly once (`EXT-X-DISCONTINUITY`), at the reconnect, with
/// the numbering running on (msn + 1, discontinuity sequence + 1). About 60 s.
#[test]
fn players_behind_haproxy_never_notice_the_publisher_reconnecting_through_the_other_edge() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let first: u64 = std::env::var("HLS_RECONNECT_AFTER").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = common::free_base();
    let _stop = StopOnDrop(&data, base);
    ok(script(&data, base, "start"));
    let (lb_http, edge1_rtmp, edge2_rtmp) = (base + 14, base + 4 + 1, base + 4 + 2);
    let (source1, source2) = (dir.path().join("source1.flv"), dir.path().join("source2.flv"));
    let mut publisher1 = Reaped(publish(TESTSRC2, first, &source1, edge1_rtmp, "reconnect"));
    let url = format!("http://127.0.0.1:{lb_http}/live/reconnect/index.m3u8");
    let edge = |i: u16| format!("http://127.0.0.1:{}/live/reconnect/index.m3u8", lb_http + i);
    common_wait_playlist(&url);

    // The harness runs until well after the reconnect: as long again as what is left of
    // the first session, and at least 20 s.
    let secs = (2 * first).saturating_sub(5).max(first + 20);
    let (play_out, rec_out, check_out) =
        (dir.path().join("play.json"), dir.path().join("record.json"), dir.path().join("check.json"));
    let s = secs.to_string();
    // No latency bound here (it is reported): the new session's timeline continues just
    // after the old one's end, so the time the publisher was away stays in the
    // player's latency from then on (hls.js does not catch up at playback rate 1).
    // The stall is bounded below, once the publisher's absence is known.
    let mut play = node(&["play.mjs", &url, &s], &play_out);
    let (src1, src2) = (source1.display().to_string(), source2.display().to_string());
    let mut rec = node(&["record.mjs", &url, &s, "--source", &src1, "--source", &src2], &rec_out);
    let mut check = node(
        &["check-playlists.mjs", "--edge", &edge(1), "--edge", &edge(2), "--lb", &url, "--seconds", &s]
            .into_iter()
            .chain(["--ll", "--pdt", "--parts", "--discontinuities", "1", "--no-skips"])
            .chain(["--min-segments", &(secs - 10).to_string()])
            .collect::<Vec<_>>(),
        &check_out,
    );

    // The first publisher ends on its own (`-t`), cleanly; the second starts at once.
    let status = publisher1.0.wait().unwrap();
    assert!(status.success(), "publisher 1: {status}");
    let ended = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    if let Some(ms) = std::env::var("HLS_RECONNECT_GAP_MS").ok().and_then(|s| s.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let _publisher2 = Reaped(publish(TESTSRC, secs + 30, &source2, edge2_rtmp, "reconnect"));

    let (p, r, c) = (play.wait().unwrap(), rec.wait().unwrap(), check.wait().unwrap());
    let (p_json, r_json, c_json) = (report(&play_out), report(&rec_out), report(&check_out));
    eprintln!("play: {p_json:#}\nrecord: {r_json:#}\ncheck: {c_json:#}");
    assert!(p.success(), "player: {:?}", p_json["problems"]);
    assert!(r.success(), "recorder: {}", r_json["firstProblem"]);
    assert!(c.success(), "playlists: {:?}", c_json["errors"]);
    // The one break is the reconnect: the segment before it started before publisher 1
    // had exited, the one after it after (program date times are the publishing edge's
    // wall clock at a segment's first frame, ms; the edges run on this machine).
    let point = &c_json["discontinuity_points"][0];
    let pdt = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("a program date time: {point}"));
    let absent = pdt(&point["pdt_ms"]).saturating_sub(ended);
    eprintln!("publisher 1 exited at {ended} ms; publisher 2's first segment began {absent} ms later");
    assert!(pdt(&point["before"]["pdt_ms"]) < ended, "the segment before the break is publisher 1's: {point}");
    assert!(pdt(&point["pdt_ms"]) >= ended, "the segment after the break is publisher 2's: {point}");
    let (stall, max_stall) = (p_json["longest_stall_ms"].as_u64().unwrap(), 2000.max(absent + 1000));
    assert!(stall <= max_stall, "the player stalled {stall} ms (max {max_stall}: the publisher was away {absent} ms)");
}

/// Until the balancer serves the stream's playlist with a segment (30 s at most).
/// Waits until the playlist holds three whole segments: the players join a stream that is
/// already running, as viewers do. With one segment listed hls.js cannot start a hold-back
/// behind the live edge and started up to ~0.7 s further behind on a busy CI machine.
fn common_wait_playlist(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl").args(["-fsS", "--max-time", "5", url]).output().unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).matches("#EXTINF").count() >= 3 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no playlist of 3 segments at {url} within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The wall clock as UTC `HH:MM:SS.mmm`, the form of play.mjs's stall times.
fn common_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}
