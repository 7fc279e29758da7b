//! Live rewind (issue 16, `docs/vod.md` "Live rewind"), with real processes: ffmpeg
//! publishes a recorded stream through an edge whose live playlist offers a DVR span
//! (`--hls-dvr-secs`); the owner origin is SIGKILLed mid-stream, then the publisher
//! reconnects; a second edge starts only afterwards, so it never saw the early
//! segments. Then, on both edges:
//!
//! - the live playlist lists, before its in-memory window, the older segments back to
//!   the start of the recording (contiguous numbers, the same text on both edges at
//!   the same moment);
//! - every listed segment has the same bytes on both edges, and the same bytes the
//!   first edge served for it live while it was in the window (the old ones are
//!   re-packaged from the recording, `src/hls/dvr.rs`);
//! - the rewound segments decode to the source's video frames, each once and in order,
//!   across the owner's SIGKILL and across the publisher reconnecting (a new
//!   publishing session, after an `EXT-X-DISCONTINUITY`: the first session's last
//!   segment, which ended with it, is listed and has the bytes edge-1 served live);
//! - hls.js in Chromium, joining late, seeks back to the start of the span and plays;
//! - a segment number the index does not list is 404 without asking an origin.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use edges::{noisy_source, packets, publish_file, require, EdgeProc};
use reqwest::Method;

const NAME: &str = "rewind";
const DVR_SECS: &str = "120";

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hls")
}

async fn owner_of(c: &Cluster, via: u64) -> Option<u64> {
    let (s, v) = c.call(via, Method::GET, "/streams", None, &[]).await.ok()?;
    s.is_success().then_some(())?;
    let e = v["streams"].as_array()?.iter().find(|e| e["app"] == "live" && e["name"] == NAME)?.clone();
    e["owner"].as_u64()
}

/// A media playlist's `EXT-X-MEDIA-SEQUENCE`, its segments' URIs and its map URIs.
fn parse(playlist: &str) -> (u64, Vec<String>, Vec<String>) {
    let sequence = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no media sequence in\n{playlist}"));
    let uris = playlist.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    let maps = playlist
        .lines()
        .filter_map(|l| Some(l.strip_prefix("#EXT-X-MAP:URI=\"")?.strip_suffix('"')?.to_owned()))
        .collect();
    (sequence, uris, maps)
}

fn msn_of(uri: &str) -> u64 {
    uri.strip_prefix("seg-").and_then(|s| s.strip_suffix(".m4s")).and_then(|n| n.parse().ok()).unwrap()
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<bytes::Bytes, String> {
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()));
    }
    r.bytes().await.map_err(|e| e.to_string())
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    String::from_utf8(fetch(client, url).await.unwrap().to_vec()).unwrap()
}

/// Saves every segment and init segment `edge`'s live playlist lists, as it lists it,
/// until dropped: what the edge served live, from its window.
struct LiveTap {
    seen: Arc<Mutex<BTreeMap<String, bytes::Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveTap {
    fn start(edge: &EdgeProc) -> LiveTap {
        let seen: Arc<Mutex<BTreeMap<String, bytes::Bytes>>> = Arc::default();
        let base = format!("http://{}/live/{NAME}", edge.http);
        let into = seen.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(playlist) = fetch(&client, &format!("{base}/index.m3u8")).await else { continue };
                let (_, uris, maps) = parse(&String::from_utf8_lossy(&playlist));
                for uri in maps.into_iter().chain(uris) {
                    if into.lock().unwrap().contains_key(&uri) {
                        continue;
                    }
                    if let Ok(bytes) = fetch(&client, &format!("{base}/{uri}")).await {
                        into.lock().unwrap().insert(uri, bytes);
                    }
                }
            }
        });
        LiveTap { seen, task }
    }
}

impl Drop for LiveTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_viewer_rewinds_through_the_recording_on_every_edge_across_an_owner_kill() {
    require("node");
    let mut c = Cluster::start(3).await;
    let dir = c.dir.path().to_owned();
    // The stream goes to a follower, so killing its owner is not also a leader change.
    let leader = c.leader(None).await.expect("a leader");
    let owner = (1..=3).find(|i| *i != leader).unwrap();
    let (s, v) = c
        .call(leader, Method::PUT, &format!("/pins/live/{NAME}"), Some(&serde_json::json!({ "origin": owner })), &[])
        .await
        .unwrap();
    assert!(s.is_success(), "{v}");
    let (ok, out, err) = c.ctl(&[1, 2, 3], &["record", &format!("live/{NAME}"), "on"]);
    assert!(ok, "ctl record: {out}{err}");

