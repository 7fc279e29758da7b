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
            let mut hubs = lease.relay().hub();
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

    /// The frames of each hub generation (one per claim: a release and a new claim
    /// make a new hub), from the first segment start of each.
    fn generations(&self) -> Vec<Vec<Got>> {
        let mut out: Vec<Vec<Got>> = Vec::new();
        for g in self.got() {
            while out.len() <= g.generation {
                out.push(Vec::new());
            }
            let current = &mut out[g.generation];
            if !current.is_empty() || opens_segment(&g).is_some() {
                current.push(g);
            }
        }
        out
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
        if std::thread::panicking() {
            // What this relay got, by hub generation: how many frames, and where each
            // discontinuity's segments start and end.
            let got = self.got();
            let mut runs: Vec<(usize, Option<u32>, u64, u64, usize)> = Vec::new();
            for g in &got {
                let d = opens_segment(g);
                match runs.last_mut() {
                    Some(r) if r.0 == g.generation && (d.is_none() || d == r.1) => {
                        r.3 = g.mark.msn;
                        r.4 += 1;
                    }
                    _ => runs.push((g.generation, d, g.mark.msn, g.mark.msn, 1)),
                }
            }
            eprintln!(
                "a probe got {} frames: (generation, discontinuity, first msn, last msn, frames) {runs:?}",
                got.len()
            );
        }
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

/// How many segments open in `frames`.
fn segments(frames: &[Got]) -> usize {
    frames.iter().filter(|g| opens_segment(g).is_some()).count()
}

/// Waits until the second session that `split` finds in `probe` (its
/// [`Probe::sessions`] or [`Probe::generations`]) holds `n` segments; never more
/// than two sessions.
async fn second_session(probe: &Probe, split: fn(&Probe) -> Vec<Vec<Got>>, n: usize, who: &str) {
    eventually(Duration::from_secs(30), &format!("{n} segments of the new session at {who}"), || async {
        let s = split(probe);
        assert!(s.len() <= 2, "one new session only at {who}");
        (segments(s.get(1)?) >= n).then_some(())
    })
    .await;
}

/// Where the first of two publishing sessions ended and the second began, and the
/// discontinuity sequence numbers of each.
struct Seam {
    end: HlsMark,
    start: HlsMark,
    d0: u32,
    d1: u32,
}

/// Checks each of the two `sessions` ([`check_session`]) and that the timeline goes
/// on between them; returns (and prints) where they meet.
fn seam(sessions: &[Vec<Got>]) -> Seam {
    assert_eq!(sessions.len(), 2, "two sessions");
    for session in sessions {
        assert!(!session.is_empty());
        check_session(session);
    }
    let (end, start) = (sessions[0].last().unwrap().mark, sessions[1][0].mark);
    let (d0, d1) = (opens_segment(&sessions[0][0]).unwrap(), opens_segment(&sessions[1][0]).unwrap());
    eprintln!("session 0 ended at msn {} ({d0}); session 1 starts at msn {} ({d1})", end.msn, start.msn);
    assert!(start.time_ms > end.time_ms, "the timeline goes on");
    Seam { end, start, d0, d1 }
}

async fn owner_of(c: &Cluster, via: u64, name: &str) -> Option<u64> {
    let (s, v) = c.call(via, Method::GET, "/streams", None, &[]).await.ok()?;
    if !s.is_success() {
        return None;
    }
    let e = v["streams"].as_array()?.iter().find(|e| e["app"] == "live" && e["name"] == name)?.clone();
    e["owner"].as_u64()
}

/// Pins `live/{name}` to an origin that does not lead, so killing the stream's owner
/// does not also cost an election; returns the leader and the pinned origin.
async fn pin_to_a_follower(c: &Cluster, name: &str) -> (u64, u64) {
    let leader = c.leader(None).await.expect("a leader");
    let pinned = (1..=3).find(|i| *i != leader).unwrap();
    let body = serde_json::json!({ "origin": pinned });
    let (s, v) = c.call(leader, Method::PUT, &format!("/pins/live/{name}"), Some(&body), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    (leader, pinned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_are_the_same_on_every_relay_across_an_owner_kill_and_a_publisher_reconnect() {
    owner_kill_then_reconnect("marks", false).await;
}

/// The same, with the reconnect's claim placed on the origin that neither died nor
/// took the stream over (a pin put there after the move): the relays, which followed
/// the stream to the second owner, must find the third and get the same frames and
/// marks there. That origin never held the stream: it asks the second owner, which
/// held the claim before, where the numbering stood (`docs/hls.md`, "Numbering"), so
/// the new session continues it exactly as on the same origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_are_the_same_on_every_relay_when_the_reconnect_lands_on_a_third_origin() {
    owner_kill_then_reconnect("marks3", true).await;
}

/// `HLS_MARKS_TRACE=1`: the in-process relays log to stderr (`RUST_LOG`, default
/// `raftcast=debug`). `HLS_MARKS_KEEP=DIR`: every process's log is copied to DIR at the
/// end of the test, passed or failed.
fn trace_probes() {
    if std::env::var_os("HLS_MARKS_TRACE").is_some() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("raftcast=debug"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

/// Copies the cluster's logs to `$HLS_MARKS_KEEP/{test}/` when dropped.
struct KeepLogs(std::path::PathBuf, &'static str);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some(keep) = std::env::var_os("HLS_MARKS_KEEP") else { return };
        let to = std::path::Path::new(&keep).join(self.1);
        let _ = std::fs::create_dir_all(&to);
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
            }
        }
    }
}

async fn owner_kill_then_reconnect(name: &'static str, reconnect_at_third: bool) {
    trace_probes();
    let stream = StreamKey::new("live", name).unwrap();
    let mut c = Cluster::start(3).await;
    let _keep = KeepLogs(c.dir.path().to_owned(), name);
    let (leader, pinned) = pin_to_a_follower(&c, name).await;
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

    if reconnect_at_third {
        // The next claim goes to the origin that is neither the dead one nor the owner.
        let third = (1..=3).find(|i| *i != owner && *i != moved).unwrap();
        let body = serde_json::json!({ "origin": third });
        let (s, v) = c.call(via, Method::PUT, &format!("/pins/live/{name}"), Some(&body), &[]).await.unwrap();
        assert!(s.is_success(), "{v}");
        eprintln!("live/{name} pinned to origin {third} for the reconnect");
    }

    // The publisher reconnects through edge-2: a new session.
    drop(publisher);
    let _publisher = ffmpeg_publish(&edge2.rtmp_url("live", name), dir.join("publisher-2.log"));
    // Sessions as the marks tell them: a discontinuity + 1.
    second_session(&a, Probe::sessions, 4, "A").await;
    second_session(&b, Probe::sessions, 4, "B").await;
    if reconnect_at_third {
        let third = (1..=3).find(|i| *i != owner && *i != moved).unwrap();
        assert_eq!(owner_of(&c, via, name).await, Some(third), "the new session is on the third origin");
    }

    // The new session continues the numbering after a discontinuity, on both relays.
    let (a, b) = (a.sessions(), b.sessions());
    let at_a = seam(&a);
    assert_eq!(at_a.d1, at_a.d0 + 1, "discontinuity + 1");
    assert_eq!(at_a.start.msn, at_a.end.msn + 1, "continued right after the last segment");
    let at_b = seam(&b);
    assert!(at_b.start.msn > at_b.end.msn);
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

/// The origin that held the stream's claim before is dead when the publisher comes back
/// on another origin: nobody can say where the numbering stood, so the new session is
/// numbered from the wall clock (`docs/hls.md`, "Nobody remembers"): its numbers go up,
/// never back. Asking the dead origin costs the publish no more than
/// `PREVIOUS_OWNER_WAIT`. The sessions are told apart by the relays' hubs (a release
/// and a new claim make a new one): within the same hour the wall clock's discontinuity
/// sequence is the first session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_after_the_previous_owner_died_is_numbered_from_the_wall_clock_at_once() {
    let name = "orphaned";
    let stream = StreamKey::new("live", name).unwrap();
    let mut c = Cluster::start(3).await;
    let (leader, pinned) = pin_to_a_follower(&c, name).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let dir = c.dir.path().to_owned();
    let publisher = ffmpeg_publish(&edge1.rtmp_url("live", name), dir.join("publisher-1.log"));
    let owner = eventually(Duration::from_secs(15), "the stream to be published", || owner_of(&c, leader, name)).await;
    assert_eq!(owner, pinned);
    let a = Probe::start(&c, "probe-a", &stream);
    eventually(Duration::from_secs(20), "three segments at A", || async {
        (segments(a.generations().first()?) >= 3).then_some(())
    })
    .await;

    // The publisher leaves (its claim is released), then its owner dies: the next
    // claim goes to the third origin, which never held the stream.
    drop(publisher);
    eventually(Duration::from_secs(15), "the claim to be released", || async {
        owner_of(&c, leader, name).await.is_none().then_some(())
    })
    .await;
    c.kill(pinned);
    let third = (1..=3).find(|i| *i != leader && *i != pinned).unwrap();
    let body = serde_json::json!({ "origin": third });
    let (s, v) = c.call(leader, Method::PUT, &format!("/pins/live/{name}"), Some(&body), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let _publisher = ffmpeg_publish(&edge2.rtmp_url("live", name), dir.join("publisher-2.log"));
    second_session(&a, Probe::generations, 3, "A").await;
    assert_eq!(owner_of(&c, leader, name).await, Some(third), "the new session is on the third origin");
    let seam = seam(&a.generations());
    assert!(seam.start.msn > seam.end.msn && seam.d1 >= seam.d0, "numbers never go back");

    // The third origin asked the dead one, and did not wait for it.
    let log = std::fs::read_to_string(c.log_path(third)).unwrap();
    let asked = log.lines().find(|l| l.contains("asked the previous owner")).expect("the previous owner was asked");
    eprintln!("origin {third}: {asked}");
    assert!(asked.contains(&format!("previous.owner={pinned}")) && asked.contains("Err("), "{asked}");
    let waited: u64 = asked.split("waited_ms=").nth(1).and_then(|w| w.split(' ').next()?.parse().ok()).unwrap();
    let limit = raftcast::origin::PREVIOUS_OWNER_WAIT.as_millis() as u64;
    assert!(waited <= limit + 50, "the publish waited {waited} ms for a dead origin");
    let publishing = log.lines().find(|l| l.contains("publishing") && l.contains("from the wall clock"));
    eprintln!("origin {third}: {}", publishing.expect("the session is numbered from the wall clock"));
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
        (segments(a.sessions().first()?) >= 3).then_some(())
    })
    .await;

    // edge-1 dies with the claim committed: the publisher comes back through edge-2 and
    // takes the dead session's stream over, on the same owner, which remembers.
    edge1.kill();
    drop(publisher);
    let _publisher = ffmpeg_publish(&edge2.rtmp_url("live", name), dir.join("publisher-2.log"));
    second_session(&a, Probe::sessions, 3, "A").await;
    assert_eq!(owner_of(&c, leader, name).await, Some(owner), "the takeover stayed on the owner");
    let seam = seam(&a.sessions());
    assert_eq!((seam.start.msn, seam.d1), (seam.end.msn + 1, seam.d0 + 1), "msn + 1, discontinuity + 1");
    drop(edge2);
}

/// A media playlist's segment list: `EXT-X-MEDIA-SEQUENCE` and the segment URIs.
fn segment_list(playlist: &str) -> (u64, Vec<String>) {
    let sequence = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no media sequence in\n{playlist}"));
    let uris = playlist.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    (sequence, uris)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<bytes::Bytes, String> {
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()));
    }
    r.bytes().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_starting_hls_after_an_owner_failover_serves_the_whole_window_of_the_others() {
    let name = "latewindow";
    let mut c = Cluster::start(3).await;
    let (leader, _) = pin_to_a_follower(&c, name).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let dir = c.dir.path().to_owned();
    let _publisher = ffmpeg_publish(&edge1.rtmp_url("live", name), dir.join("publisher.log"));
    let owner = eventually(Duration::from_secs(15), "the stream to be published", || owner_of(&c, leader, name)).await;
    let client = reqwest::Client::new();
    let playlist = |edge: &EdgeProc| format!("http://{}/live/{name}/index.m3u8", edge.http);

    // edge-2 serves HLS from the start, until its window is full (six complete
    // segments, the default).
    let url2 = playlist(&edge2);
    eventually(Duration::from_secs(40), "a full window on edge-2", || async {
        let text = String::from_utf8(fetch(&client, &url2).await.ok()?.to_vec()).ok()?;
        (segment_list(&text).1.len() >= 6).then_some(())
    })
    .await;

    // SIGKILL the owner; once the publishing edge re-sent its retained frames to the new
    // owner, an edge that never served the stream starts serving it.
    c.kill(owner);
    let via = if leader == owner { (1..=3).find(|i| *i != owner).unwrap() } else { leader };
    let moved = eventually(Duration::from_secs(15), "the stream to move", || async {
        owner_of(&c, via, name).await.filter(|o| *o != owner)
    })
    .await;
    eventually(Duration::from_secs(10), "edge-1 to publish on the new owner", || async {
        let log = std::fs::read_to_string(&edge1.log).unwrap_or_default();
        log.contains("publishing on a new owner").then_some(())
    })
    .await;
    let edge3 = EdgeProc::start(&c, "edge-3", &[]).await;
    let url3 = playlist(&edge3);
    let first3 = String::from_utf8(fetch(&client, &url3).await.expect("edge-3's first playlist").to_vec()).unwrap();
    eprintln!("owner {owner} killed, origin {moved} owns the stream; edge-3's first playlist:\n{first3}");

    // The same moment on both edges: the playlist once segment M is complete, for an M
    // neither has yet.
    let (seq3, uris3) = segment_list(&first3);
    let m = seq3 + uris3.len() as u64 + 1;
    let at = |url: &str| format!("{url}?_HLS_msn={m}");
    let (at2, at3) = (at(&url2), at(&url3));
    let (p2, p3) = tokio::join!(fetch(&client, &at2), fetch(&client, &at3));
    let (p2, p3) = (String::from_utf8(p2.unwrap().to_vec()).unwrap(), String::from_utf8(p3.unwrap().to_vec()).unwrap());
    let (list2, list3) = (segment_list(&p2), segment_list(&p3));
    eprintln!("at msn {m}: edge-2 lists {list2:?}; edge-3 lists {list3:?}");
    assert!(list3.1.len() >= 6, "edge-3 lists a whole window: {list3:?}");
    assert_eq!(list3, list2, "the same media sequence and segment URIs on both edges");
    // The same bytes under each URI, init segments included.
    let mut uris: Vec<String> = list2.1.clone();
    for p in [&p2, &p3] {
        for l in p.lines().filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"")) {
            uris.push(l.trim_end_matches('"').to_owned());
        }
    }
    uris.dedup();
    for uri in &uris {
        let base = |edge: &EdgeProc| format!("http://{}/live/{name}/{uri}", edge.http);
        let (b2, b3) = (fetch(&client, &base(&edge2)).await.unwrap(), fetch(&client, &base(&edge3)).await.unwrap());
        assert!(!b2.is_empty());
        assert!(b2 == b3, "{uri}: {} bytes on edge-2, {} on edge-3, not the same", b2.len(), b3.len());
    }
    eprintln!("{} URIs identical on both edges", uris.len());
    drop(edge3);
    drop(edge2);
    drop(edge1);
}

