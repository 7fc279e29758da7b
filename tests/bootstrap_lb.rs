//! `RAFTCAST_LB=1 scripts/bootstrap.sh start`: HAProxy in front of the two edges. One
//! address for everything: a publisher on the balancer's RTMP port, a player on its HTTP
//! port; the edges see the clients' addresses (PROXY v2 from 127.0.0.2) while clients
//! on 127.0.0.1 still reach them directly; SIGKILL an edge and idempotent GETs through
//! the balancer keep answering 200 (retried on the other edge); `status` shows HAProxy
//! and `stop` stops it.

#[path = "common/bootstrap.rs"]
mod bootstrap;
mod common;
#[path = "common/edges.rs"]
mod edges;

use std::process::Command;
use std::time::Duration;

use bootstrap::{alive, ok, Bootstrapped};
use common::eventually;
use edges::{ffmpeg_publish, ffprobe_video_packets};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_of_the_edges_hides_an_edge_death_from_gets() {
    edges::require("haproxy");
    let (cluster, out) = Bootstrapped::start(2);
    let (dir, data, ports) = (cluster.dir.path(), &cluster.data, &cluster.ports);
    assert!(out.contains("started haproxy"), "{out}");
    let cfg = std::fs::read_to_string(data.join("haproxy.cfg")).unwrap();
    for setting in ["balance roundrobin", "option redispatch", "retry-on conn-failure", "send-proxy-v2"] {
        assert!(cfg.contains(setting), "haproxy.cfg lacks {setting}");
    }

    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(&url).send().await.map(|r| r.status().as_u16()).map_err(|e| e.to_string()) }
    };
    // Direct clients (127.0.0.1, not the trusted 127.0.0.2) still reach the edges.
    assert_eq!(get(format!("http://{}/health", ports.edge_http(1))).await, Ok(200));

    // One address for everything: publish and play through the balancer.
    let _ffmpeg = ffmpeg_publish(&format!("rtmp://{}/live/lb", ports.lb_rtmp()), dir.join("ffmpeg.log"));
    let flv = format!("http://{}/live/lb.flv", ports.lb_http());
    let packets = eventually(Duration::from_secs(30), "HTTP-FLV through the balancer", || {
        let flv = flv.clone();
        async move { ffprobe_video_packets(&flv, 2).await.ok().filter(|n| *n > 0) }
    })
    .await;
    assert!(packets > 0);

    // SIGKILL edge-1: GETs through the balancer keep answering, retried on edge-2. The
    // first request after the kill may find a kept-alive connection to the dead edge,
    // or edge-1 still in rotation: both must be retried, not answered with an error.
    let page = format!("http://{}/webcast/app.js", ports.lb_http());
    for _ in 0..20 {
        assert_eq!(get(page.clone()).await, Ok(200));
    }
    let edge1 = cluster.pid("edge-1");
    assert!(Command::new("kill").args(["-KILL", &edge1.to_string()]).status().unwrap().success());
    eventually(Duration::from_secs(5), "edge-1 to die", || async move { (!alive(edge1)).then_some(()) }).await;
    let mut failed = Vec::new();
    for i in 0..200 {
        match get(page.clone()).await {
            Ok(200) => {}
            other => failed.push((i, other)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 GETs through the balancer failed after edge-1 died, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // A fresh client (no kept-alive connections) too.
    for _ in 0..20 {
        let status = reqwest::Client::new().get(&page).send().await.map(|r| r.status().as_u16());
        assert_eq!(status.map_err(|e| e.to_string()), Ok(200));
    }

    let status = ok(cluster.script("status"));
    assert!(status.contains("haproxy running"), "{status}");
    let haproxy = cluster.pid("haproxy");
    ok(cluster.script("stop"));
    assert!(!alive(haproxy), "stop left HAProxy running");
}

/// RTMPT through the balancer's HTTP port, which deals every request round-robin, with no
/// stickiness: a session's requests land on every edge, and an edge that does not hold
/// the session forwards the request to the one that does (`--rtmpt-peers`). ffmpeg
/// publishes over `rtmpt://` through the balancer; ffprobe and rtmpdump play over
/// `rtmpt://` through it, and ffprobe over RTMP through it too: the same packet counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_through_the_round_robin_balancer_publishes_and_plays() {
    edges::require("haproxy");
    edges::require("rtmpdump");
    let (cluster, _) = Bootstrapped::start(2);
    let (dir, ports) = (cluster.dir.path(), &cluster.ports);

    let rtmpt = format!("rtmpt://{}/live/tunnelled", ports.lb_http());
    let _ffmpeg = edges::ffmpeg_publish(&rtmpt, dir.join("ffmpeg.log"));
    let rtmp = format!("rtmp://{}/live/tunnelled", ports.lb_rtmp());
    eventually(Duration::from_secs(30), "the tunnelled stream over RTMP through the balancer", || {
        let rtmp = rtmp.clone();
        async move { ffprobe_video_packets(&rtmp, 1).await.ok().filter(|n| *n > 0) }
    })
    .await;

    // About 150 video packets in 5 s of the 30 fps stream, tunnelled and not.
    let (tunnelled, direct) = tokio::join!(ffprobe_video_packets(&rtmpt, 5), ffprobe_video_packets(&rtmp, 5));
    let (tunnelled, direct) = (tunnelled.unwrap(), direct.unwrap());
    eprintln!("ffprobe through the balancer over 5 s: rtmpt {tunnelled} video packets, rtmp {direct}");
    assert!((120..=190).contains(&tunnelled), "RTMPT: {tunnelled} packets in 5 s");
    assert!((120..=190).contains(&direct), "RTMP: {direct} packets in 5 s");

    // rtmpdump (librtmp's own RTMPT) through the balancer for 4 s.
    let probe = edges::rtmpdump_records(&rtmpt, &dir.join("dump.flv"), 4).await;
    assert!(probe.contains("h264") && probe.contains("aac"), "rtmpdump's file: {probe}");

    // HLS players through the balancer get the same stream: the window's segments, at
    // 30 fps (2 s of media at least in the playlist ffprobe reads from its start).
    let hls = format!("http://{}/live/tunnelled/index.m3u8", ports.lb_http());
    let segments = ffprobe_video_packets(&hls, 2).await.unwrap();
    assert!(segments >= 30, "HLS through the balancer: {segments} video packets");

    // The balancer deals every request round-robin, so a session's requests land on both
    // edges and the edge that does not hold it forwards them (had one met
    // `404 unknown_session`, its session would have ended and the counts above fallen
    // short). Which edge each `/open` lands on depends on how the sessions' requests
    // interleave: all of them may land on one edge (seen in CI), so only the totals are
    // checked. Requests for an unknown session are printed, not checked: a client's last
    // poll may follow its /close.
    let mut per_edge = Vec::new();
    for i in 1..=2 {
        let text = reqwest::get(format!("http://{}/metrics", ports.edge_http(i))).await.unwrap().text().await.unwrap();
        let value = |name: &str| edges::metric_value(&text, name).unwrap_or(0.0);
        per_edge.push((
            value("edge_rtmpt_requests_total{kind=\"open\"}"),
            bootstrap::metric_sum(&text, "edge_rtmpt_forwarded_total").unwrap_or(-1.0),
            value("edge_rtmpt_rejected_total{reason=\"unknown_session\"}"),
        ));
    }
    eprintln!(
        "per edge (sessions opened, requests forwarded to a peer, requests for an unknown session): {per_edge:?}"
    );
    let opened: f64 = per_edge.iter().map(|(opened, _, _)| opened).sum();
    let forwarded: f64 = per_edge.iter().map(|(_, forwarded, _)| forwarded).sum();
    // ffmpeg's publisher, ffprobe's player and rtmpdump's: three sessions at least.
    assert!(opened >= 3.0, "sessions opened on the edges: {per_edge:?}");
    assert!(forwarded >= 10.0, "requests forwarded to the holder: {per_edge:?}");
}
