//! HLS marks across the cluster, with real origins, real edges and ffmpeg: the stream
//! is published through edge-1, and two edges' relays (in this process, the real relay
//! code: `EdgeContext`, `Relays::join_hls`, `Hub::subscribe_window`) read it, one from the
//! start and one joining late. Both must see the same frames with the same marks (the
//! late one from the owner's window on), through a SIGKILL of the owner origin, and
//! across the publisher reconnecting through edge-2 (a new session: discontinuity + 1,
//! the numbering continued).

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Cluster};
use edges::{ffmpeg_publish, EdgeProc};
use raftcast::edge::config::{EdgeArgs, EdgeConfig};
use raftcast::edge::EdgeContext;
use raftcast::hls::mark::{Boundary, HlsMark};
use raftcast::media::FrameKind;
use raftcast_raft::StreamKey;
use reqwest::Method;
use tokio_util::sync::CancellationToken;

/// One marked frame as a relay's HLS reader got it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    /// Which hub of the relay (a new one per publishing session).
    generation: usize,
    kind: FrameKind,
    mark: HlsMark,
    payload: u64,
}

/// An edge's relay side in this process, reading the stream like the HLS task does.
struct Probe {
    got: Arc<Mutex<Vec<Got>>>,
    /// The relay hub's HLS window: (segments, frames, bytes), sampled as frames come.
    window: Arc<Mutex<(usize, usize, usize)>>,
    stop: CancellationToken,
}