    let source = noisy_source(&dir);
    let reference: Vec<String> = packets(&source, &dir.join("reference.hash")).into_iter().map(|(_, h)| h).collect();
    assert!(reference.len() >= 590, "{} reference frames", reference.len());
    // A window of three segments (the least players take): the span takes over early.
    let dvr = ["--hls-dvr-secs", DVR_SECS, "--hls-window-segments", "3"];
    let edge1 = EdgeProc::start(&c, "edge-1", &dvr).await;
    let started = Instant::now();
    let mut publisher = publish_file(&source, &edge1.rtmp_url("live", NAME), dir.join("publisher.log"));
    let tap = LiveTap::start(&edge1);
    let client = reqwest::Client::new();
    let playlist1 = format!("http://{}/live/{NAME}/index.m3u8", edge1.http);
    eventually(Duration::from_secs(30), "edge-1's live playlist", || async {
        fetch(&client, &playlist1).await.ok().map(drop)
    })
    .await;

    // SIGKILL the owner mid-stream: the recording goes on in a second piece.
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.kill(owner);
    let killed_at = started.elapsed();
    let moved = eventually(Duration::from_secs(15), "the stream to move", || async {
        owner_of(&c, leader).await.filter(|o| *o != owner)
    })
    .await;
    // The publisher reconnects (a new publishing session: a new recording, numbered on
    // from the last segment, after a discontinuity): the span reaches back across it
    // only if the first session's last segment is listed, which ended with it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher.0.kill().unwrap();
    let _ = publisher.0.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _publisher = publish_file(&source, &edge1.rtmp_url("live", NAME), dir.join("publisher-2.log"));
    // Long enough after that the window (three 2 s segments and the open one) no
    // longer holds anything of the first session.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // A second edge that never served the stream starts now.
    let edge2 = EdgeProc::start(&c, "edge-2", &dvr).await;
    let playlist2 = format!("http://{}/live/{NAME}/index.m3u8", edge2.http);
    let first2 = eventually(Duration::from_secs(20), "edge-2's live playlist with its DVR span", || async {
        let text = String::from_utf8(fetch(&client, &playlist2).await.ok()?.to_vec()).ok()?;
        (parse(&text).1.len() > 4).then_some(text)
    })
    .await;
    eprintln!("owner {owner} killed at {killed_at:?}, origin {moved} owns the stream; edge-2's playlist:\n{first2}");

    // The same moment on both edges: the playlists once segment M is complete.
    let (seq, uris, _) = parse(&first2);
    let m = seq + uris.len() as u64 + 1;
    let (at1, at2) = (format!("{playlist1}?_HLS_msn={m}"), format!("{playlist2}?_HLS_msn={m}"));
    let (p1, p2) = tokio::join!(text(&client, &at1), text(&client, &at2));
    assert_eq!(p1, p2, "the same playlist on both edges at msn {m}");
    let (seq, uris, maps) = parse(&p2);
    let msns: Vec<u64> = uris.iter().map(|u| msn_of(u)).collect();
    assert!(msns.windows(2).all(|w| w[1] == w[0] + 1), "contiguous numbers: {msns:?}");
    assert_eq!(msns[0], seq);
    assert_eq!(p2.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "one reconnect in the span:\n{p2}");
    // Back to the recording's start: the first segments the tap saw live are listed.
    let live = tap.seen.lock().unwrap().clone();
    drop(tap);
    let first_live =
        live.keys().filter(|k| k.starts_with("seg-")).map(|k| msn_of(k)).min().expect("segments seen live");
    assert!(seq <= first_live + 1, "the DVR span starts at {seq}; the first segment seen live was {first_live}");
    assert!(uris.len() >= 7, "{} segments listed over {:?} of publishing", uris.len(), started.elapsed());

