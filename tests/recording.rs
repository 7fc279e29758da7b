//! Recordings that survive failover (issue 16, phase 1), with real processes: ffmpeg
//! publishes a pre-encoded file through an edge while `ctl record` has the stream
//! recorded; its owner origin is SIGKILLed mid-recording and restarted, and a planned
//! move gives the stream back to it. The recording,
//! read back as one FLV file through the admin API, must hold every video frame the
//! publisher sent, once and in order (packet hashes compared with the source's), with
//! increasing timestamps; and still read whole from the replicas once one origin's
//! piece files are gone; bad ids are refused; the retention bound deletes it. Played
//! through an edge's VOD cache (`docs/vod.md`) as `.flv`, as HLS VOD and over RTMP
//! (rtmpdump) it holds the same frames; and once an origin holding pieces dies with its whole data directory, a
//! fresh edge (cold cache, that origin asked first) still plays it whole from the
//! other holders. The long variant (`#[ignore]`d, `scripts/vod-failover.sh`) records
//! a minute across two owner SIGKILLs and plays it back the same way.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use edges::{noisy_source as source, packets, publish_file, read_framehash, EdgeProc};
use reqwest::Method;
use serde_json::Value;

async fn owner_of(c: &Cluster, via: u64, name: &str) -> Option<(u64, u64)> {
    let (s, v) = c.call(via, Method::GET, "/streams", None, &[]).await.ok()?;
    let e = v["streams"].as_array()?.iter().find(|e| e["app"] == "live" && e["name"] == name)?.clone();
    s.is_success().then_some(())?;
    Some((e["owner"].as_u64()?, e["epoch"].as_u64()?))
}

/// The recording of live/`name`, as `GET /recordings/{id}` shows it.
async fn recording(c: &Cluster, via: u64, name: &str) -> Option<Value> {
    let (s, v) = c.call(via, Method::GET, "/recordings", None, &[]).await.ok()?;
    s.is_success().then_some(())?;
    let id = v["recordings"].as_array()?.iter().find(|r| r["app"] == "live" && r["name"] == name)?["id"].as_u64()?;
    let (s, v) = c.call(via, Method::GET, &format!("/recordings/{id}"), None, &[]).await.ok()?;
    s.is_success().then_some(v)
}

/// Checks that `got` is `reference` from its first frame on, looped: none missing,
/// none twice, in order, with increasing decode timestamps.
fn assert_whole_from_the_start(reference: &[String], got: &[(i64, String)]) {
    assert!(got.len() > 150, "the recording holds only {} video frames", got.len());
    for (i, (_, h)) in got.iter().enumerate() {
        let want = &reference[i % reference.len()];
        if h != want {
            let at = reference.iter().position(|r| r == h);
            panic!("recorded frame {i} of {} is source frame {at:?}, expected {}", got.len(), i % reference.len());
        }
    }
    for pair in got.windows(2) {
        assert!(pair[1].0 > pair[0].0, "timestamps go {} then {}", pair[0].0, pair[1].0);
    }
}

/// `GET url` of an edge's VOD route: the body, once the recording plays (409 while its
/// publisher's claim outlives the last piece for a moment).
async fn vod_body(url: &str) -> Vec<u8> {
    eventually(Duration::from_secs(10), "the edge to serve the recording", || async {
        let res = reqwest::get(url).await.ok()?;
        match res.status().as_u16() {
            200 => Some(res.bytes().await.unwrap().to_vec()),
            409 => None,
            other => panic!("GET {url}: {other} {}", res.text().await.unwrap_or_default()),
        }
    })
    .await
}

/// Reads recording `id` whole through `ctl recordings get` (any origin) into
/// `recording.flv` and checks it holds every frame of `reference` once, in order, from
/// the start: everything ffmpeg sent in `published_for`, but for its start-up and what
/// was in flight at the end (ffmpeg's and the edge's buffers), two seconds at 30 fps.
fn read_whole(
    c: &Cluster,
    id: u64,
    reference: &[String],
    published_for: Duration,
    dir: &Path,
) -> (PathBuf, Vec<(i64, String)>) {
    let file = dir.join("recording.flv");
    let (ok, out, err) = c.ctl(&[1, 2, 3], &["recordings", "get", &id.to_string(), file.to_str().unwrap()]);
    assert!(ok, "ctl recordings get: {out} {err}");
    let got = packets(&file, &dir.join("recording.hash"));
    assert_whole_from_the_start(reference, &got);
    assert!(
        got.len() as f64 >= (published_for.as_secs_f64() - 2.0) * 30.0,
        "{} frames recorded in {published_for:?} of publishing",
        got.len()
    );
    (file, got)
}

