//! The origin cluster as real processes: formation, leader failover with a concurrent
//! writer, membership changes, conditional writes, SSE, and corrupted storage.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_origins_form_a_cluster_and_a_follower_write_is_read_everywhere() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (status, body) = c.put_slot(follower, "chat", "greeting", &json!({"text": "hello"}), None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    for id in 1..=3 {
        // Linearizable by default: every node answers with the write, no waiting.
        let obj = c.object(id, "chat", false).await.expect("object readable");
        assert_eq!(obj["slots"]["greeting"]["text"], "hello", "node {id}: {obj}");
        assert_eq!(obj["version"], 1);
    }
    let status = c.status(1).await.unwrap();
    assert_eq!(status["voters"], json!([1, 2, 3]));
    assert_eq!(status["leader_id"], leader);
    assert_eq!(status["nodes"]["2"]["http"], c.http(2).to_string());
}

/// Writes unique slots through every origin in turn until stopped; returns the slots
/// whose write was acknowledged.
fn spawn_writer(c: Arc<Cluster>, worker: usize, stop: Arc<Mutex<bool>>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let ids: Vec<u64> = c.origins.keys().copied().collect();
        for n in 0.. {
            if *stop.lock().unwrap() {
                break;
            }
            let slot = format!("w{worker}-{n}");
            let via = ids[n % ids.len()];
            if let Ok((StatusCode::OK, _)) = c.put_slot(via, "acks", &slot, &json!(n), None).await {
                acked.push(slot);
            }
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    // Take the processes out so the writers can share the cluster while we kill one.
    let mut victim = c.origins.get_mut(&leader).unwrap().child.take().unwrap();
    let c = Arc::new(c);
    let stop = Arc::new(Mutex::new(false));
    let writers: Vec<_> = (0..4).map(|w| spawn_writer(c.clone(), w, stop.clone())).collect();
    eventually(Duration::from_secs(10), "writes before the kill", || async {
        let obj = c.object(leader, "acks", true).await?;
        (obj["version"].as_u64()? >= 50).then_some(())
    })
    .await;

    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed_at = Instant::now();
    let new_leader = c.wait_leader(Some(leader), Duration::from_secs(5)).await;
    let failover = killed_at.elapsed();
    eprintln!("leader {leader} killed; node {new_leader} leads after {failover:?}");
    // The 1 s target is measured by scripts/bench-failover.sh; this bound only catches
    // a broken election on a loaded CI machine.
    assert!(failover < Duration::from_secs(4), "failover took {failover:?}");

    // Writes continue through the survivors.
    let before = c.object(new_leader, "acks", false).await.unwrap()["version"].as_u64().unwrap();
    eventually(Duration::from_secs(10), "writes after the kill", || async {
        let obj = c.object(new_leader, "acks", true).await?;
        (obj["version"].as_u64()? >= before + 50).then_some(())
    })
    .await;
    *stop.lock().unwrap() = true;
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }

    // The killed node restarts from its data and catches up.
    let mut c = Arc::try_unwrap(c).ok().expect("writers finished");
    c.spawn(leader);
    let target = c.status(new_leader).await.unwrap()["last_log_index"].as_u64().unwrap();
    eventually(Duration::from_secs(20), "the restarted node to catch up", || async {
        let s = c.status(leader).await?;
        (s["applied_index"].as_u64()? >= target).then_some(())
    })
    .await;
    for id in 1..=3 {
        let obj = c.object(id, "acks", true).await.unwrap();
        let present: BTreeSet<String> = obj["slots"].as_object().unwrap().keys().cloned().collect();
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "node {id} lost {} acknowledged writes: {lost:?}", lost.len());
    }
    assert!(acked.len() >= 100, "only {} writes acknowledged", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_and_another_node_removed() {
    let mut c = Cluster::start(3).await;
    c.add_origin(4);
    let o4 = &c.origins[&4];
    let health = format!("http://{}/health", o4.http);
    eventually(Duration::from_secs(10), "node 4 serving", || async {
        c.client.get(&health).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let body = json!({ "id": 4, "http": o4.http.to_string(), "media": o4.media.to_string() });
    let (s, b) = c.call(2, Method::POST, "/cluster/learners", Some(&body), &[]).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{b}");
    let status = c.status(1).await.unwrap();
    assert_eq!(status["learners"], json!([4]), "{status}");
    assert_eq!(status["nodes"]["4"]["media"], o4.media.to_string());
    // Adding it again with the same address is a no-op; with another address, a conflict.
    assert_eq!(c.call(3, Method::POST, "/cluster/learners", Some(&body), &[]).await.unwrap().0, StatusCode::OK);
    let other = json!({ "id": 4, "http": "127.0.0.1:1", "media": "127.0.0.1:2" });
    assert_eq!(c.call(3, Method::POST, "/cluster/learners", Some(&other), &[]).await.unwrap().0, StatusCode::CONFLICT);

    let (s, b) = c.call(3, Method::PUT, "/cluster/voters", Some(&json!({ "ids": [1, 2, 3, 4] })), &[]).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{b}");
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let removed = (1..=3).find(|id| *id != leader).unwrap();
    let (s, b) = c.call(4, Method::DELETE, &format!("/cluster/nodes/{removed}"), None, &[]).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{b}");
    let expected: Vec<u64> = (1..=4).filter(|id| *id != removed).collect();
    let status = eventually(Duration::from_secs(10), "node 4's view of the new membership", || async {
        let s = c.status(4).await?;
        (s["voters"] == json!(expected) && s["nodes"].get(removed.to_string()).is_none()).then_some(s)
    })
    .await;
    assert_eq!(status["learners"], json!([]));
    // The new voter serves linearizable reads of new writes.
    let (s, _) = c.put_slot(leader, "after", "x", &json!(1), None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c.object(4, "after", false).await.unwrap()["slots"]["x"], 1);
    c.kill(removed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_writes_with_the_same_if_match_let_exactly_one_win() {
    let c = Arc::new(Cluster::start(3).await);
    let (s, _) = c.put_slot(1, "poll", "winner", &json!("nobody"), None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    for round in 0..5u64 {
        let version = 1 + round;
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let via = 1 + i % 3;
                    c.put_slot(via, "poll", "winner", &json!(format!("client-{i}")), Some(version)).await.unwrap()
                })
            })
            .collect();
        let mut ok = 0;
        let mut mismatched = 0;
        for t in tasks {
            let (status, body) = t.await.unwrap();
            match status {
                StatusCode::OK => {
                    ok += 1;
                    assert_eq!(body["version"], version + 1);
                }
                StatusCode::PRECONDITION_FAILED => {
                    mismatched += 1;
                    assert_eq!(body["error"]["code"], "version_mismatch");
                    assert_eq!(body["error"]["current_version"], version + 1);
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!((ok, mismatched), (1, 7), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_watchers_see_every_committed_change_in_order() {
    use futures::StreamExt;
    let c = Cluster::start(3).await;
    let res = c
        .client
        .get(format!("http://{}/shared-objects/board/events", c.http(3)))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.bytes_stream();
    for i in 0..5 {
        let (s, _) = c.put_slot(1 + i % 3, "board", &format!("s{i}"), &json!(i), None).await.unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = c.call(2, Method::DELETE, "/shared-objects/board/slots/s0", None, &[]).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let mut text = String::new();
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = body.next().await.expect("stream open").unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            let events: Vec<(String, Value)> = text
                .split("\n\n")
                .filter_map(|block| {
                    let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                    let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                    Some((event.to_owned(), serde_json::from_str(data).ok()?))
                })
                .collect();
            if events.len() >= 7 {
                return events;
            }
        }
    })
    .await
    .expect("seven events");
    assert_eq!(events[0].0, "state");
    assert_eq!(events[0].1["version"], 0);
    for (i, (kind, data)) in events[1..6].iter().enumerate() {
        assert_eq!(kind, "change");
        assert_eq!(data["version"], i as u64 + 1);
        assert_eq!(data["set"][format!("s{i}")], i as u64);
    }
    assert_eq!(events[6].1, json!({ "version": 6, "deleted": "s0" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_with_a_corrupted_store_refuses_to_start() {
    let mut c = Cluster::start(1).await;
    let (s, _) = c.put_slot(1, "o", "s", &json!(1), None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    c.kill(1);
    let db = c.data_dir(1).join("raft-log/db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0x5Au8; len]).unwrap();
    c.spawn(1);
    assert!(!c.wait_exit(1).await.success());
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(log.contains("is damaged") && log.contains("refusing to start"), "{log}");
    // The refusal sticks: the failed start did not "repair" the store into an empty one.
    c.spawn(1);
    assert!(!c.wait_exit(1).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries() {
    let c = Arc::new(Cluster::start(3).await);
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let before = c.status(leader).await.unwrap()["last_log_index"].as_u64().unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.put_slot(leader, "batch", &format!("s{i}"), &json!(i), None).await.unwrap().0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let after = c.status(leader).await.unwrap()["last_log_index"].as_u64().unwrap();
    let obj = c.object(leader, "batch", false).await.unwrap();
    assert_eq!(obj["slots"].as_object().unwrap().len(), 64);
    assert_eq!(obj["version"], 64, "one version per write, batched or not");
    assert!(after - before < 64, "64 concurrent writes took {} log entries: no batching", after - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_passes_concurrent_writes_on_in_shared_requests() {
    let c = Arc::new(Cluster::start(3).await);
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(
                async move { c.put_slot(follower, "relayed", &format!("s{i}"), &json!(i), None).await.unwrap().0 },
            )
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // Every write is there, once, whichever request carried it (read through any
    // origin: an election under a loaded machine must not fail the read).
    let obj = eventually(Duration::from_secs(10), "the object", || c.object(follower, "relayed", false)).await;
    assert_eq!(obj["slots"].as_object().unwrap().len(), 64);
    assert_eq!(obj["version"], 64);
    for i in [0, 31, 63] {
        assert_eq!(obj["slots"][format!("s{i}")], json!(i));
    }
    let metrics = c.call(follower, Method::GET, "/metrics", None, &[]).await.unwrap().1;
    let metrics = metrics.as_str().unwrap();
    let (writes, requests) = (
        metric(metrics, "raftcast_raft_forwarded_writes_total "),
        metric(metrics, "raftcast_raft_forward_requests_total "),
    );
    // 64 unless an election moved the leader meanwhile (retries count again).
    assert!(writes >= 32, "{writes} writes forwarded\n{metrics}");
    assert!(requests < writes, "64 concurrent writes took {requests} requests to the leader: no batching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_from_a_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-every", "20", "--snapshot-keep", "0"]).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    c.kill(lagging);
    // Sequential writes: one log entry each, so the log outruns the snapshot interval.
    for i in 0..120 {
        let (s, _) = c.put_slot(leader, "snap", &format!("s{i}"), &json!(i), None).await.unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    let metrics = c.call(leader, Method::GET, "/metrics", None, &[]).await.unwrap().1;
    let snapshot_index = metric(metrics.as_str().unwrap(), "raftcast_raft_snapshot_index ");
    assert!(snapshot_index >= 100, "leader snapshot at {snapshot_index}");

    c.spawn(lagging);
    let target = c.status(leader).await.unwrap()["last_log_index"].as_u64().unwrap();
    eventually(Duration::from_secs(20), "the lagging node to catch up", || async {
        let s = c.status(lagging).await?;
        (s["applied_index"].as_u64()? >= target).then_some(())
    })
    .await;
    let obj = c.object(lagging, "snap", true).await.unwrap();
    assert_eq!(obj["slots"].as_object().unwrap().len(), 120);
    assert_eq!(obj["version"], 120);
    // It got there through a snapshot: its own snapshot covers most of the log.
    let metrics = c.call(lagging, Method::GET, "/metrics", None, &[]).await.unwrap().1;
    assert!(metric(metrics.as_str().unwrap(), "raftcast_raft_snapshot_index ") >= 100);
}

/// The value of the series `name` (with its trailing space) in a /metrics text; 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_succeeds_while_the_leader_is_paused() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let pid = c.origins[&leader].child.as_ref().unwrap().id();
    signal(pid, "-STOP");
    let started = Instant::now();
    let result = c.put_slot(follower, "paused", "x", &json!(1), None).await;
    let took = started.elapsed();
    signal(pid, "-CONT");
    let (status, body) = result.unwrap();
    assert_eq!(status, StatusCode::OK, "{body} after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(c.object(leader, "paused", false).await.unwrap()["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_quorum_answers_outcome_unknown_not_a_hang() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let paused: Vec<u32> =
        (1..=3).filter(|id| *id != survivor).map(|id| c.origins[&id].child.as_ref().unwrap().id()).collect();
    for pid in &paused {
        signal(*pid, "-STOP");
    }
    let started = Instant::now();
    let result = c.put_slot(survivor, "nq", "x", &json!(1), None).await;
    let took = started.elapsed();
    for pid in &paused {
        signal(*pid, "-CONT");
    }
    let (status, body) = result.unwrap();
    // It reached the paused leader's socket, so it may yet be applied: not a plain 503.
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "outcome_unknown");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // The cluster recovers once the nodes run again.
    let (s, _) = c.put_slot(survivor, "nq", "y", &json!(2), None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_is_applied_once() {
    let c = Cluster::start(3).await;
    let put = |via: u64, key: &'static str| {
        let c = &c;
        async move {
            let headers = [("if-match", "0"), ("idempotency-key", key)];
            c.call(via, Method::PUT, "/shared-objects/idem/slots/x", Some(&json!("first")), &headers).await.unwrap()
        }
    };
    let (s, b) = put(1, "req-1").await;
    assert_eq!((s, &b["version"]), (StatusCode::OK, &json!(1)));
    // The retry would fail its If-Match as a new write; as a retry it gets the first answer.
    let (s, b) = put(2, "req-1").await;
    assert_eq!((s, &b["version"]), (StatusCode::OK, &json!(1)), "{b}");
    assert_eq!(c.object(3, "idem", false).await.unwrap()["version"], 1);
    // Another key is another write.
    let (s, b) = put(3, "req-2").await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{b}");
}
