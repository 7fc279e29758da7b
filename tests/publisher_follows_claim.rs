//! Regression test (found by the chaos harness, `halves` and `bridge` schedules): an
//! owner that no longer hears the Raft log but still answers the publishing edge must
//! not keep the publication. The leader moves the stream away from it; players follow
//! the claim to the new owner, so the publisher's edge must follow it too, and re-send
//! what it kept, or players stall until the partition heals and lose the frames in
//! between.
//!
//! On loopback the owner is made deaf to the log by removing it from the cluster (it
//! keeps running and keeps its media link), then the stream is moved with `Reassign`.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use edges::EdgeProc;
use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth::{self, StreamShape, Synth, SynthFrame};
use raftcast::rtmp::session::ClientEvent;
use raftcast_raft::{Forward, ForwardReply, RequestId, Response, StreamKey};
use reqwest::Method;

async fn owner_of(c: &Cluster, via: u64, name: &str) -> Option<(u64, u64)> {
    let (s, v) = c.call(via, Method::GET, "/streams", None, &[]).await.ok()?;
    if !s.is_success() {
        return None;
    }
    let e = v["streams"].as_array()?.iter().find(|e| e["app"] == "live" && e["name"] == name)?.clone();
    Some((e["owner"].as_u64()?, e["epoch"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_follows_its_claim_away_from_an_owner_that_cannot_hear_the_log() {
    let name = "deafowner";
    let c = Cluster::start(3).await;
    let leader = c.leader(None).await.expect("a leader");
    let owner = (1..=3).find(|i| *i != leader).unwrap();
    let body = serde_json::json!({ "origin": owner });
    let (s, v) = c.call(leader, Method::PUT, &format!("/pins/live/{name}"), Some(&body), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;

    // A stamped stream through edge-1, played through edge-2.
    let stop = tokio_util::sync::CancellationToken::new();
    let last_sent = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn({
        let (stop, last_sent, addr) = (stop.clone(), last_sent.clone(), edge1.rtmp);
        async move {
            let mut client = RtmpClient::connect(addr, "live").await.expect("publisher connects");
            let id = client.publish(name).await.expect("publishes");
            let (meta, avc, _) = synth::headers();
            client.send_data(id, 0, meta).await.unwrap();
            client.send_video(id, 0, avc).await.unwrap();
            let shape = StreamShape { video_kbps: 400, fps: 25, gop: 25, keyframe_ratio: 4, audio: false };
            let mut synth = Synth::new(shape, Instant::now());
            let started = tokio::time::Instant::now();
            while !stop.is_cancelled() {
                tokio::time::sleep_until(started + synth.next_due()).await;
                if let (_, SynthFrame::Video { timestamp, payload, .. }) = synth.next_frame() {
                    let seq = synth::read_stamp(&payload).unwrap().0;
                    client.send_video(id, timestamp, payload).await.expect("the publisher stays connected");
                    last_sent.store(seq, Ordering::Release);
                }
            }
        }
    });
    let (owner_now, epoch) = eventually(Duration::from_secs(15), "the stream to be published", || {
        let c = &c;
        async move { owner_of(c, leader, name).await }
    })
    .await;
    assert_eq!(owner_now, owner, "the pin placed the stream");
    let received = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let player = tokio::spawn({
        let (stop, received, addr) = (stop.clone(), received.clone(), edge2.rtmp);
        async move {
            let mut client = RtmpClient::connect(addr, "live").await.expect("player connects");
            client.play(name).await.expect("plays");
            loop {
                let event = tokio::select! {
                    e = client.next_event() => e,
                    _ = stop.cancelled() => return None,
                };
                match event {
                    Ok(Some(ClientEvent::Video { payload, .. })) => {
                        if let Some((seq, _)) = synth::read_stamp(&payload) {
                            received.lock().unwrap().push((Instant::now(), seq));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Some("closed by the edge".to_string()),
                    Err(e) => return Some(e.to_string()),
                }
            }
        }
    });
    eventually(Duration::from_secs(15), "the player to receive frames", || {
        let n = received.lock().unwrap().len();
        async move { (n > 25).then_some(()) }
    })
    .await;

    // The owner leaves the cluster (it keeps running and keeps edge-1's link), then the
    // leader moves the stream away from it.
    let (s, v) = c.call(leader, Method::DELETE, &format!("/cluster/nodes/{owner}"), None, &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let stream = StreamKey { app: "live".into(), name: name.into() };
    let reassign = Forward::Reassign { id: RequestId::random(), stream, expected_epoch: epoch, away_from: owner };
    let ForwardReply::Written(Response::Claimed(moved)) = c.forward(&reassign).await else {
        panic!("the leader moves the stream")
    };
    assert_ne!(moved.owner, owner);
    let moved_at = Instant::now();
    let seq_at_move = last_sent.load(Ordering::Acquire);

    // Players follow the claim; the publisher's edge must too: fresh frames arrive at
    // edge-2 within a few seconds, with no gap.
    eventually(Duration::from_secs(5), "frames sent after the move to reach the player", || {
        let got = received.lock().unwrap().iter().any(|(_, seq)| *seq > seq_at_move + 25);
        async move { got.then_some(()) }
    })
    .await;
    eprintln!("fresh frames through the new owner {:?} after the move", moved_at.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    publisher.await.unwrap();
    assert_eq!(player.await.unwrap(), None, "the player stayed connected");
    let frames = received.lock().unwrap().clone();
    let mut newest: Option<u64> = None;
    for (_, seq) in &frames {
        if let Some(prev) = newest {
            if *seq <= prev {
                continue; // a duplicate after the move
            }
            assert_eq!(*seq, prev + 1, "no frame lost after {prev}");
        }
        newest = Some(*seq);
    }
    drop((edge1, edge2));
}
