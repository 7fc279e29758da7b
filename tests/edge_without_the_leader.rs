//! Regression test (found by the chaos harness, random run: `edge-owner-cut` when the
//! owner also led): an edge that cannot reach the leader still claims and moves its
//! streams through the origins it reaches. Followers used to answer an edge's claim or
//! reassign with "not the leader", so a publishing edge cut off from a leading owner
//! could not move its stream until the cut healed (a 9 s stall, frames lost), and an
//! edge started with `--origins` naming only followers could not publish at all,
//! although "any subset works".

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::time::Duration;

use common::Cluster;
use edges::EdgeProc;
use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth;
use raftcast::rtmp::session::ClientEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_lists_only_followers_publishes_and_plays() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let edge = EdgeProc::start_with_origins(&c, "edge-1", &followers, &[]).await;

    let mut publisher = RtmpClient::connect(edge.rtmp, "live").await.expect("connects");
    let id = publisher.publish("noleader").await.expect("the claim goes through a follower to the leader");
    let (meta, avc, _) = synth::headers();
    publisher.send_data(id, 0, meta).await.unwrap();
    publisher.send_video(id, 0, avc).await.unwrap();
    let mut player = RtmpClient::connect(edge.rtmp, "live").await.expect("player connects");
    let feed = tokio::spawn(async move {
        let mut s = synth::Synth::new(synth::StreamShape::default(), std::time::Instant::now());
        for _ in 0..200 {
            if let (_, synth::SynthFrame::Video { timestamp, payload, .. }) = s.next_frame() {
                publisher.send_video(id, timestamp, payload).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    player.play("noleader").await.expect("plays");
    let got_frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match player.next_event().await {
                Ok(Some(ClientEvent::Video { payload, .. })) if synth::read_stamp(&payload).is_some() => return,
                Ok(Some(_)) => {}
                other => panic!("the player lost its stream: {other:?}"),
            }
        }
    })
    .await;
    assert!(got_frame.is_ok(), "a stamped video frame reached the player within 10 s");
    let _publisher = feed.await.unwrap();
    assert_eq!(c.leader(None).await, Some(leader), "the leader stayed out of the edge's list all along");
}
