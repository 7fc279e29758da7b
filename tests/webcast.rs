//! The interactive-webcast example page (`examples/webcast`) end to end: three origins,
//! two edges serving it with `--www`, ffmpeg publishing `live/test` through edge-1, and
//! `examples/webcast/test/chat.mjs` driving two headless Chromium pages, one on each
//! edge's HTTP port, both opened with a write token for the stream's webcast objects
//! (`webcast/live/test/…`): chat both ways, a poll both pages vote in, a broadcast
//! reaction, and HTTP-FLV video whose time advances.
//!
//! Artifacts: screenshots of both pages are kept in `target/test-artifacts/webcast/`
//! (under `$CARGO_TARGET_DIR` when set): `edge-a.png` and `edge-b.png`, or
//! `failure-a.png`/`failure-b.png` when the run fails.
//!
//! Needs Debian's `chromium`, `node` and `examples/webcast/node_modules`; when one is
//! missing the test fails (it never skips) with the command that installs it.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{eventually, Cluster, BIN};
use edges::{ffmpeg_publish, EdgeProc};
use reqwest::Method;
use serde_json::Value;

/// The page's folder, served by the edges at `/webcast/`.
fn www() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webcast")
}

/// `<target>/test-artifacts/webcast`, beside the binary's profile folder.
fn artifacts() -> PathBuf {
    let target = Path::new(BIN).parent().and_then(Path::parent).expect("the binary sits in <target>/<profile>/");
    target.join("test-artifacts/webcast")
}

/// Fails loudly, with the install command, when the browser, node or the page's npm
/// packages are missing.
fn require_browser_deps() {
    const INSTALL: &str = "run scripts/install-deps.sh (Debian chromium and nodejs, then \
                           `npm ci --no-audit --no-fund` in examples/webcast)";
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: {INSTALL}");
    let node = std::process::Command::new("node").arg("--version").output();
    let version = node.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    // playwright-core 1.65 needs Node.js 20 or newer.
    assert!(major >= 20, "node 20 or newer is needed, found {version:?}: {INSTALL}");
    for module in ["mpegts.js/dist/mpegts.js", "playwright-core/package.json"] {
        let path = www().join("node_modules").join(module);
        assert!(path.exists(), "{} is missing: {INSTALL}", path.display());
    }
}

async fn get_text(url: &str) -> (u16, String) {
    let res = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_two_edges_chat_vote_and_play_through_the_webcast_page() {
    require_browser_deps();
    let out = artifacts();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    let c = Cluster::start(3).await;
    let www_dir = www().display().to_string();
    let edge1 = EdgeProc::start(&c, "edge-1", &["--www", &www_dir]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &["--www", &www_dir]).await;

    // The edges serve the page and the player library.
    for path in ["/webcast/", "/webcast/app.js", "/webcast/node_modules/mpegts.js/dist/mpegts.js"] {
        let (status, body) = get_text(&format!("http://{}{path}", edge2.http)).await;
        assert_eq!(status, 200, "GET {path} on edge-2: {body:.200}");
    }

    let _ffmpeg = ffmpeg_publish(&edge1.rtmp_url("live", "test"), c.dir.path().join("ffmpeg.log"));
    eventually(Duration::from_secs(20), "the owner to receive frames of live/test", || async {
        let (s, v) = c.call(1, Method::GET, "/streams", None, &[]).await.ok()?;
        let streams = v["streams"].as_array().filter(|_| s.is_success())?;
        let e = streams.iter().find(|e| e["app"] == "live" && e["name"] == "test")?;
        (e["publishing"] == true && e["frames_in"].as_u64().unwrap_or(0) > 30).then_some(())
    })
    .await;

    // The page's write token, as `scripts/bootstrap.sh start` prints it in its URL.
    let body = serde_json::json!({
        "object_prefix": "webcast/live/test/", "rights": "write", "persistent": true, "subject": "webcast",
    });
    let token = eventually(Duration::from_secs(20), "a webcast token", || async {
        let (s, v) = c.call(1, Method::POST, "/tokens", Some(&body), &[]).await.ok()?;
        v["token"].as_str().filter(|_| s.is_success()).map(str::to_owned)
    })
    .await;

    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg("test/chat.mjs")
        .args([format!("http://{}", edge1.http), format!("http://{}", edge2.http)])
        .arg("--out")
        .arg(&out)
        .args(["--stream", "live/test", "--token", &token])
        .current_dir(www())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // chat.mjs bounds itself (240 s); this only guards against a hung node.
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("node test/chat.mjs hung for 300 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- chat.mjs ({:.1} s) ---\n{stdout}{stderr}", started.elapsed().as_secs_f64());
    assert!(output.status.success(), "the webcast page test failed ({}):\n{stderr}", output.status);

    // What the pages wrote is in the cluster, read back through the edges' API.
    let chat: Value = reqwest::get(format!("http://{}/shared-objects/webcast%2Flive%2Ftest%2Fchat", edge2.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let authors: Vec<&str> = chat["slots"]
        .as_object()
        .expect("chat slots")
        .iter()
        .filter(|(slot, _)| slot.starts_with("m-"))
        .filter_map(|(_, m)| m["from"].as_str())
        .collect();
    assert!(authors.contains(&"Alice") && authors.contains(&"Bob"), "{chat}");
    let poll: Value = reqwest::get(format!("http://{}/shared-objects/webcast%2Flive%2Ftest%2Fpoll", edge1.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = poll["slots"]["poll"]["id"].as_str().unwrap_or_else(|| panic!("no poll in {poll}"));
    let votes: Vec<&Value> = poll["slots"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(slot, v)| slot.starts_with("v-") && v["poll"] == id)
        .map(|(_, v)| &v["option"])
        .collect();
    assert_eq!(votes, [&Value::from(0), &Value::from(0)], "two votes for option 0 in {poll}");

    for png in ["edge-a.png", "edge-b.png"] {
        let size = std::fs::metadata(out.join(png)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{png} in {} is {size} bytes", out.display());
    }
    eprintln!("screenshots: {}", out.display());
}