/// ffmpeg publishing like [`ffmpeg_publish`] but through its `tee` muxer, which does not
/// ask libx264 for a global header: the FLV sequence header is empty and every keyframe
/// carries SPS and PPS in band, behind Annex-B start codes.
fn ffmpeg_publish_annexb(url: &str, log: std::path::PathBuf) -> edges::Proc {
    edges::require("ffmpeg");
    let child = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-map", "0:v", "-map", "1:a"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "60", "-threads", "1"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "tee", &format!("[f=flv]{url}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    edges::Proc(child)
}

/// The `EXT-X-MAP` URI and the segment URIs of a media playlist.
fn playlist_uris(text: &str) -> (Option<String>, Vec<String>) {
    let map = text.lines().rev().find_map(|l| Some(l.strip_prefix("#EXT-X-MAP:URI=\"")?.strip_suffix('"')?.to_owned()));
    let segments = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    (map, segments)
}

async fn get(url: &str) -> Option<bytes::Bytes> {
    let response = reqwest::get(url).await.ok()?;
    response.status().is_success().then_some(())?;
    response.bytes().await.ok()
}

/// `ffprobe -count_frames` of a file: (codec name, frames decoded) per stream, and
/// whatever it reported as an error.
fn ffprobe_frames(path: &std::path::Path) -> (Vec<(String, u64)>, String) {
    edges::require("ffprobe");
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_name,nb_read_frames", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let streams = streams
        .iter()
        .map(|s| {
            let frames = s["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
            (s["codec_name"].as_str().unwrap_or("").to_owned(), frames)
        })
        .collect();
    (streams, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_without_a_global_header_is_packaged_the_same_on_both_edges() {
    let name = "annexb";
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let dir = c.dir.path().to_owned();
    let _publisher = ffmpeg_publish_annexb(&edge1.rtmp_url("live", name), dir.join("publisher.log"));
    let playlist = |edge: &EdgeProc| format!("http://{}/live/{name}/index.m3u8", edge.http);

    // Edge-1 packages from the start; edge-2 starts once edge-1 lists three segments,
    // from the owner's window (a later keyframe than the stream's first).
    eventually(Duration::from_secs(30), "three segments on edge-1", || async {
        let text = get(&playlist(&edge1)).await?;
        (playlist_uris(std::str::from_utf8(&text).ok()?).1.len() >= 3).then_some(())
    })
    .await;
    let (map, common) = eventually(Duration::from_secs(30), "three segments both edges list", || async {
        let one = get(&playlist(&edge1)).await?;
        let two = get(&playlist(&edge2)).await?;
        let (map1, one) = playlist_uris(std::str::from_utf8(&one).ok()?);
        let (map2, two) = playlist_uris(std::str::from_utf8(&two).ok()?);
        let common: Vec<String> = one.into_iter().filter(|u| two.contains(u)).collect();
        (common.len() >= 3 && map1 == map2).then_some((map1?, common))
    })
    .await;
    let base = |edge: &EdgeProc| format!("http://{}/live/{name}/", edge.http);
    let init = get(&format!("{}{map}", base(&edge1))).await.expect("the init segment");
    assert_eq!(get(&format!("{}{map}", base(&edge2))).await, Some(init.clone()), "{map} is the same on both edges");
    for uri in &common {
        let one = get(&format!("{}{uri}", base(&edge1))).await.expect("the segment on edge-1");
        let two = get(&format!("{}{uri}", base(&edge2))).await.expect("the segment on edge-2");
        assert!(one == two, "{uri} is the same on both edges");
        // The init segment and the segment make a file ffprobe decodes: H.264 video
        // (about 60 frames in 2 s at 30 fps) and AAC, without an error.
        let file = dir.join(uri.replace(".m4s", ".mp4"));
        std::fs::write(&file, [&init[..], &one[..]].concat()).unwrap();
        let (streams, errors) = ffprobe_frames(&file);
        eprintln!("{uri}: {streams:?}");
        assert!(errors.is_empty(), "{uri}: {errors}");
        let frames = |codec: &str| streams.iter().find(|s| s.0 == codec).map(|s| s.1);
        assert!(frames("h264").is_some_and(|n| n >= 30), "{uri}: H.264 video decodes: {streams:?}");
        assert!(frames("aac").is_some_and(|n| n >= 30), "{uri}: AAC decodes: {streams:?}");
    }
    // And a player reading the live playlist finds H.264 video in it.
    let packets = edges::ffprobe_video_packets(&playlist(&edge2), 2).await;
    assert!(packets.as_ref().is_ok_and(|n| *n > 0), "ffprobe of edge-2's playlist: {packets:?}");
    drop(edge2);
    drop(edge1);
}
