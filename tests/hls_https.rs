//! Issue 14's "hls.js in Chromium plays over HTTPS with HTTP/2": ffmpeg publishes over
//! RTMPS to edge-1; from edge-2's `--https` listener, whose certificate a throw-away CA
//! signed, hls.js (low-latency mode, headless Chromium, `tests/hls/play.mjs`) plays for
//! 10 s. Chromium verifies certificates as usual and is told to trust only that leaf's
//! public key (`--ignore-certificate-errors-spki-list`).
//!
//! Expected: playback started and went on, no fatal hls.js error, and every playlist and
//! media request the page made negotiated "h2" (the resource timing entries'
//! `nextHopProtocol`). About 30 s.
//!
//! Needs node 20+, chromium, ffmpeg, openssl, curl and `tests/hls/node_modules`
//! (scripts/install-deps.sh); a missing one fails the test with that command.

#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use certs::{make_ca, make_cert, spki_sha256};
use common::{eventually, free_addr, Cluster};
use edges::{ffmpeg_publish_with, require, EdgeProc};

/// What every playlist and media request must have negotiated by ALPN.
const EXPECTED_PROTOCOL: &str = "h2";

/// How long hls.js plays once it has started.
const PLAY_SECONDS: u64 = 10;

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hls")
}

fn require_player() {
    const INSTALL: &str = "run scripts/install-deps.sh";
    for module in ["hls.js/dist/hls.min.js", "playwright-core/package.json"] {
        let path = harness().join("node_modules").join(module);
        assert!(path.exists(), "{} is missing: {INSTALL}", path.display());
    }
    let found = Command::new("node").arg("-v").stdout(Stdio::null()).status().is_ok();
    assert!(found, "node is missing: {INSTALL}");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: {INSTALL} (or set CHROMIUM)");
}

/// Whole segments in the playlist at `url`, fetched with curl trusting `ca` (0 when it
/// cannot be fetched yet).
fn segments(url: &str, ca: &Path) -> usize {
    let out = Command::new("curl").args(["-fsS", "--max-time", "5", "--cacert"]).arg(ca).arg(url).output();
    out.ok().filter(|o| o.status.success()).map_or(0, |o| String::from_utf8_lossy(&o.stdout).matches("#EXTINF").count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hlsjs_in_chromium_plays_over_https_and_every_request_is_http2() {
    for tool in ["ffmpeg", "openssl", "curl"] {
        require(tool);
    }
    require_player();
    let c = Cluster::start(1).await;
    let tls = c.dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let ca = make_ca(&tls);
    let (cert, key) = (tls.join("edge.pem"), tls.join("edge-key.pem"));
    make_cert(&tls, "edge", 1, &cert, &key);
    let (rtmps1, https1, rtmps2, https2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let tls_args = |rtmps: String, https: String| {
        let files = [cert.to_str().unwrap(), key.to_str().unwrap()].map(str::to_owned);
        let [cert, key] = files;
        ["--rtmps".into(), rtmps, "--https".into(), https, "--tls-cert".into(), cert, "--tls-key".into(), key]
    };
    let args1 = tls_args(rtmps1.to_string(), https1.to_string());
    let args2 = tls_args(rtmps2.to_string(), https2.to_string());
    let _edge1 = EdgeProc::start(&c, "edge-1", &args1.each_ref().map(String::as_str)).await;
    let _edge2 = EdgeProc::start(&c, "edge-2", &args2.each_ref().map(String::as_str)).await;

    let verify = ["-tls_verify", "1", "-ca_file", ca.to_str().unwrap()];
    let _ffmpeg = ffmpeg_publish_with(&format!("rtmps://{rtmps1}/live/h2"), &verify, c.dir.path().join("ffmpeg.log"));
    // Two whole segments: the player joins a running stream, as viewers do.
    let url = format!("https://{https2}/live/h2/index.m3u8");
    eventually(Duration::from_secs(30), "two segments in edge-2's playlist over HTTPS", || {
        let n = segments(&url, &ca);
        async move { (n >= 2).then_some(()) }
    })
    .await;

    let spki = spki_sha256(&cert);
    let out = c.dir.path().join("play.json");
    let play = tokio::process::Command::new("node")
        .args(["play.mjs", &url, &PLAY_SECONDS.to_string(), "--trust-spki", &spki, "--out"])
        .arg(&out)
        .current_dir(harness())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status();
    // play.mjs has its own deadlines (20 s to start); this one only bounds a hang.
    let status = tokio::time::timeout(Duration::from_secs(PLAY_SECONDS + 40), play)
        .await
        .expect("play.mjs finished in time")
        .expect("node runs");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("play.mjs ({status}) wrote no report: {e}"));
    eprintln!("play: {report:#}");

    assert!(status.success(), "player: {}", report["problems"]);
    assert_eq!(report["fatal_errors"].as_array().map(Vec::len), Some(0), "fatal hls.js errors");
    let progress = report["progress_s"].as_f64().unwrap_or(0.0);
    let decoded = report["frames"]["decoded"].as_u64().unwrap_or(0);
    // 30 fps: at least half the run's frames, with the playhead half the run along.
    assert!(progress >= PLAY_SECONDS as f64 / 2.0, "the playhead moved {progress} s in {PLAY_SECONDS} s");
    assert!(decoded >= PLAY_SECONDS * 15, "{decoded} frames decoded in {PLAY_SECONDS} s");
    for kind in ["playlist", "media"] {
        let seen = report["protocols"][kind].as_object().cloned().unwrap_or_default();
        let total: u64 = seen.values().filter_map(serde_json::Value::as_u64).sum();
        assert!(total > 0, "no {kind} request seen: {}", report["protocols"]);
        assert!(
            seen.keys().all(|p| p == EXPECTED_PROTOCOL),
            "{kind} requests negotiated {seen:?}, expected only {EXPECTED_PROTOCOL}"
        );
    }
}