    // hls.js joins late and seeks back to the start of the span (meanwhile, below,
    // the bytes are compared).
    let report = dir.join("seek.json");
    let mut play = tokio::process::Command::new("node")
        .args(["play.mjs", &playlist2, "4", "--plain", "--seek", "1", "--out"])
        .arg(&report)
        .current_dir(harness())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Every URI: the same bytes on both edges, and what edge-1 served live for it.
    let (mut compared_live, mut mismatched) = (0, Vec::new());
    let mut concatenated = Vec::new();
    // The segments below the window (three complete segments): edge-1 packages each
    // from the origins' frames at its first request (nobody else asks edge-1 for them),
    // and answers the second from its DVR cache.
    let old = &uris[..uris.len() - 3];
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for uri in maps.iter().chain(&uris) {
        let url = |edge: &EdgeProc| format!("http://{}/live/{NAME}/{uri}", edge.http);
        let asked = Instant::now();
        let b1 = fetch(&client, &url(&edge1)).await.unwrap();
        if old.contains(uri) {
            cold.push(asked.elapsed());
            let asked = Instant::now();
            assert!(fetch(&client, &url(&edge1)).await.unwrap() == b1, "{uri}: the same bytes again");
            warm.push(asked.elapsed());
        }
        let b2 = fetch(&client, &url(&edge2)).await.unwrap();
        assert!(b1 == b2, "{uri}: {} bytes on edge-1, {} on edge-2", b1.len(), b2.len());
        if let Some(was) = live.get(uri) {
            compared_live += 1;
            if *was != b2 {
                mismatched.push(uri.clone());
            }
        }
        if uri.starts_with("init-") && concatenated.is_empty() || uri.starts_with("seg-") {
            concatenated.extend_from_slice(&b2);
        }
    }
    eprintln!("{} URIs the same on both edges; {compared_live} compared with the live bytes", maps.len() + uris.len());
    assert!(mismatched.is_empty(), "rewound bytes differ from the live ones for {mismatched:?}");
    assert!(compared_live >= 6, "only {compared_live} rewound segments were seen live");
    assert_eq!(maps.len(), 1, "one init segment: {maps:?}");
    cold.sort();
    warm.sort();
    eprintln!(
        "{} rewound segments on edge-1: first request (origins' frames, packaged) median {:?}, max {:?}; \
         second (cache) median {:?}",
        old.len(),
        cold[cold.len() / 2],
        cold[cold.len() - 1],
        warm[warm.len() / 2]
    );
    let hits = edge1.metric("edge_hls_dvr_requests_total{kind=\"segment\",outcome=\"hit\"}").await;
    let fetched = edge1.metric("edge_hls_dvr_requests_total{kind=\"segment\",outcome=\"fetched\"}").await;
    assert!(fetched >= old.len() as f64 && hits >= old.len() as f64, "edge-1 fetched {fetched}, hit {hits}");

    // Decoded, the span is the source's frames, each once, in order, across the kill;
    // at the reconnect the second session starts the looped source over.
    let file = dir.join("rewound.mp4");
    std::fs::write(&file, &concatenated).unwrap();
    let got: Vec<String> = packets(&file, &dir.join("rewound.hash")).into_iter().map(|(_, h)| h).collect();
    let start = reference.iter().position(|r| *r == got[0]).expect("the first rewound frame is a source frame");
    let (mut next, mut restarted) = (start, None);
    for (i, h) in got.iter().enumerate() {
        if *h != reference[next % reference.len()] && restarted.is_none() && *h == reference[0] {
            restarted = Some(i);
            next = 0;
        }
        let want = next % reference.len();
        assert!(*h == reference[want], "rewound frame {i} of {} is not source frame {want}", got.len());
        next += 1;
    }
    assert!(restarted.is_some(), "the second session's first frame is in the span");
    assert!(got.len() as u64 >= 30 * 2 * (uris.len() as u64 - 1), "{} frames in {} segments", got.len(), uris.len());
    eprintln!(
        "{} frames rewound from source frame {start}, each once and in order; the reconnect's source frame 0 at \
         rewound frame {restarted:?}",
        got.len()
    );

    let status =
        tokio::time::timeout(Duration::from_secs(90), play.wait()).await.expect("play.mjs ends").expect("node runs");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("play.mjs ({status}) wrote no report: {e}"));
    assert!(status.success(), "hls.js: {}", report["problems"]);
    let seek = &report["seek"];
    let sn = seek["first_fragment"]["sn"].as_u64().unwrap_or(u64::MAX);
    assert!(sn <= seq + 1, "hls.js loaded segment {sn} first for the seek, the span starts at {seq}: {seek}");
    eprintln!("hls.js seek: {seek}");

    // Only what the index lists is fetched: a number below the span is 404.
    let before = format!("http://{}/live/{NAME}/seg-{}.m4s", edge2.http, seq.saturating_sub(50));
    let r = client.get(&before).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "{before}");
    drop((edge1, edge2));
}
