//! Recovery probes run after each attack window: a probe write until it commits, a new
//! publisher and player on every edge, and every node's RSS sampled each second until
//! it is back near its pre-attack figure or the window is over. They record; the
//! verdict is [`crate::check::recovery`]'s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth::{self, Synth, SynthFrame};
use raftcast::rtmp::session::ClientEvent;

use crate::check::recovery::{EdgeProbe, RecoveryRecord, RssTrace, RSS_TOLERANCE_PERCENT, RSS_WINDOW_MS};
use crate::cluster::{Cluster, ORIGINS};
use crate::net::{Node, NODES};
use crate::workload::media;

/// How long the probe write is retried before it counts as never committed (longer than
/// the 5 s bound, so a slow commit is measured, not just failed).
const COMMIT_PROBE_FOR: Duration = Duration::from_secs(20);
/// How long a new player may take to get its first frame.
const MEDIA_PROBE_FOR: Duration = Duration::from_secs(10);

/// Every node's RSS now, by name.
pub fn rss_now(cluster: &Cluster) -> BTreeMap<String, u64> {
    NODES.iter().filter_map(|n| Some((n.to_string(), cluster.rss_kib(*n)?))).collect()
}

/// Bytes of 64 KiB values [`warm_store`] writes: one `--snapshot-every-bytes` at the
/// default, so the warm-up also takes a snapshot by bytes and purges behind it.
pub const WARM_STORE_BYTES: usize = 16 * 1024 * 1024;

/// Stores [`WARM_STORE_BYTES`] of 64 KiB values in one object through the admin API
/// (four writers, each slot rewritten), then deletes the object; returns the writes
/// that were answered 200. What a cluster with shared objects has done before any
/// attack: see `schedule::STORE_WARMUP`.
pub async fn warm_store(cluster: &Cluster) -> usize {
    // The largest values the attacks write (a slot value takes at most 64 KiB, its
    // JSON quotes included, as the server counts it).
    const VALUE: usize = 65_000;
    const WRITERS: usize = 4; // the join below
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(10)).build() else { return 0 };
    let body = serde_json::json!("w".repeat(VALUE - 2));
    let per_writer = WARM_STORE_BYTES.div_ceil(VALUE * WRITERS);
    let writer = |w: usize| {
        let (http, body) = (http.clone(), body.clone());
        async move {
            let mut ok = 0;
            for i in 0..per_writer {
                let origin = ORIGINS[(w + i) % ORIGINS.len()];
                let path = format!("/shared-objects/chaos-warm/slots/w{w}-{}", i % 4);
                if let Ok((200, _)) = cluster.call(&http, origin, reqwest::Method::PUT, &path, Some(&body), &[]).await {
                    ok += 1;
                }
            }
            ok
        }
    };
    let (a, b, c, d) = tokio::join!(writer(0), writer(1), writer(2), writer(3));
    let ok = a + b + c + d;
    delete_object(cluster, &http, "chaos-warm").await;
    ok
}

/// Deletes shared object `name` through the first origin that answers for it.
async fn delete_object(cluster: &Cluster, http: &reqwest::Client, name: &str) {
    let path = format!("/shared-objects/{name}");
    for origin in ORIGINS {
        if let Ok((200 | 204 | 404, _)) = cluster.call(http, origin, reqwest::Method::DELETE, &path, None, &[]).await {
            break;
        }
    }
}

/// Small writes [`fill_dedup_window`] makes: as many as the de-duplication window holds.
pub const WARM_WINDOW_WRITES: usize = raftcast_raft::dedup::DEDUP_WINDOW;

/// Commits [`WARM_WINDOW_WRITES`] small slot writes through the admin API (many
/// writers, spread over the origins), then deletes their object; returns the writes
/// answered 200. Every committed request leaves its answer in the de-duplication window
/// of every origin, which any long run of writes fills and which then stays full by
/// design (`raft/src/dedup.rs`, about 2.6 MB): a cluster that has served that many
/// writes before an attack has it full already, so the RSS baseline of the schedules
/// that flood the store is taken with it full.
pub async fn fill_dedup_window(cluster: &Cluster) -> usize {
    const WRITERS: usize = 48;
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(10)).build() else { return 0 };
    let per_writer = WARM_WINDOW_WRITES.div_ceil(WRITERS);
    let writers = (0..WRITERS).map(|w| {
        let http = http.clone();
        async move {
            let mut ok = 0;
            for i in 0..per_writer {
                let origin = ORIGINS[(w + i) % ORIGINS.len()];
                let path = format!("/shared-objects/chaos-warm-window/slots/w{w}");
                let body = serde_json::json!(i);
                if let Ok((200, _)) = cluster.call(&http, origin, reqwest::Method::PUT, &path, Some(&body), &[]).await {
                    ok += 1;
                }
            }
            ok
        }
    });
    let ok = futures::future::join_all(writers).await.into_iter().sum();
    delete_object(cluster, &http, "chaos-warm-window").await;
    ok
}