impl Probe {
    fn start(c: &Cluster, name: &str, stream: &StreamKey) -> Probe {
        let args = EdgeArgs {
            id: Some(name.to_owned()),
            origins: Some(c.origins.keys().map(|id| c.http(*id)).collect()),
            cluster_secret_file: Some(c.dir.path().join("cluster-secret")),
            ..EdgeArgs::default()
        };
        let config = EdgeConfig::from_args(args, |_| None).unwrap();
        let stop = CancellationToken::new();
        let ctx = EdgeContext::new(&config, stop.clone(), stop.clone()).unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let window: Arc<Mutex<(usize, usize, usize)>> = Arc::default();
        let (out, stream, cancel, sizes) = (got.clone(), stream.clone(), stop.clone(), window.clone());
        tokio::spawn(async move {
            let lease = ctx.relays.join_hls(&ctx, &stream);
            let mut hubs = lease.relay.hub();
            let mut generation = 0;
            loop {
                let hub = tokio::select! {
                    hub = hubs.wait_for(|h| h.is_some()) => match hub {
                        Ok(h) => h.clone().unwrap(),
                        Err(_) => return,
                    },
                    _ = cancel.cancelled() => return,
                };
                let sub = hub.subscribe_window();
                loop {
                    let frame = tokio::select! {
                        f = sub.recv() => f,
                        _ = cancel.cancelled() => return,
                    };
                    let Some(frame) = frame else { break };
                    let Some(mark) = frame.hls else { continue };
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    frame.payload.hash(&mut h);
                    let g = Got { generation, kind: frame.kind, mark, payload: h.finish() };
                    out.lock().unwrap().push(g);
                    *sizes.lock().unwrap() = hub.window_size();
                }
                generation += 1;
                // The next session's hub (the ended one may still be current briefly).
                let ended = hub;
                let _ = hubs.wait_for(|h| h.as_ref().is_some_and(|h| !Arc::ptr_eq(h, &ended))).await;
            }
        });
        Probe { got, window, stop }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The publishing sessions seen, in order (see [`sessions`]).
    fn sessions(&self) -> Vec<Vec<Got>> {
        sessions(&self.got())
    }

    /// The newest media sequence number of session `n`.
    fn msn(&self, n: usize) -> Option<u64> {
        self.sessions().get(n)?.last().map(|g| g.mark.msn)
    }
}

/// Frames split by publishing session: where a segment opens with another
/// discontinuity sequence number. (A reconnect may reach a relay as a new hub, after
/// the claim was released, or in the same hub, by a takeover.)
fn sessions(got: &[Got]) -> Vec<Vec<Got>> {
    let mut out: Vec<Vec<Got>> = Vec::new();
    let mut current = None;
    for g in got {
        if let Some(d) = opens_segment(g) {
            if current != Some(d) {
                current = Some(d);
                out.push(Vec::new());
            }
        }
        if let Some(session) = out.last_mut() {
            session.push(g.clone());
        }
    }
    out
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn opens_segment(g: &Got) -> Option<u32> {
    match g.mark.boundary {
        Some(Boundary::Segment(open)) => Some(open.discontinuity),
        _ => None,
    }
}

/// Within one session: numbers go up by one where a segment opens and only there,
/// parts go up by one where a part opens and only there, every segment of the session
/// has the same discontinuity, and no (msn, part, payload) is seen twice.
fn check_session(frames: &[Got]) {
    assert!(opens_segment(&frames[0]).is_some(), "a reader starts at a segment: {:?}", frames[0]);
    let discontinuity = opens_segment(&frames[0]).unwrap();
    for w in frames.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        match b.mark.boundary {
            Some(Boundary::Segment(open)) => {
                assert_eq!(b.mark.msn, a.mark.msn + 1, "segments are numbered one by one: {a:?} then {b:?}");
                assert_eq!(open.discontinuity, discontinuity, "one session, one discontinuity: {b:?}");
                assert_eq!(b.mark.part, 0);
            }
            Some(Boundary::Part { .. }) => {
                assert_eq!((b.mark.msn, b.mark.part), (a.mark.msn, a.mark.part + 1), "{a:?} then {b:?}");
            }
            None => assert_eq!((b.mark.msn, b.mark.part), (a.mark.msn, a.mark.part), "{a:?} then {b:?}"),
        }
        assert_ne!(a, b, "a frame delivered twice");
    }
}

async fn owner_of(c: &Cluster, via: u64, name: &str) -> Option<u64> {
    let (s, v) = c.call(via, Method::GET, "/streams", None, &[]).await.ok()?;
    if !s.is_success() {
        return None;
    }
    let e = v["streams"].as_array()?.iter().find(|e| e["app"] == "live" && e["name"] == name)?.clone();
    e["owner"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_are_the_same_on_every_relay_across_an_owner_kill_and_a_publisher_reconnect() {
    let name = "marks";
    let stream = StreamKey::new("live", name).unwrap();
    let mut c = Cluster::start(3).await;
    // Owned by a follower, so killing the owner does not also cost an election.
    let leader = c.leader(None).await.expect("a leader");
    let pinned = (1..=3).find(|i| *i != leader).unwrap();
    let body = serde_json::json!({ "origin": pinned });
    let (s, v) = c.call(leader, Method::PUT, &format!("/pins/live/{name}"), Some(&body), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let dir = c.dir.path().to_owned();
    let publisher = ffmpeg_publish(&edge1.rtmp_url("live", name), dir.join("publisher-1.log"));
    let owner = eventually(Duration::from_secs(15), "the stream to be published", || owner_of(&c, leader, name)).await;
    assert_eq!(owner, pinned);

    // Edge A's relay from the start; edge B's joins once A has seen four segments.
    let a = Probe::start(&c, "probe-a", &stream);
    let first = eventually(Duration::from_secs(15), "A's first marks", || async { a.msn(0) }).await;
    eventually(Duration::from_secs(20), "four segments at A", || async { a.msn(0).filter(|m| *m >= first + 4) }).await;
    let b = Probe::start(&c, "probe-b", &stream);
    let b_first =
        eventually(Duration::from_secs(15), "B's first marks", || async { b.got().first().map(|g| g.mark.msn) }).await;
    let a_now = a.msn(0).unwrap();
    assert!(b_first + 3 <= a_now, "the late relay got the owner's window: from {b_first}, live at {a_now}");

    // SIGKILL the owner: the stream moves, the publishing edge keeps its stamper and
    // re-sends its retained frames with the same marks.
    c.kill(owner);
    let via = if leader == owner { (1..=3).find(|i| *i != owner).unwrap() } else { leader };
    let moved = eventually(Duration::from_secs(15), "the stream to move", || async {
        owner_of(&c, via, name).await.filter(|o| *o != owner)
    })
    .await;
    let at_kill = a.msn(0).unwrap();
    eventually(Duration::from_secs(20), "three segments after the kill at A and B", || async {
        (a.msn(0)? >= at_kill + 3 && b.msn(0)? >= at_kill + 3).then_some(())
    })
    .await;
    eprintln!("owner {owner} killed at msn {at_kill}; origin {moved} owns the stream");
    let (segments, frames, bytes) = *a.window.lock().unwrap();
    eprintln!("relay A's HLS window: {segments} segments, {frames} frames, {bytes} bytes");

    // The publisher reconnects through edge-2: a new session.
    drop(publisher);
    let _publisher = ffmpeg_publish(&edge2.rtmp_url("live", name), dir.join("publisher-2.log"));
    eventually(Duration::from_secs(30), "three segments of the new session at A and B", || async {
        let (a, b) = (a.sessions(), b.sessions());
        assert!(a.len() <= 2 && b.len() <= 2, "one new session only");
        let four = |s: &Vec<Vec<Got>>| Some(s.get(1)?.iter().filter(|g| opens_segment(g).is_some()).count() >= 4);
        (four(&a)? && four(&b)?).then_some(())
    })
    .await;

    let (a, b) = (a.sessions(), b.sessions());
    assert_eq!((a.len(), b.len()), (2, 2), "two sessions on each relay");
    for (who, got) in [("A", &a), ("B", &b)] {
        for session in got {
            assert!(!session.is_empty(), "{who}");
            check_session(session);
        }
    }
    // The new session continues the numbering after a discontinuity.
    let end = a[0].last().unwrap();
    let start = &a[1][0];
    let (d0, d1) = (opens_segment(&a[0][0]).unwrap(), opens_segment(start).unwrap());
    eprintln!(
        "session 0 ended at msn {} (discontinuity {d0}); session 1 starts at msn {} ({d1})",
        end.mark.msn, start.mark.msn
    );
    assert!(start.mark.time_ms > end.mark.time_ms, "the timeline goes on");
    assert_eq!(d1, d0 + 1, "discontinuity + 1");
    assert_eq!(start.mark.msn, end.mark.msn + 1, "continued right after the last segment");
    assert!(b[1][0].mark.msn > b[0].last().unwrap().mark.msn);
    // B's frames are A's frames, marks included, from B's first on.
    for n in 0..2 {
        let from = a[n].iter().position(|g| g.mark == b[n][0].mark && g.payload == b[n][0].payload);
        let from = from.expect("B's first frame is one of A's");
        let len = b[n].len().min(a[n].len() - from);
        assert!(len > 100, "a long overlap: {len}");
        let strip = |g: &Got| (g.kind, g.mark, g.payload);
        let a_marks: Vec<_> = a[n][from..from + len].iter().map(strip).collect();
        let b_marks: Vec<_> = b[n][..len].iter().map(strip).collect();
        assert_eq!(a_marks, b_marks, "session {n}: the same frames and marks on both relays");
    }
    drop(edge2);
    drop(edge1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_back_through_another_edge_after_its_edge_died_continues_the_numbering() {
    let name = "phoenix";
    let stream = StreamKey::new("live", name).unwrap();
    let c = Cluster::start(3).await;
    let leader = c.leader(None).await.expect("a leader");
    let mut edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let dir = c.dir.path().to_owned();
    let publisher = ffmpeg_publish(&edge1.rtmp_url("live", name), dir.join("publisher-1.log"));
    let owner = eventually(Duration::from_secs(15), "the stream to be published", || owner_of(&c, leader, name)).await;
    let a = Probe::start(&c, "probe-a", &stream);
    eventually(Duration::from_secs(20), "three segments at A", || async {
        let s = a.sessions();
        (s.first()?.iter().filter(|g| opens_segment(g).is_some()).count() >= 3).then_some(())
    })
    .await;

    // edge-1 dies with the claim committed: the publisher comes back through edge-2 and
    // takes the dead session's stream over, on the same owner, which remembers.
    edge1.kill();
    drop(publisher);
    let _publisher = ffmpeg_publish(&edge2.rtmp_url("live", name), dir.join("publisher-2.log"));
    eventually(Duration::from_secs(30), "three segments of the new session at A", || async {
        let s = a.sessions();
        assert!(s.len() <= 2, "one new session only");
        (s.get(1)?.iter().filter(|g| opens_segment(g).is_some()).count() >= 3).then_some(())
    })
    .await;
    assert_eq!(owner_of(&c, leader, name).await, Some(owner), "the takeover stayed on the owner");
    let s = a.sessions();
    for session in &s {
        check_session(session);
    }
    let (end, start) = (s[0].last().unwrap(), &s[1][0]);
    let (d0, d1) = (opens_segment(&s[0][0]).unwrap(), opens_segment(start).unwrap());
    eprintln!("session 0 ended at msn {} ({d0}); session 1 starts at msn {} ({d1})", end.mark.msn, start.mark.msn);
    assert_eq!((start.mark.msn, d1), (end.mark.msn + 1, d0 + 1), "msn + 1, discontinuity + 1");
    assert!(start.mark.time_ms > end.mark.time_ms, "the timeline goes on");
    drop(edge2);
}
