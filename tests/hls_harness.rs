//! The HLS harness in `tests/hls/` (issue 13), proven before the edges serve HLS:
//! its playlist rules and frame comparison on fixtures (`node --test lib/`), then the
//! whole harness on a stand-in — ffmpeg's own fMP4 HLS served by two static servers
//! behind HAProxy, one SIGKILLed half-way (`tests/hls/prove-ffmpeg.sh`): every playlist
//! valid, segments identical on both, hls.js (low-latency mode, headless Chromium)
//! plays with no fatal error and no stall over 2 s, and an ffmpeg recorder through
//! HAProxy gets every source frame exactly once, in order.
//!
//! Needs node 20+, chromium, ffmpeg, haproxy, python3 and `tests/hls/node_modules`
//! (scripts/install-deps.sh); a missing one fails the test with that command.

use std::path::{Path, PathBuf};
use std::process::Command;

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hls")
}

fn require_deps() {
    const INSTALL: &str = "run scripts/install-deps.sh";
    for module in ["hls.js/dist/hls.min.js", "m3u8-parser/package.json", "playwright-core/package.json"] {
        let path = harness().join("node_modules").join(module);
        assert!(path.exists(), "{} is missing: {INSTALL}", path.display());
    }
    for tool in ["node", "ffmpeg", "haproxy", "python3"] {
        let found = Command::new(tool).arg("-v").output().is_ok();
        assert!(found, "{tool} is missing: {INSTALL}");
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn playlist_rules_and_frame_comparison_catch_each_break() {
    require_deps();
    let out = run(Command::new("node").args(["--test", "lib/"]).current_dir(harness()));
    assert!(out.contains("# fail 0"), "{out}");
}

#[test]
fn the_harness_on_ffmpegs_own_hls_behind_haproxy_with_a_server_killed() {
    require_deps();
    // Ports base..base+2 must be free.
    // Below the ephemeral range, so no outgoing connection takes one meanwhile.
    let base = raftcast::bench::free_loopback_range(3).expect("three free loopback ports in a row");
    let out = run(Command::new(harness().join("prove-ffmpeg.sh")).arg("30").env("PROVE_PORT_BASE", base.to_string()));
    eprintln!("{out}");
    for want in ["\"fatal\": 0", "\"missing\": 0", "\"repeated\": 0"] {
        assert!(out.contains(want), "expected {want} in\n{out}");
    }
}