/// Milliseconds until a probe write commits through some origin (each tried in turn).
pub async fn commit(cluster: &Cluster, n: u64) -> Option<u64> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
    let started = Instant::now();
    let body = serde_json::json!(n);
    let mut i = 0;
    while started.elapsed() < COMMIT_PROBE_FOR {
        let origin = ORIGINS[i % ORIGINS.len()];
        i += 1;
        let path = format!("/shared-objects/chaos-probe/slots/p{n}");
        if let Ok((200, _)) = cluster.call(&http, origin, reqwest::Method::PUT, &path, Some(&body), &[]).await {
            return Some(started.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A new publisher of a new stream on `edge` and a new player of it on the same edge;
/// the time to the player's first frame.
pub async fn edge_media(cluster: &Cluster, edge: u32, n: u64) -> EdgeProbe {
    let addr = cluster.addrs(Node::Edge(edge)).media;
    let name = format!("probe-{edge}-{n}");
    let started = Instant::now();
    let publish = {
        let name = name.clone();
        tokio::spawn(async move {
            let mut c = RtmpClient::connect(addr, media::APP).await?;
            let id = c.publish(&name).await?;
            let (meta, avc, _) = synth::headers();
            c.send_data(id, 0, meta).await?;
            c.send_video(id, 0, avc).await?;
            let mut s = Synth::new(media::shape(), Instant::now());
            let t0 = tokio::time::Instant::now();
            loop {
                tokio::time::sleep_until(t0 + s.next_due()).await;
                match s.next_frame().1 {
                    SynthFrame::Video { timestamp, payload, .. } => c.send_video(id, timestamp, payload).await?,
                    SynthFrame::Audio { timestamp, payload } => c.send_audio(id, timestamp, payload).await?,
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    };
    let play = async {
        // The stream may take a moment to be claimed: ask again until the deadline.
        loop {
            let attempt = async {
                let mut c = RtmpClient::connect(addr, media::APP).await?;
                c.play(&name).await?;
                loop {
                    match c.next_event().await? {
                        Some(ClientEvent::Video { payload, .. }) if synth::read_stamp(&payload).is_some() => {
                            return anyhow::Ok(())
                        }
                        Some(_) => {}
                        None => anyhow::bail!("closed by the edge"),
                    }
                }
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if publish.is_finished() => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    let res = tokio::time::timeout(MEDIA_PROBE_FOR, play).await;
    publish.abort();
    let publish_err = match publish.await {
        Ok(Err(e)) => Some(format!("publisher: {e:#}")),
        _ => None,
    };
    let edge = format!("edge-{edge}");
    match res {
        Ok(Ok(())) => EdgeProbe { edge, first_frame_ms: Some(started.elapsed().as_millis() as u64), error: None },
        Ok(Err(e)) => {
            EdgeProbe { edge, first_frame_ms: None, error: Some(publish_err.unwrap_or(format!("player: {e:#}"))) }
        }
        Err(_) => EdgeProbe {
            edge,
            first_frame_ms: None,
            error: Some(publish_err.unwrap_or(format!("no frame within {MEDIA_PROBE_FOR:?}"))),
        },
    }
}

/// Samples every node's RSS each second from now until each is within the tolerance
/// of `before` or the window is over.
pub async fn rss(cluster: &Cluster, before: &BTreeMap<String, u64>, since: Instant) -> Vec<RssTrace> {
    let mut traces: Vec<RssTrace> = before
        .iter()
        .map(|(node, kib)| RssTrace { node: node.clone(), before_kib: *kib, samples: Vec::new() })
        .collect();
    loop {
        let now = rss_now(cluster);
        let ms = since.elapsed().as_millis() as u64;
        let mut all_back = true;
        for t in &mut traces {
            if let Some(kib) = now.get(&t.node) {
                t.samples.push((ms, *kib));
                all_back &= *kib <= t.before_kib + t.before_kib * RSS_TOLERANCE_PERCENT / 100;
            }
        }
        if all_back || ms >= RSS_WINDOW_MS {
            return traces;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every probe, in the order the issue lists them; RSS alongside.
pub async fn after_attack(cluster: &Cluster, after: String, before: &BTreeMap<String, u64>, n: u64) -> RecoveryRecord {
    let ended = Instant::now();
    // RSS is sampled from the attack's end, while the other probes run.
    let probes = async {
        let commit_ms = commit(cluster, n).await;
        let mut edges = Vec::new();
        for e in [1, 2] {
            edges.push(edge_media(cluster, e, n).await);
        }
        (commit_ms, edges)
    };
    let ((commit_ms, edges), rss) = tokio::join!(probes, rss(cluster, before, ended));
    RecoveryRecord { after, commit_ms, edges, rss }
}
