//! Raft under heavy writes, against real origin processes: a follower paused through a
//! flood of 64 KiB slot values catches up while the leader keeps committing, and an
//! origin whose Raft core stopped says so on `/health`, `/ready` and `/metrics`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A slot value just under the 64 KiB limit, as the attack in issue 12 sent.
fn big_value(i: u64) -> Value {
    let mut text = format!("{i:08}-");
    text.push_str(&"v".repeat(60 * 1024));
    Value::String(text)
}

/// What a flood of writes saw.
#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    overloaded: AtomicU64,
    other: AtomicU64,
    /// The first few of those other answers, for the failure message.
    others: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn other(&self, what: String) -> u64 {
        let mut seen = self.others.lock().unwrap();
        if seen.len() < 5 {
            seen.push(what);
        }
        self.other.fetch_add(1, Ordering::Relaxed)
    }

    fn others(&self) -> Vec<String> {
        self.others.lock().unwrap().clone()
    }
}

/// `clients` writers PUTting 64 KiB values through origin `via` until `stop` is set,
/// over 64 slots of one object (so the state stays a few MB while the log grows).
fn flood(
    cluster: &Arc<Cluster>,
    via: u64,
    clients: u64,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (cluster, stop, tally) = (cluster.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let slot = format!("s{}", i % 64);
                    match cluster.put_slot(via, "flood", &slot, &big_value(i), None).await {
                        Ok((s, _)) if s.is_success() => tally.committed.fetch_add(1, Ordering::Relaxed),
                        Ok((StatusCode::TOO_MANY_REQUESTS, _)) => {
                            tally.overloaded.fetch_add(1, Ordering::Relaxed);
                            // What a well-behaved client does with Retry-After, shortened.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            0
                        }
                        Ok((s, body)) => tally.other(format!("{s}: {body}")),
                        Err(e) => tally.other(format!("no answer: {e}")),
                    };
                    i += clients;
                }
            })
        })
        .collect()
}

async fn applied(cluster: &Cluster, id: u64) -> Option<u64> {
    cluster.status(id).await?["applied_index"].as_u64()
}

