//! Edges with real processes and real clients: ffmpeg publishes through one edge,
//! ffprobe, rtmpdump and HTTP-FLV play from the other, through the stream's owner
//! origin.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::time::Duration;

use common::{eventually, Cluster};
use edges::{ffmpeg_publish, ffprobe_video_packets, require, EdgeProc};
use reqwest::Method;

/// Waits until `GET /streams` lists `app/name` and returns its entry.
async fn stream_entry(c: &Cluster, app: &str, name: &str) -> serde_json::Value {
    eventually(Duration::from_secs(15), "the stream to be claimed", || async {
        let (s, v) = c.call(2, Method::GET, "/streams", None, &[]).await.ok()?;
        if !s.is_success() {
            return None;
        }
        v["streams"].as_array()?.iter().find(|e| e["app"] == app && e["name"] == name).cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_on_one_edge_and_ffprobe_rtmpdump_and_http_flv_play_from_the_other() {
    require("ffmpeg");
    require("rtmpdump");
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let mut ffmpeg = ffmpeg_publish(&edge1.rtmp_url("live", "test"), c.dir.path().join("ffmpeg.log"));

    let entry = stream_entry(&c, "live", "test").await;
    assert_eq!(entry["edge"], "edge-1", "{entry}");
    let owner = entry["owner"].as_u64().expect("an owner");
    assert!((1..=3).contains(&owner), "{entry}");

    // About 300 video packets in 10 s of a 30 fps stream, over RTMP and HTTP-FLV at once.
    let (rtmp_url, flv_url) = (edge2.rtmp_url("live", "test"), edge2.flv_url("live", "test"));
    let (rtmp, flv) = tokio::join!(ffprobe_video_packets(&rtmp_url, 10), ffprobe_video_packets(&flv_url, 10));
    let (rtmp, flv) = (rtmp.unwrap(), flv.unwrap());
    eprintln!("ffprobe over 10 s: rtmp {rtmp} video packets, http-flv {flv}");
    assert!((270..=340).contains(&rtmp), "RTMP: {rtmp} packets in 10 s");
    assert!((270..=340).contains(&flv), "HTTP-FLV: {flv} packets in 10 s");

    // rtmpdump (librtmp, which sends FCSubscribe) plays for 4 s into a file ffprobe can
    // read; SIGINT makes it finish the file.
    let dump = c.dir.path().join("dump.flv");
    let mut rtmpdump = tokio::process::Command::new("rtmpdump")
        .args(["-q", "--live", "-r", &edge2.rtmp_url("live", "test"), "-o"])
        .arg(&dump)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(rtmpdump.try_wait().unwrap().is_none(), "rtmpdump is still playing after 4 s");
    let _ = std::process::Command::new("kill").args(["-INT", &rtmpdump.id().unwrap().to_string()]).status();
    let out = tokio::time::timeout(Duration::from_secs(10), rtmpdump.wait_with_output()).await.unwrap().unwrap();
    let size = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
    assert!(size > 50_000, "rtmpdump wrote {size} bytes: {}", String::from_utf8_lossy(&out.stderr));
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-show_entries", "stream=codec_name,nb_read_packets", "-of", "csv=p=0"])
        .arg(&dump)
        .output()
        .unwrap();
    let probe = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.contains("h264") && probe.contains("aac"), "rtmpdump's file: {probe}");
    assert!(ffmpeg.running(), "the publisher kept running");
}
