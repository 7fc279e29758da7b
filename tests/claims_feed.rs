//! The claims feed: an edge follows who owns every stream it publishes or relays on
//! one feed over one origin's link, not on a long-poll per stream; the feed moves to
//! another origin when its origin dies, and players still follow their streams.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use edges::EdgeProc;
use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth::{self, StreamShape, Synth, SynthFrame};
use raftcast::rtmp::session::ClientEvent;
use reqwest::Method;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STREAMS: usize = 12;

/// A light synthetic publisher on `edge` until `stop`.
fn publish(edge: SocketAddr, name: String, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = RtmpClient::connect(edge, "live").await.expect("publisher connects");
        let id = client.publish(&name).await.expect("publish accepted");
        let (meta, avc, aac) = synth::headers();
        client.send_data(id, 0, meta).await.unwrap();
        client.send_video(id, 0, avc).await.unwrap();
        client.send_audio(id, 0, aac).await.unwrap();
        let shape = StreamShape { video_kbps: 100, fps: 10, gop: 10, keyframe_ratio: 4, audio: false };
        let mut synth = Synth::new(shape, Instant::now());
        let started = Instant::now();
        while !stop.is_cancelled() {
            tokio::time::sleep_until((started + synth.next_due()).into()).await;
            if let (_, SynthFrame::Video { timestamp, payload, .. }) = synth.next_frame() {
                if client.send_video(id, timestamp, payload).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// A player on `edge` until `stop`: the synthetic video frames it got; `latest` is the
/// newest one's sequence number as it goes.
fn play(edge: SocketAddr, name: String, stop: CancellationToken, latest: Arc<AtomicU64>) -> JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut client = RtmpClient::connect(edge, "live").await.expect("player connects");
        client.play(&name).await.expect("play accepted");
        let mut seqs = Vec::new();
        loop {
            let event = tokio::select! {
                e = client.next_event() => e,
                _ = stop.cancelled() => break,
            };
            match event {
                Ok(Some(ClientEvent::Video { payload, .. })) => {
                    if let Some((seq, _)) = synth::read_stamp(&payload) {
                        latest.store(seq, Ordering::Relaxed);
                        seqs.push(seq);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        seqs
    })
}

/// The sum of `series` over the running origins.
async fn origins_sum(c: &Cluster, ids: &[u64], series: &str) -> f64 {
    let mut sum = 0.0;
    for id in ids {
        let (_, metrics) = c.call(*id, Method::GET, "/metrics", None, &[]).await.unwrap();
        let text = metrics.as_str().map(str::to_owned).unwrap_or_else(|| metrics.to_string());
        sum += edges::metric_value(&text, series).unwrap_or_else(|| panic!("{series} on origin {id}"));
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_edge_follows_all_its_streams_on_one_feed_which_moves_when_its_origin_dies() {
    let mut c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let stop = CancellationToken::new();
    let names: Vec<String> = (0..STREAMS).map(|i| format!("feed-{i}")).collect();
    let publishers: Vec<_> = names.iter().map(|n| publish(edge1.rtmp, n.clone(), stop.clone())).collect();
    let latest: Vec<Arc<AtomicU64>> = names.iter().map(|_| Arc::default()).collect();
    let players: Vec<_> =
        names.iter().zip(&latest).map(|(n, l)| play(edge2.rtmp, n.clone(), stop.clone(), l.clone())).collect();

    // Every publication (edge-1) and every relay (edge-2) follows its stream's claim
    // on its edge's one feed: two feeds in the cluster, and no stream watch at all.
    for edge in [&edge1, &edge2] {
        eventually(Duration::from_secs(20), "every stream followed on the feed", || async {
            (edge.metric("edge_claims_followed").await == STREAMS as f64).then_some(())
        })
        .await;
    }
    eventually(Duration::from_secs(20), "every player to get frames", || async {
        latest.iter().all(|l| l.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    let all = [1, 2, 3];
    eventually(Duration::from_secs(10), "one feed per edge", || async {
        (origins_sum(&c, &all, "raftcast_link_claim_feeds").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(origins_sum(&c, &all, "raftcast_stream_watches").await, 0.0, "no per-stream long-poll");

    // Kill an origin that carries a feed: the feed starts again on a survivor, and
    // every player keeps getting its stream (from its stream's new owner if moved).
    let mut victim = 0;
    for id in all {
        if origins_sum(&c, &[id], "raftcast_link_claim_feeds").await > 0.0 {
            victim = id;
        }
    }
    let restarts_before =
        edge1.metric("edge_claims_feed_restarts_total").await + edge2.metric("edge_claims_feed_restarts_total").await;
    c.kill(victim);
    let survivors: Vec<u64> = all.into_iter().filter(|id| *id != victim).collect();
    eventually(Duration::from_secs(20), "both feeds on the survivors", || async {
        (origins_sum(&c, &survivors, "raftcast_link_claim_feeds").await == 2.0).then_some(())
    })
    .await;
    for edge in [&edge1, &edge2] {
        assert_eq!(edge.metric("edge_claims_followed").await, STREAMS as f64, "{} follows every stream", edge.name);
    }
    // 10 frames/s: in 6 s after the feeds moved, every player gets about 60 more.
    let at_kill: Vec<u64> = latest.iter().map(|l| l.load(Ordering::Relaxed)).collect();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after: Vec<u64> = latest.iter().map(|l| l.load(Ordering::Relaxed)).collect();
    stop.cancel();
    for p in publishers {
        p.await.unwrap();
    }
    for (i, p) in players.into_iter().enumerate() {
        let seqs = p.await.unwrap();
        assert!(!seqs.is_empty(), "{}: no frames at all", names[i]);
        assert!(
            after[i] >= at_kill[i] + 30,
            "{} stalled after origin {victim} died: frame {} then {}",
            names[i],
            at_kill[i],
            after[i]
        );
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{}: frames out of order or repeated", names[i]);
    }
    let restarts =
        edge1.metric("edge_claims_feed_restarts_total").await + edge2.metric("edge_claims_feed_restarts_total").await;
    eprintln!("feed restarts after killing origin {victim}: {}", restarts - restarts_before);
    assert!(restarts > restarts_before, "a feed on origin {victim} started again elsewhere");
}
