//! RTMP VOD through an edge (`rtmp://EDGE/vod/{id}`, `docs/vod.md`), with real clients
//! and a media-library file of 20 s (a keyframe every 2 s) on the origins:
//!
//! - rtmpdump downloads it whole: it pauses and resumes whenever the edge says its
//!   buffer's worth was sent (librtmp's BUFX hack against Flash Media Server), and
//!   every video frame arrives once, in order (packet hashes equal the file's);
//! - ffmpeg plays it to `NetStream.Play.Stop` and exits by itself, with every frame;
//! - rtmpdump with a start and a stop time (`play`'s start and length) gets exactly
//!   the frames from the keyframe at or before the start up to the stop;
//! - ffprobe seeks (RTMP `seek`) and its first frame is within one GOP before the
//!   target; a start past the end plays the last GOP and ends;
//! - an unknown or malformed id is `NetStream.Play.StreamNotFound`; once the app `vod`
//!   requires play tokens, a play without one or with another id's is
//!   `NetStream.Play.Failed` and one with the id's token plays;
//! - and the same file as HLS VOD: hls.js in headless Chromium (`tests/hls/play.mjs
//!   --seek`) seeks to 12 s, loads the segment holding 12 s first, lands there and plays
//!   on; and a current FFmpeg (`ffmpeg -ss 12 -i` the playlist) starts at the keyframe
//!   at or before 12 s. (Debian 12's ffmpeg 5.1 cannot seek an fMP4 HLS playlist at
//!   all, its own `-hls_segment_type fmp4` output included: `docs/vod.md`; the test
//!   uses the static FFmpeg 9 `scripts/install-deps.sh` puts in `tests/tools/bin`.)

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, Cluster};
use edges::{noisy_source, require, EdgeProc};
use reqwest::Method;
use tokio::process::Command;

/// The GOP of `noisy_source`: 60 frames at 30 fps.
const GOP_SECS: f64 = 2.0;

