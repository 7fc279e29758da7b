//! RTMPT sessions that outlive the edge serving them (docs/rtmpt.md, "Phase 2"), with
//! the bootstrap cluster behind HAProxy (`RAFTCAST_LB=1 scripts/bootstrap.sh`, three
//! origins, three edges, every RTMPT request round-robin with no stickiness, each edge
//! given `--rtmpt-peers`): a looped pre-encoded file whose every video frame differs is
//! published, and the players' video packets are hashed and compared with the file's.
//!
//! - Players over RTMPT through the balancer (ffmpeg, and rtmpdump's librtmp) keep
//!   playing when the edge holding their session is SIGKILLed, then when the stream's
//!   owner origin is: every frame once, in order, none missing across either kill.
//! - A publisher over RTMPT through the balancer keeps publishing when the edge holding
//!   its session is SIGKILLed; an RTMP player on a surviving edge gets every frame once.
//!
//! Which edge holds a session: its id's first two hex digits are the holder's index in
//! `--rtmpt-peers` (bootstrap.sh lists the edges in order); the test reads a client's id
//! from the paths in HAProxy's log. The longest stall each player saw around each kill is
//! printed.

#[path = "common/bootstrap.rs"]
mod bootstrap;
mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootstrap::Bootstrapped;
use common::eventually;
use edges::{
    assert_run_of, framehash, metric_value, noisy_source as source, play_hashes, publish_file, read_hashes, reference,
    require, Proc,
};
use raftcast::bench::client::RtmpClient;
use raftcast::rtmp::session::ClientEvent;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One cluster at a time: three origins, three edges, HAProxy and the clients already
/// fill the two cores of the CI machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EDGES: u16 = 3;
/// A 30 fps stream: 150 frames are 5 s of playing.
const FIVE_SECONDS: usize = 150;

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// SIGINT (ffmpeg and rtmpdump finish their output and close their session), then
/// SIGKILL if it is still running after 10 s.
async fn interrupt(p: &mut Proc) {
    signal(p.0.id(), "-INT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = p.0.kill();
    let _ = p.0.wait();
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// rtmpdump (librtmp's own RTMPT) playing `url` live into the FLV file `out`.
fn rtmpdump_plays(url: &str, out: &Path, log: &Path) -> Proc {
    let child = Command::new("rtmpdump")
        .args(["--live", "-r", url, "-o"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

/// The video packets of the FLV file rtmpdump wrote, hashed like the others. Its last
/// tag may be cut short by the SIGINT: ffmpeg's exit status is not checked.
fn flv_hashes(flv: &Path, dir: &Path) -> Vec<String> {
    let out = dir.join("rtmpdump.hash");
    framehash(flv, &out);
    read_hashes(&out)
}

/// When a growing file grew (its size polled every 20 ms): the arrival times of what a
/// player writes as it receives it.
fn watch_growth(path: PathBuf, stop: CancellationToken) -> JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let (mut times, mut size) = (Vec::new(), 0);
        while !stop.is_cancelled() {
            let now = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if now > size {
                times.push(Instant::now());
                size = now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times
    })
}

/// The longest time between two consecutive arrivals that overlaps `[from, to]`, or
/// since the last arrival if none came after it up to `to`.
fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    for w in times.windows(2) {
        if w[1] >= from && w[0] <= to {
            longest = longest.max(w[1] - w[0]);
        }
    }
    match times.last() {
        Some(last) if *last <= to => longest.max(to - (*last).max(from)),
        None => to - from,
        _ => longest,
    }
}

/// `edge_rtmpt_sessions` of every edge (index 0 is edge-1); 0 for an edge that does not
/// answer (killed).
async fn sessions(c: &Bootstrapped) -> Vec<f64> {
    let mut v = Vec::new();
    for i in 1..=EDGES {
        let text = c.edge_metrics(i).await.unwrap_or_default();
        v.push(metric_value(&text, "edge_rtmpt_sessions").unwrap_or(0.0));
    }
    v
}

/// The RTMPT session ids in HAProxy's log, in order of first appearance: the second
/// field of every `/send`, `/idle` and `/close` path (`option httplog` logs each request
/// line when the request ends).
fn session_ids(c: &Bootstrapped) -> Vec<String> {
    session_ids_in(&c.log("haproxy"))
}

fn session_ids_in(log: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("\"POST /") else { continue };
        let mut fields = rest.split(['/', ' ']);
        if let (Some("send" | "idle" | "close"), Some(id)) = (fields.next(), fields.next()) {
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// The edge (1-based, as `edge-N`) a session id names as its holder: its first two hex
/// digits are the holder's index in `--rtmpt-peers`, which bootstrap.sh lists edge-1 first.
fn holder_of(id: &str) -> u16 {
    let index = id.get(..2).and_then(|h| u16::from_str_radix(h, 16).ok());
    match index {
        Some(i) if i < EDGES && id.len() > 2 => i + 1,
        _ => panic!(
            "session id {id:?} does not start with its holder's index in --rtmpt-peers (0..{EDGES}, 2 hex digits)"
        ),
    }
}

#[test]
fn session_ids_and_holders_come_from_haproxy_s_log() {
    let log = "127.0.0.1:58862 [07/Dec/2026:03:44:08.352] http edges_http/edge-2 0/0/0/20/20 200 2491 - - ---- \
               2/2/1/1/0 0/0 \"POST /open/1 HTTP/1.1\"\n\
               127.0.0.1:58862 [07/Dec/2026:03:44:08.373] http edges_http/edge-3 0/0/0/102/102 200 154 - - ---- \
               2/2/1/1/0 0/0 \"POST /idle/02f087dd47f4d96387b7c6872bc3169ece/55 HTTP/1.1\"\n\
               127.0.0.1:58838 [07/Dec/2026:03:44:08.373] http edges_http/edge-2 0/0/0/103/103 200 154 - - ---- \
               2/2/1/1/0 0/0 \"POST /send/00184083c8ec0892dd4b5ce2f505ce7e7d/33 HTTP/1.1\"\n\
               127.0.0.1:58862 [07/Dec/2026:03:44:08.473] http edges_http/edge-1 0/0/0/102/102 200 154 - - ---- \
               2/2/1/1/0 0/0 \"POST /idle/02f087dd47f4d96387b7c6872bc3169ece/56 HTTP/1.1\"\n\
               127.0.0.1:58862 [07/Dec/2026:03:44:08.473] http edges_http/edge-1 0/0/0/1/1 200 154 - - ---- \
               2/2/1/1/0 0/0 \"GET /send/x/index.m3u8 HTTP/1.1\"";
    let ids = session_ids_in(log);
    assert_eq!(ids, ["02f087dd47f4d96387b7c6872bc3169ece", "00184083c8ec0892dd4b5ce2f505ce7e7d"]);
    assert_eq!(ids.iter().map(|id| holder_of(id)).collect::<Vec<_>>(), [3, 1]);
    assert!(std::panic::catch_unwind(|| holder_of("03ab")).is_err(), "index 3 is a fourth edge");
}

/// The session a client just opened: the first id in HAProxy's log not in `known`.
async fn new_session(c: &Bootstrapped, known: &[String], who: &str) -> String {
    let what = format!("{who}'s RTMPT session in HAProxy's log");
    eventually(Duration::from_secs(20), &what, || async { session_ids(c).into_iter().find(|id| !known.contains(id)) })
        .await
}

/// Starts a client with `start` until its session's holder is an edge `want` accepts (at
/// most `attempts` times, each earlier client stopped); returns it and its holder. After
/// the last attempt, returns the client wherever its session is.
async fn place(
    c: &Bootstrapped,
    who: &str,
    attempts: usize,
    mut start: impl FnMut() -> Proc,
    want: impl Fn(u16) -> bool,
) -> (Proc, u16) {
    for attempt in 1..=attempts {
        let known = session_ids(c);
        let mut p = start();
        let id = new_session(c, &known, who).await;
        let holder = holder_of(&id);
        // For the record: the holder's edge_rtmpt_sessions counts it.
        eprintln!(
            "{who}: session {id} on edge-{holder} (attempt {attempt}); edge_rtmpt_sessions {:?}",
            sessions(c).await
        );
        if want(holder) || attempt == attempts {
            return (p, holder);
        }
        interrupt(&mut p).await;
    }
    unreachable!()
}

/// The stream's owner origin and its epoch, from origin `via`'s `/streams`.
async fn owner_of(c: &Bootstrapped, via: u16, name: &str) -> Option<(u64, u64)> {
    let v = c.admin_get(via, "/streams").await?;
    let e = v["streams"].as_array()?.iter().find(|e| e["app"] == "live" && e["name"] == name)?.clone();
    Some((e["owner"].as_u64()?, e["epoch"].as_u64()?))
}

/// SIGKILLs the owner origin of `live/NAME` and waits for another to take the stream
/// over at a higher epoch; returns the dead owner and when it was killed.
async fn kill_owner(c: &Bootstrapped, name: &str) -> (u64, Instant) {
    let (owner, epoch) = owner_of(c, 1, name).await.expect("the stream's owner");
    let via = (1..=3).find(|i| u64::from(*i) != owner).unwrap();
    let killed = Instant::now();
    c.kill(&format!("origin-{owner}")).await;
    let (moved_to, new_epoch) = eventually(Duration::from_secs(20), "the stream to move", || async {
        owner_of(c, via, name).await.filter(|(o, _)| *o != owner)
    })
    .await;
    assert!(new_epoch > epoch);
    eprintln!("origin-{owner} SIGKILLed; origin-{moved_to} owns the stream after {:?}", killed.elapsed());
    (owner, killed)
}

/// Pins `live/NAME` to an origin that does not lead (through the leader), so that killing
/// the owner is not also an election.
async fn pin_to_a_follower(c: &Bootstrapped, name: &str) -> u16 {
    let leader = eventually(Duration::from_secs(10), "a leader", || async {
        for i in 1..=3 {
            if c.admin_get(i, "/cluster/status").await.is_some_and(|s| s["state"] == "Leader") {
                return Some(i);
            }
        }
        None
    })
    .await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let url = format!("http://{}/pins/live/{name}", c.ports.origin_http(leader));
    let r = reqwest::Client::new()
        .put(url)
        .bearer_auth(c.admin_token())
        .json(&serde_json::json!({ "origin": follower }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "pin: {} {}", r.status(), r.text().await.unwrap_or_default());
    follower
}

/// Waits until the ffmpeg player wrote `more` frames beyond `from`, panicking (with its
/// log) if it exits or stalls for 30 s. Returns when that happened.
async fn keeps_playing(p: &mut Proc, out: &Path, log: &Path, from: usize, more: usize, who: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(p.running(), "{who} exited:\n{}", log_tail(log));
        let n = read_hashes(out).len();
        if n >= from + more {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{who}: {} frames in 30 s after the kill, wanted {more}:\n{}",
            n - from.min(n),
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `edge_rtmpt_*` samples of the live edges, for the record.
async fn rtmpt_metrics(c: &Bootstrapped, dead: &[u16]) -> String {
    let mut out = String::new();
    for i in (1..=EDGES).filter(|i| !dead.contains(i)) {
        let text = c.edge_metrics(i).await.unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("edge_rtmpt_")).collect();
        out += &format!("edge-{i}: {}\n", lines.join("; "));
    }
    out
}

/// ffmpeg publishes over RTMP to edge-1 (never killed). An ffmpeg player over RTMPT
/// through the balancer (its session on another edge) and rtmpdump over RTMPT through it
/// (on the same edge when a few tries get it there). SIGKILL the edge holding the ffmpeg
/// player's session; both play on; SIGKILL the stream's owner origin; both play on; every
/// frame each got is the source's, once, in order, with no gap across either kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_players_lose_no_frame_when_their_edge_then_the_owner_origin_die() {
    require("haproxy");
    require("ffmpeg");
    require("rtmpdump");
    let _serial = SERIAL.lock().await;
    let (c, _) = Bootstrapped::start(EDGES);
    let dir = c.dir.path().to_owned();
    let source = source(&dir);
    let reference = reference(&source, &dir);
    let owner = pin_to_a_follower(&c, "x").await;

    let publisher_log = dir.join("publisher.log");
    let mut publisher =
        publish_file(&source, &format!("rtmp://{}/live/x", c.ports.edge_rtmp(1)), publisher_log.clone());
    eventually(Duration::from_secs(20), "the stream to be published", || owner_of(&c, 1, "x")).await;
    assert_eq!(owner_of(&c, 1, "x").await.unwrap().0, u64::from(owner), "the stream on its pinned origin");
    assert_eq!(sessions(&c).await, vec![0.0; EDGES as usize], "an RTMP publisher holds no RTMPT session");

    let url = format!("rtmpt://{}/live/x", c.ports.lb_http());
    let (ffmpeg_out, ffmpeg_log) = (dir.join("ffmpeg-player.hash"), dir.join("ffmpeg-player.log"));
    let (mut player, holder) =
        place(&c, "the ffmpeg player", 6, || play_hashes(&url, &ffmpeg_out, &ffmpeg_log), |edge| edge != 1).await;
    assert_ne!(holder, 1, "six sessions in a row on edge-1, the publisher's edge");
    let (dump, dump_log) = (dir.join("rtmpdump.flv"), dir.join("rtmpdump.log"));
    let (mut rtmpdump, dump_holder) =
        place(&c, "rtmpdump", 5, || rtmpdump_plays(&url, &dump, &dump_log), |edge| edge == holder).await;

    // Both play before any fault.
    eventually(Duration::from_secs(20), "the ffmpeg player's first 60 frames", || async {
        (read_hashes(&ffmpeg_out).len() > 60).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "rtmpdump's first 50 KB", || async {
        (std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0) > 50_000).then_some(())
    })
    .await;
    let stop_watch = CancellationToken::new();
    let ffmpeg_arrivals = watch_growth(ffmpeg_out.clone(), stop_watch.clone());
    let dump_arrivals = watch_growth(dump.clone(), stop_watch.clone());
    let watched_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SIGKILL the edge holding the ffmpeg player's session.
    let at_edge_kill = read_hashes(&ffmpeg_out).len();
    let dump_at_kill = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
    let edge_killed = Instant::now();
    c.kill(&format!("edge-{holder}")).await;
    eprintln!("edge-{holder} (holding the ffmpeg player's session; rtmpdump's is on edge-{dump_holder}) SIGKILLed");
    let edge_resumed =
        keeps_playing(&mut player, &ffmpeg_out, &ffmpeg_log, at_edge_kill, FIVE_SECONDS, "the ffmpeg player").await;
    assert!(rtmpdump.running(), "rtmpdump exited after edge-{holder}'s death:\n{}", log_tail(&dump_log));
    let grown = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0) - dump_at_kill;
    assert!(grown > 50_000, "rtmpdump wrote {grown} bytes in the 5 s after edge-{holder}'s death");
    // The buddy's hub had the history to resume from (its warm lease), not just the GOP:
    // without it the play starts at the next keyframe, which skips frames only when the
    // client was behind it (one run in three), so the log line is the sharper check.
    let takeovers: Vec<String> = (1..=EDGES)
        .flat_map(|e| c.log(&format!("edge-{e}")).lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.contains("play resumed after a takeover"))
        .collect();
    assert!(
        !takeovers.is_empty() && takeovers.iter().all(|l| l.contains("resumed=true")),
        "the takeover's play resumed from the buddy's history: {takeovers:#?}"
    );
    eprintln!("after edge-{holder}'s death:\n{}", rtmpt_metrics(&c, &[holder]).await);

    // SIGKILL the stream's owner origin; another takes the stream over.
    let at_owner_kill = read_hashes(&ffmpeg_out).len();
    let (owner, owner_killed) = kill_owner(&c, "x").await;
    let owner_resumed =
        keeps_playing(&mut player, &ffmpeg_out, &ffmpeg_log, at_owner_kill, FIVE_SECONDS, "the ffmpeg player").await;
    assert!(rtmpdump.running(), "rtmpdump exited after origin-{owner}'s death:\n{}", log_tail(&dump_log));

    assert!(publisher.running(), "the publisher (ffmpeg over RTMP) exited:\n{}", log_tail(&publisher_log));
    interrupt(&mut player).await;
    interrupt(&mut rtmpdump).await;
    stop_watch.cancel();
    let (ffmpeg_arrivals, dump_arrivals) = (ffmpeg_arrivals.await.unwrap(), dump_arrivals.await.unwrap());

    let n = assert_run_of(&reference, &read_hashes(&ffmpeg_out), "the ffmpeg player (RTMPT)");
    let m = assert_run_of(&reference, &flv_hashes(&dump, &dir), "rtmpdump (RTMPT)");
    let quiet = |times: &[Instant]| longest_gap(times, watched_from, edge_killed);
    let around = |times: &[Instant], from: Instant, to: Instant| longest_gap(times, from, to);
    eprintln!(
        "every frame once and in order: ffmpeg {n}, rtmpdump {m}. Longest stall (arrival gap) at the ffmpeg player: \
         {:?} before the kills, {:?} around edge-{holder}'s death, {:?} around origin-{owner}'s; at rtmpdump \
         (its file is written through stdio's 4 KB buffer): {:?}, {:?}, {:?}",
        quiet(&ffmpeg_arrivals),
        around(&ffmpeg_arrivals, edge_killed, edge_resumed),
        around(&ffmpeg_arrivals, owner_killed, owner_resumed),
        quiet(&dump_arrivals),
        around(&dump_arrivals, edge_killed, edge_resumed),
        around(&dump_arrivals, owner_killed, owner_resumed),
    );
}

/// What the in-process RTMP player has seen so far.
#[derive(Debug, Default)]
struct Seen {
    /// (arrival, sha256 of the packet after its 5-byte AVC header) per video frame.
    frames: Vec<(Instant, String)>,
    disconnected: Option<String>,
}

/// Plays `name` from `edge` over RTMP until `stop`, hashing video packets as ffmpeg's
/// framehash does (`tests/failover.rs`).
fn probe(edge: std::net::SocketAddr, name: &str, seen: Arc<Mutex<Seen>>, stop: CancellationToken) -> JoinHandle<()> {
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut client = RtmpClient::connect(edge, "live").await.expect("the probe connects");
        client.play(&name).await.expect("the probe plays");
        loop {
            let event = tokio::select! {
                e = client.next_event() => e,
                _ = stop.cancelled() => break,
            };
            match event {
                Ok(Some(ClientEvent::Video { payload, .. })) if payload.len() > 5 && payload[1] == 1 => {
                    let hash: String = Sha256::digest(&payload[5..]).iter().map(|b| format!("{b:02x}")).collect();
                    seen.lock().unwrap().frames.push((Instant::now(), hash));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    seen.lock().unwrap().disconnected = Some("closed by the edge".into());
                    break;
                }
                Err(e) => {
                    seen.lock().unwrap().disconnected = Some(e.to_string());
                    break;
                }
            }
        }
    })
}

/// ffmpeg publishes over RTMPT through the balancer; an RTMP player on an edge that does
/// not hold the publisher's session. SIGKILL the edge holding it: the publisher goes on
/// and the player gets every frame once, in order, none missing across the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmpt_publisher_loses_no_frame_when_its_edge_then_the_owner_origin_die() {
    require("haproxy");
    require("ffmpeg");
    let _serial = SERIAL.lock().await;
    let (c, _) = Bootstrapped::start(EDGES);
    let dir = c.dir.path().to_owned();
    let source = source(&dir);
    let reference = reference(&source, &dir);

    let publisher_log = dir.join("publisher.log");
    // On an origin that does not lead, so killing it later is not also an election.
    pin_to_a_follower(&c, "y").await;
    let url = format!("rtmpt://{}/live/y", c.ports.lb_http());
    let mut publisher = publish_file(&source, &url, publisher_log.clone());
    let id = new_session(&c, &[], "the publisher").await;
    let holder = holder_of(&id);
    eprintln!("the publisher: session {id} on edge-{holder}");
    eventually(Duration::from_secs(20), "the stream to be published", || owner_of(&c, 1, "y")).await;

    let watcher = (1..=EDGES).find(|i| *i != holder).unwrap();
    let addr = c.ports.edge_rtmp(watcher).parse().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    let probe = probe(addr, "y", seen.clone(), stop.clone());
    let frames = || seen.lock().unwrap().frames.len();
    eventually(Duration::from_secs(20), "the RTMP player's first 60 frames", || async {
        (frames() > 60).then_some(())
    })
    .await;
    let watched_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let at_kill = frames();
    let killed = Instant::now();
    c.kill(&format!("edge-{holder}")).await;
    eprintln!("edge-{holder} (holding the publisher's session) SIGKILLed; the player is on edge-{watcher}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while frames() < at_kill + FIVE_SECONDS {
        assert!(publisher.running(), "the publisher exited after edge-{holder}'s death:\n{}", log_tail(&publisher_log));
        let gone = seen.lock().unwrap().disconnected.clone();
        assert_eq!(gone, None, "the RTMP player on edge-{watcher} was disconnected");
        assert!(
            Instant::now() < deadline,
            "the player got {} frames in 30 s after edge-{holder}'s death; the publisher's log:\n{}",
            frames() - at_kill,
            log_tail(&publisher_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = Instant::now();
    eprintln!("after edge-{holder}'s death:\n{}", rtmpt_metrics(&c, &[holder]).await);

    // Then SIGKILL the stream's owner origin: the session's new holder moves the
    // publication to the next owner, as for any RTMP publisher.
    let at_owner_kill = frames();
    let (owner, owner_killed) = kill_owner(&c, "y").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while frames() < at_owner_kill + FIVE_SECONDS {
        assert!(
            publisher.running(),
            "the publisher exited after origin-{owner}'s death:\n{}",
            log_tail(&publisher_log)
        );
        assert!(
            Instant::now() < deadline,
            "the player got {} frames in 30 s after origin-{owner}'s death",
            frames() - at_owner_kill
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let owner_resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(publisher.running(), "the publisher exited:\n{}", log_tail(&publisher_log));
    stop.cancel();
    probe.await.unwrap();
    interrupt(&mut publisher).await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.disconnected, None, "the RTMP player stayed connected");
    let hashes: Vec<String> = seen.frames.iter().map(|(_, h)| h.clone()).collect();
    let times: Vec<Instant> = seen.frames.iter().map(|(t, _)| *t).collect();
    let n = assert_run_of(&reference, &hashes, "the RTMP player");
    eprintln!(
        "every frame once and in order: {n}. Longest stall (arrival gap) at the RTMP player: {:?} before the kills, \
         {:?} around edge-{holder}'s death, {:?} around origin-{owner}'s",
        longest_gap(&times, watched_from, killed),
        longest_gap(&times, killed, resumed),
        longest_gap(&times, owner_killed, owner_resumed),
    );
}
