//! HLS costs nothing on an edge where nobody asks for it (issue 13: "streams nobody
//! watches cost nothing after a grace period"), with real origins, real edges, an
//! ffmpeg publisher and an ffmpeg RTMP player.
//!
//! ffmpeg publishes through edge-1, whose playlist is read all along; an RTMP player
//! plays the stream on edge-2. Expected on edge-2:
//! - while only the RTMP player is there, the relay holds no HLS window
//!   (`edge_hls_streams`, `edge_hls_window_bytes`, `edge_relay_hls_windows`,
//!   `edge_relay_window_bytes` all 0);
//! - the first playlist request starts HLS with the owner's whole window (fetched on
//!   the link, `FetchWindow`): the same media sequence, segment URIs and segment bytes
//!   as edge-1, segments from before HLS started there included; `/status` still
//!   counts one player (the HLS task is not one);
//! - while HLS is packaged, the relay keeps no window of frames beside the packaged one;
//! - after `--hls-idle-ms` without HLS requests it is all retired (the metrics back to
//!   0) while the RTMP player plays on, with no frame relayed twice.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Cluster};
use edges::{ffmpeg_publish, require, EdgeProc, Proc};

/// (media sequence, complete segment URIs) of a playlist.
fn listed(playlist: &str) -> (u64, Vec<String>) {
    let sequence = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a media sequence");
    let segments = playlist.lines().filter(|l| l.starts_with("seg-")).map(str::to_owned).collect();
    (sequence, segments)
}

async fn get(url: &str) -> Option<(u16, bytes::Bytes)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.bytes().await.ok()?))
}

async fn playlist(edge: &EdgeProc, name: &str) -> Option<String> {
    let (status, body) = get(&format!("http://{}/live/{name}/index.m3u8", edge.http)).await?;
    (status == 200).then(|| String::from_utf8_lossy(&body).into_owned())
}

/// The HLS footprint of an edge: (streams, window bytes, relay windows, relay window bytes).
async fn footprint(edge: &EdgeProc) -> (f64, f64, f64, f64) {
    (
        edge.metric("edge_hls_streams").await,
        edge.metric("edge_hls_window_bytes").await,
        edge.metric("edge_relay_hls_windows").await,
        edge.metric("edge_relay_window_bytes").await,
    )
}

async fn relay_players(edge: &EdgeProc, name: &str) -> Option<u64> {
    let status = edge.status().await;
    status["relays"].as_array()?.iter().find(|r| r["name"] == name)?["players"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_starts_with_the_first_request_serves_the_owners_window_and_retires_when_idle() {
    require("ffmpeg");
    let name = "window";
    let c = Cluster::start(3).await;
    let idle = ["--hls-idle-ms", "2000"];
    let edge1 = EdgeProc::start(&c, "edge-1", &idle).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &idle).await;
    let dir = c.dir.path().to_owned();
    let _publisher = ffmpeg_publish(&edge1.rtmp_url("live", name), dir.join("publisher.log"));

    // Edge-1 packages from the start: its playlist is read every half second.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (url, reading) = (format!("http://{}/live/{name}/index.m3u8", edge1.http), reading.clone());
        tokio::spawn(async move {
            while reading.load(Ordering::Relaxed) {
                let _ = get(&url).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    eventually(Duration::from_secs(20), "edge-1's playlist", || playlist(&edge1, name)).await;

    // An RTMP player on edge-2.
    let log = std::fs::File::create(dir.join("player.log")).unwrap();
    let mut player = Proc(
        Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-rw_timeout", "10000000"])
            .args(["-i", &edge2.rtmp_url("live", name), "-c", "copy", "-f", "null", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    eventually(Duration::from_secs(15), "edge-2 to relay to its player", || async {
        (relay_players(&edge2, name).await == Some(1)).then_some(())
    })
    .await;
    // Four complete segments at the owner (and edge-1) before anyone asks edge-2.
    eventually(Duration::from_secs(30), "four segments on edge-1", || async {
        playlist(&edge1, name).await.filter(|p| listed(p).1.len() >= 4)
    })
    .await;
    assert_eq!(footprint(&edge2).await, (0.0, 0.0, 0.0, 0.0), "edge-2 relays to RTMP only: no HLS window");
    assert!(edge1.metric("edge_hls_window_bytes").await > 0.0, "edge-1 packages HLS");

    // The first playlist request on edge-2: the whole window, the same as edge-1's.
    let first = playlist(&edge2, name).await.expect("edge-2 answers its first playlist request");
    let (first_seq, first_segments) = listed(&first);
    assert!(first_segments.len() >= 4, "edge-2 starts with the owner's window, not live:\n{first}");
    let (seq, segments) = eventually(Duration::from_secs(10), "both edges to list the same segments", || async {
        let two = listed(&playlist(&edge2, name).await?);
        let one = listed(&playlist(&edge1, name).await?);
        (one == two).then_some(one)
    })
    .await;
    assert!(seq <= first_seq + 1, "the window slid by a segment at most meanwhile");
    // The oldest listed segment was complete before HLS started on edge-2: it came in
    // the fetched window. Every segment both list is byte for byte the same.
    for uri in &segments {
        let one = get(&format!("http://{}/live/{name}/{uri}", edge1.http)).await.unwrap();
        let two = get(&format!("http://{}/live/{name}/{uri}", edge2.http)).await.unwrap();
        assert_eq!(one.0, 200, "{uri} on edge-1");
        assert_eq!(two.0, 200, "{uri} on edge-2");
        assert!(one.1 == two.1, "{uri} differs between the edges");
    }
    let (streams, bytes, windows, relay_bytes) = footprint(&edge2).await;
    assert_eq!(streams, 1.0);
    assert!(bytes > 0.0, "HLS on edge-2 holds its packaged window now");
    assert_eq!((windows, relay_bytes), (0.0, 0.0), "the relay's window of frames went to the packager, not kept twice");
    assert_eq!(relay_players(&edge2, name).await, Some(1), "the HLS task is not a player in /status");

    // No HLS request on edge-2 any more: retired after --hls-idle-ms, the player plays on.
    eventually(Duration::from_secs(15), "edge-2 to retire HLS", || async {
        (footprint(&edge2).await == (0.0, 0.0, 0.0, 0.0)).then_some(())
    })
    .await;
    assert_eq!(relay_players(&edge2, name).await, Some(1), "the relay goes on for the RTMP player");
    assert!(player.running(), "the RTMP player plays through HLS starting and stopping");
    assert_eq!(edge2.metric("edge_relay_duplicates_total").await, 0.0, "no frame relayed twice");
    assert_eq!(edge2.metric("edge_frames_dropped_total{side=\"player\"}").await, 0.0, "no frame dropped");
    let received = edge2.metric("edge_client_bytes_out_total").await;
    eventually(Duration::from_secs(10), "the player to keep receiving", || async {
        (edge2.metric("edge_client_bytes_out_total").await > received).then_some(())
    })
    .await;

    reading.store(false, Ordering::Relaxed);
    let _ = reader.await;
}