/// The sha256 of each video packet of `input` (a file or a URL), in order, as ffmpeg
/// copies them (`extra`: input options).
async fn video_packets(input: &str, extra: &[&str]) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(extra)
        .args(["-i", input, "-map", "0:v", "-c", "copy", "-f", "framehash", "-hash", "sha256", "-"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("ffmpeg ends by itself").unwrap();
    assert!(out.status.success(), "ffmpeg {input}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("0,"))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_owned())
        .collect()
}

/// rtmpdump (not live: a recorded stream) into `out`; its stderr.
async fn rtmpdump(url: &str, out: &Path, extra: &[&str]) -> String {
    let run = Command::new("rtmpdump").args(["-r", url, "-o"]).arg(out).args(extra).kill_on_drop(true).output();
    let run = tokio::time::timeout(Duration::from_secs(60), run).await.expect("rtmpdump ends by itself").unwrap();
    String::from_utf8_lossy(&run.stderr).into_owned()
}

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hls")
}

async fn metric(edge: &EdgeProc, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", edge.http)).await.unwrap().text().await.unwrap();
    edges::metric_value(&text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_file_plays_seeks_pauses_and_ends_over_rtmp() {
    require("rtmpdump");
    require("ffprobe");
    let mut c = Cluster::new();
    let source = noisy_source(c.dir.path());
    for id in 1..=3 {
        let library = c.dir.path().join(format!("media-{id}"));
        std::fs::create_dir_all(&library).unwrap();
        std::fs::copy(&source, library.join("clip.flv")).unwrap();
        c.origin_args.insert(id, vec!["--media-dir".into(), library.to_str().unwrap().into()]);
        c.add_origin(id);
    }
    c.wait_listening().await;
    c.init().await;
    c.wait_voters(3).await;
    let cache = c.dir.path().join("edge-vod");
    let edge = EdgeProc::start(&c, "edge-1", &["--vod-cache-dir", cache.to_str().unwrap()]).await;
    let url = edge.rtmp_url("vod", "lib-clip");
    let reference = video_packets(source.to_str().unwrap(), &[]).await;
    assert_eq!(reference.len(), 600, "20 s at 30 fps");

    // rtmpdump, as fast as the edge lets it: a buffer's worth, BufferEmpty, pause and
    // resume, the next buffer's worth...
    let whole = c.dir.path().join("whole.flv");
    let said = rtmpdump(&url, &whole, &[]).await;
    assert!(said.contains("duration") && said.contains("20.0"), "onMetaData gives the duration: {said}");
    let got = video_packets(whole.to_str().unwrap(), &[]).await;
    assert!(got == reference, "rtmpdump: {} frames, the file {}; rtmpdump said {said}", got.len(), reference.len());
    assert!(metric(&edge, "raftcast_edge_vod_rtmp_pauses_total").await >= 1.0, "rtmpdump paused and resumed");
    assert_eq!(metric(&edge, "raftcast_edge_vod_cache_misses_total").await, 1.0, "fetched once");

    // ffmpeg with a large buffer (the edge sends 10 s ahead at most, then real time),
    // and meanwhile rtmpdump from 8 s to 12 s and hls.js seeking the HLS VOD to 12 s
    // (buffering 4 s ahead, so the seek loads the segment it lands in: segments are
    // the 2 s GOPs here).
    let module = harness().join("node_modules/hls.js/dist/hls.min.js");
    assert!(module.exists(), "{} is missing: run scripts/install-deps.sh", module.display());
    let part = c.dir.path().join("part.flv");
    let report = c.dir.path().join("seek.json");
    let playlist = format!("http://{}/vod/lib-clip/index.m3u8", edge.http);
    let play = Command::new("node")
        .args(["play.mjs", &playlist, "3", "--plain", "--seek", "12", "--out"])
        .arg(&report)
        .current_dir(harness())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status();
    let (from_ffmpeg, said, status) = tokio::join!(
        video_packets(&url, &["-rtmp_buffer", "100000"]),
        rtmpdump(&url, &part, &["--start", "8", "--stop", "12"]),
        tokio::time::timeout(Duration::from_secs(90), play),
    );
    assert!(from_ffmpeg == reference, "ffmpeg: {} frames, the file {}", from_ffmpeg.len(), reference.len());
    // The keyframe at or before 8 s is the one at 6 s (frame 180); 12 s is frame 360.
    let got = video_packets(part.to_str().unwrap(), &[]).await;
    assert!(
        got == reference[180..=360] || got == reference[180..360],
        "from 8 s to 12 s: {} frames; {said}",
        got.len()
    );
    let status = status.expect("play.mjs ends").expect("node runs");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("play.mjs ({status}) wrote no report: {e}"));
    assert!(status.success(), "hls.js: {}", report["problems"]);
    let seek = &report["seek"];
    let landed = seek["landed"].as_f64().unwrap_or(-1.0);
    assert!((12.0..12.5).contains(&landed), "the playhead landed at {landed} s: {seek}");
    // Segment n holds the GOP from 2n s (+23 ms, the file's first video frame): 12 s is
    // in segment 5, the one hls.js must load first.
    assert_eq!(seek["first_fragment"]["sn"], 5, "the first segment loaded for the seek: {seek}");

    // ffmpeg seeks the HLS VOD (`-ss 12` before `-i`: the demuxer's own seek). Debian's
    // 5.1 cannot (the module's doc); the current FFmpeg scripts/install-deps.sh puts in
    // tests/tools/bin can: its first frame is the keyframe at or before 12 s, the
    // frames after it follow in order.
    let modern = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/bin/ffmpeg");
    assert!(modern.exists(), "{} is missing: run scripts/install-deps.sh", modern.display());
    let hls = format!("http://{}/vod/lib-clip/index.m3u8", edge.http);
    let seeked = Command::new(&modern)
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-ss", "12", "-i", &hls])
        .args(["-map", "0:v", "-c", "copy", "-frames:v", "30", "-f", "framehash", "-hash", "sha256", "-"])
        .kill_on_drop(true)
        .output();
    let seeked = tokio::time::timeout(Duration::from_secs(60), seeked).await.expect("ffmpeg ends").unwrap();
    assert!(seeked.status.success(), "ffmpeg -ss 12 on the HLS VOD: {}", String::from_utf8_lossy(&seeked.stderr));
    let hashes: Vec<String> = String::from_utf8_lossy(&seeked.stdout)
        .lines()
        .filter(|l| l.starts_with("0,"))
        .map(|l| l.rsplit(',').next().unwrap().trim().to_owned())
        .collect();
    let at = hashes.first().and_then(|h| reference.iter().position(|r| r == h));
    // Keyframes are frames 0, 60, 120… at 23 ms after each 2 s mark. ffmpeg picks the
    // segment by the playlist's EXTINF sums (2.000 s each, from 0), so 12 s is the
    // start of segment 6, whose first frame is the keyframe at 12.023 s (frame 360,
    // seen); the keyframe before, frame 300, would be as good: each is within one GOP.
    let at = at.filter(|i| *i == 300 || *i == 360);
    let Some(at) = at else { panic!("ffmpeg -ss 12 on the HLS VOD starts at source frame {at:?}") };
    assert!(hashes.len() == 30 && hashes[..] == reference[at..at + 30], "the 30 frames from frame {at}, in order");
    eprintln!("ffmpeg 9 -ss 12 on the HLS VOD starts at source frame {at} ({:.3} s)", at as f64 / 30.0 + 0.023);

    // ffprobe seeks to 12 s: the first frame it gets is the keyframe at or before 12 s.
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-rtmp_buffer", "100000", "-read_intervals", "12%+#3", "-select_streams", "v"])
        .args(["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0", &url])
        .kill_on_drop(true)
        .output();
    let probe = tokio::time::timeout(Duration::from_secs(60), probe).await.expect("ffprobe ends").unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let (pts, flags) = first.split_once(',').unwrap_or_default();
    let pts: f64 = pts.parse().unwrap_or(-1.0);
    assert!((12.0 - GOP_SECS..=12.0).contains(&pts) && flags.starts_with('K'), "seek to 12 s lands on {first:?}");
    assert!(metric(&edge, "raftcast_edge_vod_rtmp_seeks_total").await >= 1.0);
    assert_eq!(metric(&edge, "raftcast_edge_vod_rtmp_plays_total").await, 4.0);

    // A start past the end: the last GOP (the keyframe before the end, frame 540), then
    // the end of the play, as for a seek past the end.
    let past = c.dir.path().join("past.flv");
    let said = rtmpdump(&url, &past, &["--start", "3600"]).await;
    let got = video_packets(past.to_str().unwrap(), &[]).await;
    assert!(got == reference[540..], "a start past the end: {} frames; {said}", got.len());

    // Unknown and malformed ids.
    for name in ["lib-missing", "..%2Fx", "12a"] {
        let said = rtmpdump(&edge.rtmp_url("vod", name), &c.dir.path().join("none.flv"), &[]).await;
        assert!(said.contains("StreamNotFound"), "{name}: {said}");
    }

    // The app `vod` requires play tokens: RTMP VOD follows the rule as HTTP VOD does.
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let rule = serde_json::json!({ "play_token_required": true });
    let (s, v) = c.call(leader, Method::PUT, "/apps/vod", Some(&rule), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let sign = |name: &str| {
        let body = serde_json::json!({ "app": "vod", "name": name, "right": "play", "ttl_secs": 600 });
        let c = &c;
        async move {
            let (s, v) = c.call(leader, Method::POST, "/tokens/stream", Some(&body), &[]).await.unwrap();
            assert!(s.is_success(), "{v}");
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let (mine, other) = (sign("lib-clip").await, sign("lib-other").await);
    let refused = c.dir.path().join("refused.flv");
    eventually(Duration::from_secs(10), "the edge to require VOD play tokens", || async {
        rtmpdump(&url, &refused, &[]).await.contains("NetStream.Play.Failed").then_some(())
    })
    .await;
    let said = rtmpdump(&format!("{url}?token={other}"), &refused, &[]).await;
    assert!(said.contains("NetStream.Play.Failed"), "another id's token: {said}");
    let allowed = c.dir.path().join("allowed.flv");
    let said = rtmpdump(&format!("{url}?token={mine}"), &allowed, &["--stop", "2"]).await;
    let got = video_packets(allowed.to_str().unwrap(), &[]).await;
    assert!(got.len() >= 30 && got[..] == reference[..got.len()], "the id's token plays: {} frames; {said}", got.len());
}