/// One flood test at a time: each runs three origins and eight writers, and two at once
/// on a small machine would measure each other.
static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_paused_through_a_flood_of_64k_writes_catches_up_by_streaming_the_log() {
    // No snapshot during the flood, so every entry of it stays in the log: the
    // follower must stream it, one bounded AppendEntries at a time.
    paused_follower_catches_up(&["--snapshot-every-bytes", "1073741824", "--snapshot-keep", "1000"], 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_paused_through_a_flood_of_64k_writes_catches_up_by_snapshot() {
    // Snapshots every 300 entries, 50 kept behind: the follower is past the purged log
    // and needs the snapshot (in bounded chunks), then streams the rest.
    paused_follower_catches_up(&["--snapshot-every", "300", "--snapshot-keep", "50"], 600).await;
}

/// Pauses a follower, floods the leader with 64 KiB writes until it has applied
/// `entries` more entries, resumes the follower while the flood goes on, and checks
/// that it reaches where the leader was while the leader keeps committing.
async fn paused_follower_catches_up(args: &[&str], entries: u64) {
    let _one_at_a_time = FLOODS.lock().await;
    let cluster = Arc::new(Cluster::start_with(3, args).await);
    let leader = cluster.wait_leader(None, Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.signal(follower, "-STOP");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let writers = flood(&cluster, leader, 8, &stop, &tally);
    // The flood runs until the leader's log is well past what the paused follower has.
    let paused_at = applied(&cluster, leader).await.unwrap();
    let lead = eventually(Duration::from_secs(120), "the leader to commit entries past the pause", || async {
        let a = applied(&cluster, leader).await?;
        (a >= paused_at + entries).then_some(a)
    })
    .await;
    let committed_before = tally.committed.load(Ordering::Relaxed);
    eprintln!(
        "paused follower {follower}; leader {leader} applied {lead}; {committed_before} writes committed, {} refused",
        tally.overloaded.load(Ordering::Relaxed)
    );

    // Resume it while the flood goes on: it must reach where the leader was, and the
    // leader must keep committing meanwhile.
    cluster.signal(follower, "-CONT");
    let resumed = Instant::now();
    let caught = eventually(Duration::from_secs(60), "the resumed follower to catch up", || async {
        let a = applied(&cluster, follower).await?;
        (a >= lead).then_some(a)
    })
    .await;
    let took = resumed.elapsed();
    let committed_during = tally.committed.load(Ordering::Relaxed) - committed_before;
    eprintln!("follower {follower} reached {caught} (leader was at {lead}) in {took:?}; {committed_during} writes committed meanwhile");
    assert!(committed_during > 0, "the leader kept committing while the follower caught up");

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // With the flood over, every node converges on the same applied index, and the
    // cluster commits a small write at once.
    let (status, _) = cluster.put_slot(leader, "after", "x", &json!(1), None).await.unwrap();
    assert!(status.is_success(), "a write after the flood: {status}");
    let end = applied(&cluster, leader).await.unwrap();
    eventually(Duration::from_secs(30), "every node to apply the last write", || async {
        for id in 1..=3 {
            if applied(&cluster, id).await? < end {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "every write was committed or refused with 429: {:?}",
        tally.others()
    );
    let m = metrics(&cluster, leader).await;
    assert!(m.contains("raftcast_raft_running 1"), "{m}");
    eprintln!("RSS after the flood (MiB): {:?}", (1..=3).map(|id| (id, rss_mib(&cluster, id))).collect::<Vec<_>>());
}

/// Resident memory of origin `id`'s process, in MiB (Linux).
fn rss_mib(cluster: &Cluster, id: u64) -> u64 {
    let pid = cluster.origins[&id].child.as_ref().expect("origin running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
    kb.unwrap_or(0) / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_beyond_the_budgets_are_refused_with_429_before_proposal() {
    let _one_at_a_time = FLOODS.lock().await;
    // The smallest budgets the config accepts: one entry's worth of waiting writes.
    let args = ["--max-pending-write-bytes", "262144", "--max-apply-lag", "2"];
    let cluster = Arc::new(Cluster::start_with(3, &args).await);
    let leader = cluster.wait_leader(None, Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // A refusal's answer, straight from the admin API.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut writers = flood(&cluster, leader, 16, &stop, &tally);
    writers.extend(flood(&cluster, follower, 16, &stop, &tally));
    let refused = eventually(Duration::from_secs(60), "a write refused as overloaded", || async {
        let res = cluster
            .client
            .put(format!("http://{}/shared-objects/flood/slots/probe", cluster.http(leader)))
            .bearer_auth(&cluster.token)
            .json(&big_value(0))
            .send()
            .await
            .ok()?;
        (res.status() == StatusCode::TOO_MANY_REQUESTS).then_some(res)
    })
    .await;
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    eventually(Duration::from_secs(60), "writes refused through a follower too", || async {
        let m = metrics(&cluster, follower).await;
        let pending =
            m.lines().find(|l| l.starts_with("raftcast_raft_writes_refused_total{reason=\"pending_bytes\"}"))?;
        (pending != "raftcast_raft_writes_refused_total{reason=\"pending_bytes\"} 0").then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let (committed, overloaded) = (tally.committed.load(Ordering::Relaxed), tally.overloaded.load(Ordering::Relaxed));
    eprintln!("{committed} writes committed, {overloaded} refused with 429");
    assert!(committed > 0, "writes within the budgets still commit");
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "every write was committed or refused with 429: {:?}",
        tally.others()
    );
    let m = metrics(&cluster, leader).await;
    assert!(m.contains("raftcast_raft_pending_write_bytes 0"), "nothing waits once the flood is over:\n{m}");
}

async fn metrics(cluster: &Cluster, id: u64) -> String {
    let (_, body) = cluster.call(id, Method::GET, "/metrics", None, &[]).await.unwrap();
    body.as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_whose_raft_core_stopped_is_neither_healthy_nor_ready_within_a_second() {
    let cluster = Arc::new(Cluster::start(3).await);
    let leader = cluster.wait_leader(None, Duration::from_secs(10)).await;
    let url = |path: &str| format!("http://{}{path}", cluster.http(leader));
    for path in ["/health", "/ready"] {
        assert_eq!(cluster.client.get(url(path)).send().await.unwrap().status(), StatusCode::OK, "{path}");
    }
    // Take the store out from under the running leader; its next log sync fails and
    // openraft stops the core (the "LogFlush error" of issue 12).
    std::fs::remove_dir_all(cluster.data_dir(leader)).unwrap();
    let written = Instant::now();
    let write = {
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.put_slot(leader, "doomed", "x", &json!(1), None).await })
    };
    let (status, body) = eventually(Duration::from_secs(5), "/ready to turn 503", || async {
        let res = cluster.client.get(url("/ready")).send().await.ok()?;
        let status = res.status();
        let body: Value = res.json().await.ok()?;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some((status, body))
    })
    .await;
    let took = written.elapsed();
    eprintln!("/ready answered {status} {body} {took:?} after the write");
    assert!(took < Duration::from_secs(1), "/ready turned 503 only after {took:?}");
    assert_eq!(body["error"]["code"], "raft_stopped", "{body}");
    let health = cluster.client.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let m = metrics(&cluster, leader).await;
    assert!(m.lines().any(|l| l == "raftcast_raft_running 0"), "{m}");
    // The write that hit the failure was not acknowledged as committed.
    if let Ok((status, body)) = write.await.unwrap() {
        assert!(!status.is_success(), "{status} {body}");
    }
}