/// Plays recording `id` through `edge`'s VOD cache as `.flv`, as HLS VOD and over RTMP
/// (rtmpdump, and ffmpeg to the end of the play),
/// and checks that each holds every frame of `reference` once, in order, from the
/// start, and the same frames every way: the `.flv` bytes and the HLS VOD packets.
async fn play_through(edge: &EdgeProc, id: u64, reference: &[String], dir: &Path) -> (Vec<u8>, Vec<(i64, String)>) {
    let flv_url = format!("http://{}/vod/{id}.flv", edge.http);
    let played = vod_body(&flv_url).await;
    // ffmpeg plays it over RTMP meanwhile: the edge sends 10 s ahead of real time at
    // most, so this takes the recording's length less 10 s.
    let rtmp_url = format!("rtmp://{}/vod/{id}", edge.rtmp);
    let by_ffmpeg = dir.join(format!("{}-rtmp-ffmpeg.hash", edge.name));
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-rtmp_buffer", "100000", "-i", &rtmp_url])
        .args(["-map", "0:v", "-c", "copy", "-f", "framehash", "-hash", "sha256"])
        .arg(&by_ffmpeg)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let flv = packets(&flv_url, &dir.join(format!("{}-flv.hash", edge.name)));
    assert_whole_from_the_start(reference, &flv);
    let hls =
        packets(format!("http://{}/vod/{id}/index.m3u8", edge.http), &dir.join(format!("{}-hls.hash", edge.name)));
    assert_whole_from_the_start(reference, &hls);
    assert_eq!(hls.len(), flv.len(), "HLS VOD holds every frame of the .flv");
    // RTMP VOD: rtmpdump downloads it, pausing and resuming at each buffer's worth the
    // edge sends ahead (its exit status says "incomplete" below 99.9 % of the
    // duration, which the last frame's timestamp may be: the frames decide).
    let saved = dir.join(format!("{}-rtmp.flv", edge.name));
    let rtmpdump = Command::new("rtmpdump")
        .args(["-q", "-r", &format!("rtmp://{}/vod/{id}", edge.rtmp), "-o"])
        .arg(&saved)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    let rtmp = packets(&saved, &dir.join(format!("{}-rtmp.hash", edge.name)));
    assert_whole_from_the_start(reference, &rtmp);
    assert_eq!(rtmp.len(), flv.len(), "RTMP VOD holds every frame of the .flv (rtmpdump: {rtmpdump})");
    let status = tokio::task::spawn_blocking(move || ffmpeg.wait()).await.unwrap().unwrap();
    assert!(status.success(), "ffmpeg playing {rtmp_url}: {status}");
    let by_ffmpeg = read_framehash(&by_ffmpeg);
    assert_whole_from_the_start(reference, &by_ffmpeg);
    assert_eq!(by_ffmpeg.len(), flv.len(), "ffmpeg over RTMP VOD gets every frame of the .flv");
    (played, hls)
}

/// The position in an edge's `--origins` its VOD cache asks first for `id` (FNV-1a of
/// the id, `docs/vod.md`), so a test can put a dead origin there.
fn asked_first(id: u64, origins: usize) -> usize {
    let hash =
        id.to_string().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % origins as u64) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_survives_its_owners_sigkill_and_the_loss_of_one_copy() {
    let mut c = Cluster::start(3).await;
    let dir = c.dir.path().to_owned();
    // The stream goes to a follower, so killing its owner is not also a leader change.
    let leader = c.leader(None).await.expect("a leader");
    let first_owner = (1..=3).find(|i| *i != leader).unwrap();
    let body = serde_json::json!({ "origin": first_owner });
    let (s, v) = c.call(leader, Method::PUT, "/pins/live/rec", Some(&body), &[]).await.unwrap();
    assert!(s.is_success(), "{v}");
    let (ok, out, err) = c.ctl(&[1, 2, 3], &["record", "live/rec", "on"]);
    assert!(ok, "ctl record: {out} {err}");
    let (ok, out, _) = c.ctl(&[1, 2, 3], &["record"]);
    assert!(ok && out.contains("\"rec\""), "the rule is listed: {out}");

    let source = source(&dir);
    let reference: Vec<String> = packets(&source, &dir.join("reference.hash")).into_iter().map(|(_, h)| h).collect();
    assert!(reference.len() >= 590, "{} reference frames", reference.len());
    let cache = dir.join("edge-1-vod");
    let edge = EdgeProc::start(&c, "edge-1", &["--vod-cache-dir", cache.to_str().unwrap()]).await;
    let started = Instant::now();
    let mut publisher = publish_file(&source, &edge.rtmp_url("live", "rec"), dir.join("publisher.log"));
    let first = eventually(Duration::from_secs(25), "the recording to start", || recording(&c, leader, "rec")).await;
    assert_eq!(first["pieces"][0]["owner"], first_owner, "{first}");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // SIGKILL the owner mid-recording: the new owner continues the same recording.
    c.kill(first_owner);
    let killed_at = started.elapsed();
    let (new_owner, _) = eventually(Duration::from_secs(10), "the stream to move", || async {
        owner_of(&c, leader, "rec").await.filter(|(o, _)| *o != first_owner)
    })
    .await;
    let two = eventually(Duration::from_secs(10), "a second piece", || async {
        recording(&c, leader, "rec").await.filter(|r| r["pieces"].as_array().is_some_and(|p| p.len() == 2))
    })
    .await;
    assert_eq!(two["pieces"][1]["owner"], new_owner, "{two}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The killed origin comes back and finishes its torn piece from its disk; then a
    // planned move hands the stream back to it: a third piece of the same recording.
    c.spawn(first_owner);
    let to = first_owner.to_string();
    eventually(Duration::from_secs(20), "a planned move back to the restarted origin", || async {
        let (ok, _, err) = c.ctl(&[1, 2, 3], &["streams", "move", "live/rec", "--to", &to]);
        if !ok {
            eprintln!("move: {}", err.trim());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ok.then_some(())
    })
    .await;
    let three = eventually(Duration::from_secs(10), "a third piece", || async {
        recording(&c, leader, "rec").await.filter(|r| r["pieces"].as_array().is_some_and(|p| p.len() == 3))
    })
    .await;
    assert_eq!(three["pieces"][2]["owner"], first_owner, "{three}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published_for = started.elapsed();
    publisher.0.kill().unwrap();
    let _ = publisher.0.wait();

    let done = eventually(Duration::from_secs(20), "every piece finished and copied to a second origin", || async {
        recording(&c, leader, "rec").await.filter(|r| {
            r["pieces"].as_array().is_some_and(|ps| {
                ps.len() == 3 && ps.iter().all(|p| p["finished"] == true && p["holders"].as_array().unwrap().len() == 2)
            })
        })
    })
    .await;
    let id = done["id"].as_u64().unwrap();
    eprintln!("recording {id}: {done}");
    for piece in done["pieces"].as_array().unwrap() {
        // A new owner's piece takes the edge's re-sent frames in one burst: its reader
        // must not skip any of them.
        assert_eq!(piece["dropped"], 0, "no frame skipped by a writer behind: {piece}");
    }
    let metric = |id: u64, series: &'static str| {
        let c = &c;
        async move {
            let text = c.call(id, Method::GET, "/metrics", None, &[]).await.unwrap().1;
            edges::metric_value(text.as_str().unwrap(), series).unwrap_or(0.0)
        }
    };
    let written = metric(new_owner, "raftcast_recording_written_bytes_total").await;
    assert_eq!(written as u64, done["pieces"][1]["bytes"].as_u64().unwrap(), "the new owner counts what it wrote");
    let mut copies = 0.0;
    for i in 1..=3 {
        copies += metric(i, "raftcast_recording_copies_total").await;
    }
    assert_eq!(copies, 3.0, "one copy of each piece");

    check_dvr(&c, &done).await;

    // Read it whole through ctl, from any origin.
    let (file, got) = read_whole(&c, id, &reference, published_for, &dir);
    let p = &done["pieces"];
    let overlap = |a: usize| p[a]["last_ts"].as_i64().unwrap() - p[a + 1]["first_ts"].as_i64().unwrap();
    eprintln!(
        "recorded {} video frames in order, once each, across the owner's SIGKILL at {killed_at:?} \
         and a planned move (pieces: ts {}..{}, {}..{}, {}..{}; overlaps {} and {} ms joined away)",
        got.len(),
        p[0]["first_ts"],
        p[0]["last_ts"],
        p[1]["first_ts"],
        p[1]["last_ts"],
        p[2]["first_ts"],
        p[2]["last_ts"],
        overlap(0),
        overlap(1),
    );

    // Played back through the edge, from its VOD cache, as `.flv` (the origins' bytes)
    // and as HLS VOD: every frame once.
    let (played, hls) = play_through(&edge, id, &reference, &dir).await;
    assert!(played == std::fs::read(&file).unwrap(), "the edge's .flv is the origins' file");
    assert_eq!(hls.len(), got.len(), "HLS VOD holds every frame of the file");

    // Lose the first owner's files (two of the three pieces): the recording still reads
    // whole, through that very origin, from the replicas.
    for entry in std::fs::read_dir(c.data_dir(first_owner).join("recordings")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let again = dir.join("again.flv");
    let (ok, out, err) = c.ctl(&[first_owner], &["recordings", "get", &id.to_string(), again.to_str().unwrap()]);
    assert!(ok, "ctl recordings get after the loss: {out} {err}");
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&file).unwrap(), "the same file from the replicas");
    // And the origin fetches again the pieces the catalog says it holds.
    let pieces_dir = c.data_dir(first_owner).join("recordings");
    let held = p.as_array().unwrap().iter().filter(|p| p["holders"].as_array().unwrap().contains(&first_owner.into()));
    let held: Vec<PathBuf> = held.map(|p| pieces_dir.join(format!("{}.flv", p["epoch"]))).collect();
    eventually(Duration::from_secs(10), "the lost copies to be fetched again", || {
        let back = held.iter().all(|f| f.exists());
        async move { back.then_some(()) }
    })
    .await;

    // That origin dies with its disk (its whole data directory): a fresh edge, cold
    // cache, asks it first and plays the recording from the other holders, whole.
    assert!(!held.is_empty(), "origin {first_owner} holds pieces: {done}");
    c.kill(first_owner);
    std::fs::remove_dir_all(c.data_dir(first_owner)).unwrap();
    let mut order: Vec<u64> = (1..=3).filter(|i| *i != first_owner).collect();
    order.insert(asked_first(id, 3), first_owner);
    let cold = dir.join("edge-2-vod");
    let fresh = EdgeProc::start_with_origins(&c, "edge-2", &order, &["--vod-cache-dir", cold.to_str().unwrap()]).await;
    let (replayed, replayed_hls) = play_through(&fresh, id, &reference, &dir).await;
    assert!(replayed == played, "the same {} bytes from the replicas ({})", played.len(), replayed.len());
    let fetched = fresh.metric("raftcast_edge_vod_cache_fetched_bytes_total").await;
    assert_eq!(fetched, played.len() as f64, "fetched once, whole, past the dead origin");
    assert!(replayed_hls == hls, "the same HLS VOD: {} frames, {} before", replayed_hls.len(), hls.len());

    // Hostile and unknown ids.
    for (path, status) in [
        ("/recordings/999999999", 404),
        ("/recordings/999999999.flv", 404),
        ("/recordings/..%2F..%2Fcluster-secret", 400),
        ("/recordings/1.mp4", 400),
        ("/recordings/-1.flv", 400),
    ] {
        let (s, v) = c.call(leader, Method::GET, path, None, &[]).await.unwrap();
        assert_eq!(s.as_u16(), status, "{path}: {v}");
    }
    let internal = c.url(leader, &format!("/internal/recordings/{}", p[0]["epoch"]));
    let res = reqwest::get(&internal).await.unwrap();
    assert_eq!(res.status().as_u16(), 401, "pieces are for members only");
    for path in ["/recordings".to_owned(), format!("/recordings/{id}.flv"), "/recording-rules".to_owned()] {
        let res = reqwest::get(c.url(leader, &path)).await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{path} needs the admin token");
    }
    let (ok, _, err) = c.ctl(&[1, 2, 3], &["recordings", "show", "999999999"]);
    assert!(!ok && err.contains("404"), "{err}");

    // Retention: with at most one byte kept, the leader deletes the finished recording.
    let (ok, out, err) = c.ctl(&[1, 2, 3], &["recordings", "retention", "--set", "--max-bytes", "1"]);
    assert!(ok && out.contains("\"max_bytes\": 1"), "{out} {err}");
    eventually(Duration::from_secs(10), "retention to delete the recording", || async {
        let (s, _) = c.call(leader, Method::GET, &format!("/recordings/{id}"), None, &[]).await.ok()?;
        (s.as_u16() == 404).then_some(())
    })
    .await;
    let (ok, _, err) = c.ctl(&[1, 2, 3], &["recordings", "delete", &id.to_string()]);
    assert!(!ok && err.contains("404"), "deleted already: {err}");
    drop((edge, fresh));
}

/// Live rewind at the origins (`docs/vod.md`, "Live rewind"): every origin answers the
/// stream's DVR index the same, from its own pieces and the others' (merged across the
/// owner changes): contiguous segments lasting about as long as the recording; one
/// segment's frames are given back; strangers and garbage are refused.
async fn check_dvr(c: &Cluster, done: &Value) {
    let get = |id: u64, path: String, secret: bool| async move {
        let mut req = reqwest::Client::new().get(c.url(id, &path));
        if secret {
            req = req.header(raftcast_raft::rpc::SECRET_HEADER, &c.secret);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.bytes().await.unwrap())
    };
    let mut bodies = Vec::new();
    for id in 1..=3 {
        let (status, body) = get(id, "/internal/dvr/live/rec?from=0".into(), true).await;
        assert_eq!(status, 200, "origin {id}");
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every origin lists the same segments");
    let body = &bodies[0];
    let count = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 4 + count * 36);
    let entry = |i: usize| {
        let e = &body[4 + i * 36..4 + (i + 1) * 36];
        (u64::from_be_bytes(e[..8].try_into().unwrap()), u32::from_be_bytes(e[8..12].try_into().unwrap()))
    };
    let segments: Vec<(u64, u32)> = (0..count).map(entry).collect();
    assert!(segments.len() >= 3, "{segments:?}");
    assert!(segments.windows(2).all(|w| w[1].0 == w[0].0 + 1), "contiguous msns: {segments:?}");
    let listed: i64 = segments.iter().map(|s| i64::from(s.1)).sum();
    let longest = segments.iter().map(|s| i64::from(s.1)).max().unwrap();
    let p = &done["pieces"];
    let recorded = p[2]["last_ts"].as_i64().unwrap() - p[0]["first_ts"].as_i64().unwrap();
    eprintln!("DVR: {count} segments, {listed} ms listed of {recorded} ms recorded (longest {longest} ms)");
    assert!(listed <= recorded + 500 && listed >= recorded - 2 * longest - 1500, "{listed} ms of {recorded} ms");
    // From a later msn on: the tail of the same list.
    let from = segments[count / 2].0;
    let (status, tail) = get(1, format!("/internal/dvr/live/rec?from={from}"), true).await;
    assert_eq!(status, 200);
    assert_eq!(&tail[4..], &body[4 + (count / 2) * 36..], "from {from} on");
    // One segment's frames: a sane count, then the frames.
    let (status, frames) = get(2, format!("/internal/dvr/live/rec/{from}"), true).await;
    assert_eq!(status, 200);
    let n = u32::from_be_bytes(frames[..4].try_into().unwrap());
    assert!(n > 10 && n < 1 << 16 && frames.len() > 1000, "{n} frames in {} bytes", frames.len());
    for (path, secret, status) in [
        ("/internal/dvr/live/rec?from=0".to_owned(), false, 401),
        (format!("/internal/dvr/live/rec/{from}"), false, 401),
        ("/internal/dvr/live/rec?from=-1".to_owned(), true, 400),
        ("/internal/dvr/live/rec/1x".to_owned(), true, 400),
        ("/internal/dvr/live/..%2Frec?from=0".to_owned(), true, 400),
        ("/internal/dvr/live/nobody?from=0".to_owned(), true, 404),
        ("/internal/dvr/live/rec/1".to_owned(), true, 404),
        (format!("/internal/recordings/{}/dvr?from=x", p[0]["epoch"]), true, 400),
        ("/internal/recordings/999999/dvr/1".to_owned(), true, 404),
    ] {
        assert_eq!(get(3, path.clone(), secret).await.0, status, "{path}");
    }
}

/// The long variant, nightly-style (`scripts/vod-failover.sh`): a minute of the looped
/// source recorded while its owner is SIGKILLed twice, at about 15 s and 35 s (each
/// killed origin restarted once the stream has moved, so the cluster keeps three),
/// then played through an edge as `.flv`, as HLS VOD and over RTMP: every frame once, in order,
/// with increasing timestamps (the source's frames repeat every 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records for a minute: scripts/vod-failover.sh runs it"]
async fn a_minute_recorded_across_two_owner_sigkills_plays_whole_through_an_edge() {
    let test_started = Instant::now();
    let mut c = Cluster::start(3).await;
    let dir = c.dir.path().to_owned();
    let (ok, out, err) = c.ctl(&[1, 2, 3], &["record", "live/long", "on"]);
    assert!(ok, "ctl record: {out} {err}");
    let source = source(&dir);
    let reference: Vec<String> = packets(&source, &dir.join("reference.hash")).into_iter().map(|(_, h)| h).collect();
    let cache = dir.join("edge-1-vod");
    let edge = EdgeProc::start(&c, "edge-1", &["--vod-cache-dir", cache.to_str().unwrap()]).await;
    let started = Instant::now();
    let mut publisher = publish_file(&source, &edge.rtmp_url("live", "long"), dir.join("publisher.log"));
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(25), "the recording to start", || recording(&c, leader, "long")).await;

    // Whichever origin owns the stream is SIGKILLed at about 15 s and 35 s (the
    // leader, too, if it is the owner); it comes back once the stream has moved.
    let mut kills = Vec::new();
    for at in [15, 35] {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + Duration::from_secs(at))).await;
        let leader = c.wait_leader(None, Duration::from_secs(10)).await;
        let (owner, _) = owner_of(&c, leader, "long").await.expect("the stream has an owner");
        c.kill(owner);
        kills.push((owner, started.elapsed()));
        let leader = c.wait_leader(Some(owner), Duration::from_secs(10)).await;
        eventually(Duration::from_secs(10), "the stream to move", || async {
            owner_of(&c, leader, "long").await.filter(|(o, _)| *o != owner)
        })
        .await;
        c.spawn(owner);
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + Duration::from_secs(60))).await;
    let published_for = started.elapsed();
    publisher.0.kill().unwrap();
    let _ = publisher.0.wait();

    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let done = eventually(Duration::from_secs(30), "every piece finished and copied to a second origin", || async {
        recording(&c, leader, "long").await.filter(|r| {
            r["pieces"].as_array().is_some_and(|ps| {
                ps.len() >= 3 && ps.iter().all(|p| p["finished"] == true && p["holders"].as_array().unwrap().len() == 2)
            })
        })
    })
    .await;
    let id = done["id"].as_u64().unwrap();
    let pieces = done["pieces"].as_array().unwrap();
    for piece in pieces {
        assert_eq!(piece["dropped"], 0, "no frame skipped by a writer behind: {piece}");
    }

    // The origins' file, then the same through the edge as `.flv` and as HLS VOD.
    let (file, got) = read_whole(&c, id, &reference, published_for, &dir);
    let (played, hls) = play_through(&edge, id, &reference, &dir).await;
    assert!(played == std::fs::read(&file).unwrap(), "the edge's .flv is the origins' file");
    assert_eq!(hls.len(), got.len(), "HLS VOD holds every frame of the file");
    let playlist = reqwest::get(format!("http://{}/vod/{id}/index.m3u8", edge.http)).await.unwrap();
    let segments = playlist.text().await.unwrap().lines().filter(|l| l.ends_with(".m4s")).count();

    eprintln!(
        "recorded {} video frames ({:.1} loops of the {}-frame source) in {published_for:?} of publishing, \
         owners SIGKILLed: {}",
        got.len(),
        got.len() as f64 / reference.len() as f64,
        reference.len(),
        kills.iter().map(|(o, t)| format!("origin {o} at {t:.1?}")).collect::<Vec<_>>().join(", "),
    );
    for p in pieces {
        eprintln!(
            "  piece {}: owner {}, holders {}, {} frames, {} bytes, ts {}..{}",
            p["epoch"], p["owner"], p["holders"], p["frames"], p["bytes"], p["first_ts"], p["last_ts"]
        );
    }
    eprintln!(
        "played through {}: .flv {} bytes, every frame once; HLS VOD {} frames in {segments} segments; RTMP VOD the same frames; \
         test took {:.1?}",
        edge.name,
        played.len(),
        hls.len(),
        test_started.elapsed()
    );
}
