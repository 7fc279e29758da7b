//! Edges with real processes and real clients: ffmpeg publishes through one edge,
//! ffprobe, rtmpdump, an ffmpeg stream copy and HTTP-FLV play from the other, through
//! the stream's owner origin.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{eventually, Cluster};
use edges::{ffmpeg_publish, ffprobe_video_packets, require, EdgeProc};
use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth::{self, StampClock, StreamShape, Synth, SynthFrame};
use raftcast::rtmp::chunk::{encode_standalone, RawMessage};
use raftcast::rtmp::handshake::{Handshake, Progress};
use raftcast::rtmp::session::{ClientConfig, ClientEvent};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Waits until `GET /streams` lists `app/name` and returns its entry.
async fn stream_entry(c: &Cluster, app: &str, name: &str) -> serde_json::Value {
    // Origin 2 where there is one (not the first leader), else the only one.
    let via = if c.origins.contains_key(&2) { 2 } else { 1 };
    eventually(Duration::from_secs(15), "the stream to be claimed", || async {
        let (s, v) = c.call(via, Method::GET, "/streams", None, &[]).await.ok()?;
        if !s.is_success() {
            return None;
        }
        v["streams"].as_array()?.iter().find(|e| e["app"] == app && e["name"] == name).cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_on_one_edge_and_ffprobe_rtmpdump_and_http_flv_play_from_the_other() {
    require("ffmpeg");
    require("rtmpdump");
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let mut ffmpeg = ffmpeg_publish(&edge1.rtmp_url("live", "test"), c.dir.path().join("ffmpeg.log"));

    let entry = stream_entry(&c, "live", "test").await;
    assert_eq!(entry["edge"], "edge-1", "{entry}");
    // Probe only once media flows (an encoder on a busy machine may take a while to
    // send its first frames after its publish is accepted).
    eventually(Duration::from_secs(20), "the owner to receive frames", || async {
        let e = stream_entry(&c, "live", "test").await;
        (e["publishing"] == true && e["frames_in"].as_u64().unwrap_or(0) > 30).then_some(())
    })
    .await;
    let owner = entry["owner"].as_u64().expect("an owner");
    assert!((1..=3).contains(&owner), "{entry}");

    // About 300 video packets in 10 s of a 30 fps stream, over RTMP and HTTP-FLV at once.
    let (rtmp_url, flv_url) = (edge2.rtmp_url("live", "test"), edge2.flv_url("live", "test"));
    let (rtmp, flv) = tokio::join!(ffprobe_video_packets(&rtmp_url, 10), ffprobe_video_packets(&flv_url, 10));
    let (rtmp, flv) = (rtmp.unwrap(), flv.unwrap());
    eprintln!("ffprobe over 10 s: rtmp {rtmp} video packets, http-flv {flv}");
    assert!((270..=340).contains(&rtmp), "RTMP: {rtmp} packets in 10 s");
    assert!((270..=340).contains(&flv), "HTTP-FLV: {flv} packets in 10 s");

    // rtmpdump (librtmp, which sends FCSubscribe) plays for 4 s into a file ffprobe can
    // read; SIGINT makes it finish the file.
    let probe = edges::rtmpdump_records(&edge2.rtmp_url("live", "test"), &c.dir.path().join("dump.flv"), 4).await;
    assert!(probe.contains("h264") && probe.contains("aac"), "rtmpdump's file: {probe}");

    // A play lists exactly the published streams: no data stream of codec "none" (an
    // `onStatus NetStream.Data.Start` data message made one), so ffmpeg can copy every
    // stream into an MP4 and stops after 4 s.
    let streams = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "10000000",
            "-show_entries",
            "stream=codec_type,codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&rtmp_url)
        .output();
    let streams = tokio::time::timeout(Duration::from_secs(20), streams).await.unwrap().unwrap();
    let mut listed: Vec<_> = String::from_utf8_lossy(&streams.stdout).lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(
        listed,
        ["aac,audio", "h264,video"],
        "ffprobe -show_streams: {}",
        String::from_utf8_lossy(&streams.stderr)
    );
    let mp4 = c.dir.path().join("copy.mp4");
    let copy = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i", &rtmp_url, "-map", "0", "-c", "copy", "-t", "4"])
        .arg(&mp4)
        .kill_on_drop(true)
        .output();
    let copy = tokio::time::timeout(Duration::from_secs(30), copy).await.expect("ffmpeg -t 4 stops").unwrap();
    assert!(copy.status.success(), "ffmpeg -map 0 -c copy: {}", String::from_utf8_lossy(&copy.stderr));
    assert!(std::fs::metadata(&mp4).map(|m| m.len()).unwrap_or(0) > 50_000, "the MP4 has media");
    assert!(ffmpeg.running(), "the publisher kept running");
}

/// What a synthetic publisher did.
#[derive(Debug)]
struct Published {
    /// Sequence number of the last video frame sent.
    last_video: u64,
    /// The longest a single send waited (a stalled publisher would show it here).
    longest_send: Duration,
    elapsed: Duration,
}

/// Publishes a synthetic stream in real time for `duration` through `edge`.
fn publish_synthetic(
    edge: SocketAddr,
    name: &str,
    shape: StreamShape,
    epoch: Instant,
    duration: Duration,
) -> JoinHandle<Published> {
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut client = RtmpClient::connect(edge, "live").await.expect("publisher connects");
        let id = client.publish(&name).await.expect("publish accepted");
        let (meta, avc, aac) = synth::headers();
        client.send_data(id, 0, meta).await.unwrap();
        client.send_video(id, 0, avc).await.unwrap();
        client.send_audio(id, 0, aac).await.unwrap();
        let mut synth = Synth::new(shape, epoch);
        let started = Instant::now();
        let mut longest_send = Duration::ZERO;
        let mut last_video = 0;
        loop {
            let due = synth.next_due();
            if due >= duration {
                break;
            }
            tokio::time::sleep_until((started + due).into()).await;
            let (_, frame) = synth.next_frame();
            let t = Instant::now();
            match frame {
                SynthFrame::Video { timestamp, payload, .. } => {
                    last_video = synth::read_stamp(&payload).expect("stamped").0;
                    client.send_video(id, timestamp, payload).await.unwrap()
                }
                SynthFrame::Audio { timestamp, payload } => client.send_audio(id, timestamp, payload).await.unwrap(),
            }
            longest_send = longest_send.max(t.elapsed());
        }
        Published { last_video, longest_send, elapsed: started.elapsed() }
    })
}

/// What a player saw.
#[derive(Debug, Default)]
struct Played {
    /// Sequence numbers of the synthetic video frames, in arrival order.
    video_seqs: Vec<u64>,
    /// Publish-to-play latency of each synthetic video frame, in µs.
    latencies_us: Vec<u64>,
    /// From the play command to the first video frame (not a sequence header).
    first_frame: Option<Duration>,
    first_was_keyframe: bool,
    /// Video timestamps as the player got them, in order.
    video_ts: Vec<u32>,
    /// Video bodies, in order (for byte-level comparisons).
    videos: Vec<Bytes>,
    audios: Vec<Bytes>,
    ended: bool,
}

/// Plays `name` through `edge` until the stream ends, the connection closes, or `until`.
async fn play(edge: SocketAddr, name: &str, epoch: Instant, until: Instant) -> Played {
    let mut client = RtmpClient::connect(edge, "live").await.expect("player connects");
    play_on(&mut client, name, epoch, until, true).await
}

/// Plays on a connected client; `keep` keeps every body (byte-level tests).
async fn play_on(client: &mut RtmpClient, name: &str, epoch: Instant, until: Instant, keep: bool) -> Played {
    let asked = Instant::now();
    // Stamps are Unix µs from a clock at `epoch` (the publisher's, give or take the
    // microseconds between the two reads of the wall clock).
    let clock = StampClock::new(epoch);
    client.play(name).await.expect("play accepted");
    let mut seen = Played::default();
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = tokio::time::sleep_until(until.into()) => break,
        };
        match event {
            Ok(Some(ClientEvent::Video { payload, timestamp, .. })) => {
                seen.video_ts.push(timestamp);
                let header = payload.get(1) == Some(&0) && payload[0] & 0x0F == 7 || payload.first() == Some(&0x90);
                if !header && seen.first_frame.is_none() {
                    seen.first_frame = Some(asked.elapsed());
                    seen.first_was_keyframe = payload[0] >> 4 & 0x07 == 1;
                }
                if let Some((seq, sent)) = synth::read_stamp(&payload) {
                    // The first GOP comes from the cache, sent before the player joined:
                    // latency counts live frames only.
                    if seen.video_seqs.first().is_some_and(|first| seq >= first + 60) {
                        seen.latencies_us.push(clock.now_us().saturating_sub(sent));
                    }
                    seen.video_seqs.push(seq);
                }
                if keep {
                    seen.videos.push(payload);
                }
            }
            Ok(Some(ClientEvent::Audio { payload, .. })) if keep => seen.audios.push(payload),
            Ok(Some(ClientEvent::StreamEof { .. })) => {
                seen.ended = true;
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    seen
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Video sequence numbers must run without gaps or repeats.
fn assert_continuous(seqs: &[u64], who: &str) {
    assert!(!seqs.is_empty(), "{who} received no video");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{who}: video frame {} followed by {}", w[0], w[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_player_starts_at_a_keyframe_within_200_ms_from_the_gop_cache() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let epoch = Instant::now();
    // A 2 s GOP: without a GOP cache a player would wait up to 2 s for a keyframe.
    let shape = StreamShape { gop: 60, ..StreamShape::default() };
    let publisher = publish_synthetic(edge1.rtmp, "gop", shape, epoch, Duration::from_secs(12));
    stream_entry(&c, "live", "gop").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ttff = Vec::new();
    for i in 0..8 {
        // Joins land at different points of the GOP.
        let edge = if i % 2 == 0 { edge2.rtmp } else { edge1.rtmp };
        let seen = play(edge, "gop", epoch, Instant::now() + Duration::from_millis(400)).await;
        let first = seen.first_frame.expect("a video frame");
        assert!(seen.first_was_keyframe, "join {i}: the first video frame is a keyframe");
        assert_continuous(&seen.video_seqs, "player");
        ttff.push(first.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(170 * (i + 1) % 700)).await;
    }
    let published = publisher.await.unwrap();
    assert!(published.last_video > 300);
    ttff.sort_unstable();
    eprintln!("time to first frame (ms), 8 joins: {ttff:?}");
    assert!(percentile(&ttff, 0.5) < 200, "median time to first frame {ttff:?}");
    assert!(ttff.iter().all(|t| *t < 1000), "every join well under the 2 s GOP: {ttff:?}");
}

/// Arrival times of the live synthetic video frames a player gets in `window` (after
/// the GOP it starts with), as (sequence, arrival since `epoch`, publish-to-play µs),
/// and the time from `play` to its first video frame.
async fn video_arrivals(
    edge: SocketAddr,
    name: &str,
    epoch: Instant,
    window: Duration,
) -> (Vec<(u64, u64, u64)>, Duration) {
    let mut client = RtmpClient::connect(edge, "live").await.expect("player connects");
    let asked = Instant::now();
    let clock = StampClock::new(epoch);
    client.play(name).await.expect("play accepted");
    let until = Instant::now() + window;
    let (mut frames, mut first, mut first_seq) = (Vec::new(), None, None);
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = tokio::time::sleep_until(until.into()) => break,
        };
        let Ok(Some(ClientEvent::Video { payload, .. })) = event else {
            assert!(matches!(event, Ok(Some(_))), "the player lost its stream: {event:?}");
            continue;
        };
        let Some((seq, sent)) = synth::read_stamp(&payload) else { continue };
        let at = Instant::now();
        let now = at.duration_since(epoch).as_micros() as u64;
        first.get_or_insert_with(|| asked.elapsed());
        let first_seq = *first_seq.get_or_insert(seq);
        if seq >= first_seq + 60 {
            frames.push((seq, now, clock.unix_us(at).saturating_sub(sent)));
        }
    }
    (frames, first.expect("a video frame"))
}

/// Groups arrival times (µs) into bursts: frames less than `gap_us` apart.
fn bursts(arrivals: &[(u64, u64, u64)], gap_us: u64) -> usize {
    1 + arrivals.windows(2).filter(|w| w[1].1 - w[0].1 > gap_us).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_writes_gather_frames_within_their_bound_and_lose_none() {
    let c = Cluster::start(3).await;
    // Players on edge-1 get every frame as it comes; on edge-2, frames gathered for up
    // to 400 ms (far above the default, so bursts are unmistakable on a busy machine).
    let edge1 = EdgeProc::start(&c, "edge-1", &["--write-merge-ms", "0"]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &["--write-merge-ms", "400"]).await;
    let epoch = Instant::now();
    let shape = StreamShape { video_kbps: 600, ..StreamShape::default() };
    let publisher = publish_synthetic(edge1.rtmp, "merged", shape, epoch, Duration::from_secs(12));
    stream_entry(&c, "live", "merged").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(6);
    let (eager, merged) = tokio::join!(
        video_arrivals(edge1.rtmp, "merged", epoch, window),
        video_arrivals(edge2.rtmp, "merged", epoch, window)
    );
    let ((eager, _), (merged, merged_first)) = (eager, merged);
    publisher.await.unwrap();
    for (who, frames) in [("unmerged player", &eager), ("merged player", &merged)] {
        let seqs: Vec<u64> = frames.iter().map(|f| f.0).collect();
        assert!(seqs.len() > 100, "{who} got {} live video frames in 6 s", seqs.len());
        assert_continuous(&seqs, who);
    }
    // 30 video frames a second (plus audio between them): unmerged, they come one by
    // one; merged, a window of 400 ms carries about 12 video frames.
    let (eager_bursts, merged_bursts) = (bursts(&eager, 15_000), bursts(&merged, 100_000));
    eprintln!(
        "bursts in 6 s: unmerged {eager_bursts} for {} frames, merged {merged_bursts} for {} frames",
        eager.len(),
        merged.len()
    );
    assert!(eager_bursts * 2 > eager.len(), "unmerged: {eager_bursts} bursts for {} frames", eager.len());
    // Bursts more than 100 ms apart, about one per window: frames were held (30 fps
    // unmerged never leaves such a gap) and released together.
    let span_ms = (merged[merged.len() - 1].1 - merged[0].1) / 1000;
    let windows = span_ms as usize / 400 + 1;
    assert!(
        (windows * 6 / 10..=windows * 14 / 10 + 2).contains(&merged_bursts),
        "merged: {merged_bursts} bursts over {span_ms} ms of 400 ms windows"
    );
    // The bound holds: no frame waited much more than the window (slack for a busy
    // machine), and the play's first frames were not held at all.
    let mut lat: Vec<u64> = merged.iter().map(|f| f.2 / 1000).collect();
    lat.sort_unstable();
    assert!(lat[lat.len() - 1] < 400 + 300, "merged latencies (ms) up to {:?}", &lat[lat.len() - 5..]);
    assert!(merged_first < Duration::from_millis(300), "first frame after {merged_first:?}: held by a window");

    // The edges' hop histograms see the same: waits of most of a window on edge-2, a
    // few ms on edge-1, and the publisher's frames passing edge-1 on their way in.
    let delivery = |le: &str| format!("edge_hop_seconds_bucket{{hop=\"delivery\",le=\"{le}\"}}");
    let (m1, m2) = (edge1.metrics().await, edge2.metrics().await);
    let share = |text: &str, le: &str| {
        let all = edges::metric_value(text, &delivery("+Inf")).unwrap();
        assert!(all > 100.0, "delivery waits counted: {all}");
        edges::metric_value(text, &delivery(le)).unwrap() / all
    };
    assert!(share(&m1, "0.05") > 0.9, "unmerged waits over 50 ms: {}", 1.0 - share(&m1, "0.05"));
    assert!(share(&m2, "0.1") < 0.5, "merged waits under 100 ms: {}", share(&m2, "0.1"));
    assert!(share(&m2, "0.5") > 0.9, "merged waits over 500 ms: {}", 1.0 - share(&m2, "0.5"));
    let ingest = edges::metric_value(&m1, "edge_hop_seconds_count{hop=\"ingest\"}").unwrap();
    assert!(ingest > 300.0, "publisher frames counted on their way in: {ingest}");
    // The owner counts the frames it relays to both edges.
    let mut relayed = 0.0;
    for id in 1..=3 {
        let text = c.call(id, Method::GET, "/metrics", None, &[]).await.unwrap().1;
        relayed += edges::metric_value(text.as_str().unwrap(), "raftcast_link_hop_seconds_count").unwrap_or(0.0);
    }
    assert!(relayed > 600.0, "frames the owner relayed to the two edges: {relayed}");
}

/// Every live audio and video frame a player of `name` gets over `window`, as
/// (video?, arrival µs after `epoch`, publish→arrival µs), after its first 60 video
/// frames (the cached GOP and the start).
async fn media_arrivals(edge: SocketAddr, name: &str, epoch: Instant, window: Duration) -> Vec<(bool, u64, u64)> {
    let mut client = RtmpClient::connect(edge, "live").await.expect("player connects");
    let clock = StampClock::new(epoch);
    client.play(name).await.expect("play accepted");
    let until = Instant::now() + window;
    let (mut frames, mut videos) = (Vec::new(), 0);
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = tokio::time::sleep_until(until.into()) => break,
        };
        let (video, payload) = match event {
            Ok(Some(ClientEvent::Video { payload, .. })) => (true, payload),
            Ok(Some(ClientEvent::Audio { payload, .. })) => (false, payload),
            other => {
                assert!(matches!(other, Ok(Some(_))), "the player lost its stream: {other:?}");
                continue;
            }
        };
        let Some((_, sent)) = synth::read_stamp(&payload) else { continue };
        let at = Instant::now();
        let now = at.duration_since(epoch).as_micros() as u64;
        videos += usize::from(video);
        if videos > 60 {
            frames.push((video, now, clock.unix_us(at).saturating_sub(sent)));
        }
    }
    frames
}

/// The arrivals split into bursts (frames less than 2 ms apart: one socket read), as
/// (video frames, audio frames) per burst.
fn media_bursts(frames: &[(bool, u64, u64)]) -> Vec<(usize, usize)> {
    let mut bursts: Vec<(usize, usize)> = Vec::new();
    let mut last = None;
    for &(video, at, _) in frames {
        if last.is_none_or(|l| at - l > 2_000) {
            bursts.push((0, 0));
        }
        let b = bursts.last_mut().unwrap();
        if video {
            b.0 += 1;
        } else {
            b.1 += 1;
        }
        last = Some(at);
    }
    bursts
}

/// The adaptive write merge: video goes out as it comes; once the edge is busy enough
/// audio waits for the next video frame and leaves in the same write
/// (`--audio-hold-above-cpu 0` holds it at any load here). Beside an edge that writes
/// every frame at once (`--write-merge-ms 0`): the same video latency, and about one
/// write (one burst at the player) per video frame instead of one per frame. And the
/// default on a lightly loaded edge: audio is not held, its bursts and latency are the
/// eager edge's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_merge_sends_video_at_once_and_audio_with_the_next_video_frame() {
    let c = Cluster::start(3).await;
    let adaptive = EdgeProc::start(&c, "edge-1", &["--audio-hold-above-cpu", "0"]).await;
    let eager = EdgeProc::start(&c, "edge-2", &["--write-merge-ms", "0"]).await;
    let light = EdgeProc::start(&c, "edge-3", &[]).await;
    let epoch = Instant::now();
    let shape = StreamShape { video_kbps: 600, ..StreamShape::default() };
    let publisher = publish_synthetic(adaptive.rtmp, "adaptive", shape, epoch, Duration::from_secs(12));
    stream_entry(&c, "live", "adaptive").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(6);
    let (held, at_once, unheld) = tokio::join!(
        media_arrivals(adaptive.rtmp, "adaptive", epoch, window),
        media_arrivals(eager.rtmp, "adaptive", epoch, window),
        media_arrivals(light.rtmp, "adaptive", epoch, window)
    );
    publisher.await.unwrap();
    let pct = |mut values: Vec<u64>, p: usize| {
        values.sort_unstable();
        values[(values.len() - 1) * p / 100]
    };
    let latencies = |frames: &[(bool, u64, u64)], video: bool| -> Vec<u64> {
        frames.iter().filter(|f| f.0 == video).map(|f| f.2).collect()
    };
    let (held_bursts, eager_bursts, light_bursts) =
        (media_bursts(&held), media_bursts(&at_once), media_bursts(&unheld));
    let audio_alone = |bursts: &[(usize, usize)]| bursts.iter().filter(|b| b.0 == 0).count();
    let videos = latencies(&held, true).len();
    eprintln!(
        "adaptive: {videos} video frames in {} bursts, {} of them audio alone; video latency p50 {} p90 {} µs, audio p50 {} p90 {} µs",
        held_bursts.len(),
        audio_alone(&held_bursts),
        pct(latencies(&held, true), 50),
        pct(latencies(&held, true), 90),
        pct(latencies(&held, false), 50),
        pct(latencies(&held, false), 90),
    );
    eprintln!(
        "every frame at once: {} bursts, {} of them audio alone; video latency p50 {} p90 {} µs",
        eager_bursts.len(),
        audio_alone(&eager_bursts),
        pct(latencies(&at_once, true), 50),
        pct(latencies(&at_once, true), 90),
    );
    eprintln!(
        "default, light load: {} bursts, {} of them audio alone; audio latency p50 {} p90 {} µs",
        light_bursts.len(),
        audio_alone(&light_bursts),
        pct(latencies(&unheld, false), 50),
        pct(latencies(&unheld, false), 90),
    );
    assert!(videos > 120, "adaptive player got {videos} live video frames in 6 s");
    // Writing each frame at once, most audio frames arrive alone (43 a second between
    // 30 video frames); with the adaptive merge hardly any do (one may, at a hold's
    // 50 ms bound on a busy machine), and no burst carries two video frames unless the
    // socket was busy.
    let (eager_alone, held_alone) = (audio_alone(&eager_bursts), audio_alone(&held_bursts));
    assert!(eager_alone * 4 > eager_bursts.len(), "eager: {eager_alone} of {} bursts audio alone", eager_bursts.len());
    assert!(held_alone * 20 < held_bursts.len(), "adaptive: {held_alone} of {} bursts audio alone", held_bursts.len());
    assert!(held_bursts.len() * 10 >= videos * 9, "adaptive: {} bursts for {videos} video frames", held_bursts.len());
    // Video is not held: its latency is the eager edge's, within a few ms.
    let (p50, eager_p50) = (pct(latencies(&held, true), 50), pct(latencies(&at_once, true), 50));
    assert!(p50 <= eager_p50 + 5_000, "video latency p50: adaptive {p50} µs, eager {eager_p50} µs");
    // Audio waits at most one video frame interval (33 ms), never past the 50 ms bound.
    let audio_p90 = pct(latencies(&held, false), 90);
    assert!(audio_p90 < 50_000 + 20_000, "audio latency p90 {audio_p90} µs");
    // The default edge is nearly idle: it holds no audio, so its audio arrives alone as
    // the eager edge's does, and sooner than the holding edge's.
    let light_alone = audio_alone(&light_bursts);
    assert!(
        light_alone * 4 > light_bursts.len(),
        "default: {light_alone} of {} bursts audio alone",
        light_bursts.len()
    );
    let (light_audio_p50, held_audio_p50) = (pct(latencies(&unheld, false), 50), pct(latencies(&held, false), 50));
    assert!(
        light_audio_p50 * 2 < held_audio_p50,
        "audio latency p50: default {light_audio_p50} µs, held {held_audio_p50} µs"
    );
    assert_eq!(light.metric("edge_audio_held").await, 0.0, "a lightly loaded edge holds no audio");
    assert_eq!(adaptive.metric("edge_audio_held").await, 1.0, "--audio-hold-above-cpu 0 holds audio");
    // Every edge wrote the live frames through the stream's fan-out (the player's
    // connection lent it its socket), one write per burst.
    for (edge, bursts) in [(&adaptive, held_bursts.len()), (&eager, eager_bursts.len()), (&light, light_bursts.len())] {
        let direct = edge.metric("edge_direct_writes_total").await;
        assert!(direct as usize * 10 >= bursts * 8, "{direct} fan-out writes for {bursts} bursts");
    }
}

/// A TCP connection to `addr` that completed the RTMP handshake as a client.
async fn handshaken(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let (mut hs, c0c1) = Handshake::client().unwrap();
    socket.write_all(&c0c1).await.unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during the handshake");
        match hs.feed(&buf[..n]).unwrap() {
            Progress::InProgress { send } => socket.write_all(&send).await.unwrap(),
            Progress::Done { send, .. } => {
                socket.write_all(&send).await.unwrap();
                return socket;
            }
        }
    }
}

/// Waits for the server to close `socket` (end of stream or a reset), draining what it sends.
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 8192];
    let wait = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait).await.is_ok()
}

fn chunks(msg: RawMessage, chunk_size: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_standalone(&msg, chunk_size, &mut out);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rtmp_closes_only_the_connection_that_sent_it() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let epoch = Instant::now();
    let publisher = publish_synthetic(edge.rtmp, "steady", StreamShape::default(), epoch, Duration::from_secs(9));
    stream_entry(&c, "live", "steady").await;
    let player = tokio::spawn(play(edge.rtmp, "steady", epoch, Instant::now() + Duration::from_secs(30)));

    let command = |payload: &[u8]| {
        chunks(
            RawMessage { csid: 3, timestamp: 0, type_id: 20, stream_id: 0, payload: Bytes::copy_from_slice(payload) },
            128,
        )
    };
    let set_chunk_size = |size: u32| {
        chunks(
            RawMessage {
                csid: 2,
                timestamp: 0,
                type_id: 1,
                stream_id: 0,
                payload: Bytes::copy_from_slice(&size.to_be_bytes()),
            },
            128,
        )
    };
    // A 300-byte message header on csid 4, 128 bytes of it, then a new header on csid 4.
    let header_mid_message =
        [&[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..], &[0x27; 128], &[0x04, 0, 0, 0, 0, 0, 10, 9, 1, 0, 0, 0]]
            .concat();
    // 100 chunk streams with two-byte basic headers (csids 64..=163), one small message each.
    let many_chunk_streams: Vec<u8> =
        (0..100u8).flat_map(|i| [0x00, i, 0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0, 0xAF]).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("chunk size 0", set_chunk_size(0)),
        ("chunk size above 2^24", set_chunk_size(0x0100_0001)),
        ("a new header in the middle of a message", header_mid_message),
        ("a compressed header on an unseen chunk stream", vec![0x49, 0, 0, 0, 0, 0, 4, 20]),
        ("invalid AMF in a command", command(&[0x02, 0xFF, 0xFF, b'c', b'o'])),
        ("an AMF command that is not a string", command(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x05])),
        ("more chunk streams than allowed", many_chunk_streams),
        ("a set-chunk-size of the wrong length", vec![0x02, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 1, 0]),
    ];
    for (what, bytes) in &cases {
        let mut socket = handshaken(edge.rtmp).await;
        socket.write_all(bytes).await.unwrap();
        assert!(closed_by_server(&mut socket).await, "the edge closes a connection that sent {what}");
    }
    // Not RTMP at all, and a handshake with a wrong version.
    for (what, bytes) in
        [("an HTTP request", b"GET / HTTP/1.1\r\n\r\n".repeat(100)), ("version 9", [&[9u8][..], &[0; 1536]].concat())]
    {
        let mut socket = TcpStream::connect(edge.rtmp).await.unwrap();
        let _ = socket.write_all(&bytes).await;
        assert!(closed_by_server(&mut socket).await, "the edge closes a connection that sent {what}");
    }
    // Truncations: the client goes away mid-handshake and mid-chunk.
    for cut in [1usize, 700, 1537] {
        let mut socket = TcpStream::connect(edge.rtmp).await.unwrap();
        let (_, c0c1) = Handshake::client().unwrap();
        socket.write_all(&c0c1[..cut.min(c0c1.len())]).await.unwrap();
        drop(socket);
    }
    for cut in [1usize, 5, 11, 18] {
        let mut socket = handshaken(edge.rtmp).await;
        socket.write_all(&command(&[0x02, 0, 7, b'c', b'o', b'n', b'n', b'e', b'c', b't'])[..cut]).await.unwrap();
        drop(socket);
    }

    let published = publisher.await.unwrap();
    let seen = player.await.unwrap();
    assert_continuous(&seen.video_seqs, "the player beside the bad connections");
    assert_eq!(*seen.video_seqs.last().unwrap(), published.last_video, "the player got every frame to the last");
    let log = std::fs::read_to_string(&edge.log).unwrap();
    assert!(log.contains("protocol error"), "the edge logs why it closed them");
    assert!(!log.contains("panicked"), "no task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_interleaves_chunk_streams_is_reassembled_byte_for_byte() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    // Chunk size 128, as many encoders keep it.
    let config = ClientConfig { chunk_size: 128, ..ClientConfig::default() };
    let mut publisher = RtmpClient::connect_with(edge1.rtmp, "live", None, config).await.unwrap();
    let id = publisher.publish("mixed").await.unwrap();
    let (_, avc, aac) = synth::headers();
    publisher.send_video(id, 0, avc).await.unwrap();
    publisher.send_audio(id, 0, aac).await.unwrap();
    publisher.send_video(id, 0, Bytes::from(vec![0x17, 1, 0, 0, 0, 0x65, 0x88])).await.unwrap();
    stream_entry(&c, "live", "mixed").await;
    let epoch = Instant::now();
    let player = tokio::spawn(play(edge2.rtmp, "mixed", epoch, Instant::now() + Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The NOTES case: a 300-byte video message on one chunk stream with a whole audio
    // message on another between its first and second chunk; on chunk streams the
    // client's session never used.
    let mut sent_video = Vec::new();
    let mut sent_audio = Vec::new();
    for i in 0..20u32 {
        let video: Vec<u8> =
            [&[0x27u8, 1, 0, 0, 0][..], &(0..295).map(|b| (b as u32 * 7 + i) as u8).collect::<Vec<_>>()].concat();
        let audio: Vec<u8> =
            [&[0xAFu8, 1][..], &(0..98).map(|b| (b as u32 * 3 + i) as u8).collect::<Vec<_>>()].concat();
        let ts = 40 * (i + 1);
        let v = chunks(
            RawMessage { csid: 10, timestamp: ts, type_id: 9, stream_id: id, payload: Bytes::from(video.clone()) },
            128,
        );
        let a = chunks(
            RawMessage { csid: 11, timestamp: ts, type_id: 8, stream_id: id, payload: Bytes::from(audio.clone()) },
            128,
        );
        let first = 12 + 128;
        publisher.send_raw(&[&v[..first], &a[..], &v[first..]].concat()).await.unwrap();
        sent_video.push(Bytes::from(video));
        sent_audio.push(Bytes::from(audio));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = player.await.unwrap();
    let got_video: Vec<Bytes> = seen.videos.iter().filter(|v| v.len() == 300).cloned().collect();
    let got_audio: Vec<Bytes> = seen.audios.iter().filter(|a| a.len() == 100).cloned().collect();
    assert_eq!(got_video, sent_video, "every interleaved video message arrived intact and in order");
    assert_eq!(got_audio, sent_audio, "every interleaved audio message arrived intact and in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_rtmp_hevc_passes_through_byte_for_byte() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let mut publisher = RtmpClient::connect(edge1.rtmp, "live").await.unwrap();
    let id = publisher.publish("hevc").await.unwrap();
    // IsExHeader | key | SequenceStart, "hvc1", an HEVCDecoderConfigurationRecord head.
    let seq = Bytes::from_static(&[0x90, b'h', b'v', b'c', b'1', 0x01, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 0x5D]);
    let key = |n: u8| {
        Bytes::from([&[0x91, b'h', b'v', b'c', b'1', 0, 0, 0][..], &[0, 0, 0, 0x10, 0x26, 0x01, n][..]].concat())
    };
    let inter =
        |n: u8| Bytes::from([&[0xA3, b'h', b'v', b'c', b'1'][..], &[0, 0, 0, 0x08, 0x02, 0x01, n][..]].concat());
    publisher.send_video(id, 0, seq.clone()).await.unwrap();
    publisher.send_video(id, 0, key(0)).await.unwrap();
    publisher.send_video(id, 33, inter(1)).await.unwrap();
    stream_entry(&c, "live", "hevc").await;
    // A player joining now starts from the GOP cache: the sequence start, the keyframe,
    // then what follows.
    let until = Instant::now() + Duration::from_secs(4);
    let player = tokio::spawn(play(edge2.rtmp, "hevc", Instant::now(), until));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sent = vec![seq.clone(), key(0), inter(1)];
    for n in 2..30u8 {
        let frame = if n % 10 == 0 { key(n) } else { inter(n) };
        publisher.send_video(id, 33 * u32::from(n), frame.clone()).await.unwrap();
        sent.push(frame);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let seen = player.await.unwrap();
    assert_eq!(seen.videos, sent, "HEVC bodies relayed untouched, starting at the sequence start and keyframe");
    // And over HTTP-FLV: the header, then tags whose bodies are the same bytes.
    let body = reqwest::get(edge2.flv_url("live", "hevc")).await.unwrap();
    assert_eq!(body.headers()["content-type"], "video/x-flv");
    let mut body = body.bytes_stream();
    let mut buf = Vec::new();
    use futures::StreamExt;
    while buf.len() < 13 + 11 + seq.len() + 4 {
        buf.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    assert_eq!(&buf[..13], b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
    assert_eq!(buf[13], 9, "a video tag first");
    assert_eq!(&buf[13 + 11..13 + 11 + seq.len()], &seq[..], "the HEVC sequence start, untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_slows_neither_the_publisher_nor_other_players() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    // A player queue of about 2 s of this stream, so the stalled player overflows it soon.
    let edge2 = EdgeProc::start(&c, "edge-2", &["--player-queue-frames", "128"]).await;
    let epoch = Instant::now();
    let run = Duration::from_secs(16);
    let publisher = publish_synthetic(edge1.rtmp, "slow", StreamShape::default(), epoch, run);
    stream_entry(&c, "live", "slow").await;
    // The stalled player asks for a tiny receive buffer, plays, and never reads again.
    let mut stalled = RtmpClient::connect_with(edge2.rtmp, "live", Some(4096), ClientConfig::default()).await.unwrap();
    stalled.play("slow").await.unwrap();
    let healthy = tokio::spawn(play(edge2.rtmp, "slow", epoch, Instant::now() + run + Duration::from_secs(5)));

    // While the stream is live: the stalled player is behind, not gone, and what it
    // skipped is counted.
    tokio::time::sleep_until((epoch + run - Duration::from_secs(3)).into()).await;
    assert_eq!(edge2.metric("edge_players{protocol=\"rtmp\"}").await, 2.0, "both players are connected");
    let drops = edge2.metric("edge_frames_dropped_total{side=\"player\"}").await;
    eprintln!("the stalled player's frames dropped on edge-2: {drops}");
    assert!(drops > 0.0, "the stalled player's skipped frames are counted");
    // The stalled player's socket stopped taking the fan-out's writes: the rest went
    // back to its connection, whose queue then skipped.
    let spills = edge2.metric("edge_direct_spills_total").await;
    assert!(spills >= 1.0, "the stalled socket's fan-out write spilled: {spills}");

    let published = publisher.await.unwrap();
    let seen = healthy.await.unwrap();
    eprintln!("publisher: longest send {:?}, {:?} for {run:?} of stream", published.longest_send, published.elapsed);
    assert!(published.longest_send < Duration::from_millis(250), "the publisher never waited: {published:?}");
    assert!(published.elapsed < run + Duration::from_millis(500), "the publisher kept real time: {published:?}");
    assert_continuous(&seen.video_seqs, "the healthy player");
    assert_eq!(*seen.video_seqs.last().unwrap(), published.last_video, "the healthy player got every frame");
    let mut lat = seen.latencies_us.clone();
    lat.sort_unstable();
    assert!(percentile(&lat, 0.99) < 500_000, "the healthy player stayed live: p99 {} µs", percentile(&lat, 0.99));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_players_on_two_edges_get_every_frame_live_and_each_edge_gets_the_stream_once() {
    let c = Cluster::start(3).await;
    let edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let epoch = Instant::now();
    let run = Duration::from_secs(14);
    let publisher = publish_synthetic(edge1.rtmp, "big", StreamShape::default(), epoch, run);
    let owner = stream_entry(&c, "live", "big").await["owner"].as_u64().unwrap();
    let until = Instant::now() + run + Duration::from_secs(4);
    let mut players = Vec::new();
    for i in 0..200 {
        let edge = if i % 2 == 0 { edge1.rtmp } else { edge2.rtmp };
        players.push(tokio::spawn(async move {
            let mut client = RtmpClient::connect(edge, "live").await.expect("player connects");
            play_on(&mut client, "big", epoch, until, false).await
        }));
    }
    let published = publisher.await.unwrap();
    let mut latencies = Vec::new();
    let mut joined = Vec::new();
    for (i, p) in players.into_iter().enumerate() {
        let seen = p.await.unwrap();
        assert_continuous(&seen.video_seqs, &format!("player {i}"));
        assert_eq!(*seen.video_seqs.last().unwrap(), published.last_video, "player {i} got every frame to the end");
        joined.push(seen.video_seqs[0]);
        latencies.extend_from_slice(&seen.latencies_us);
    }
    latencies.sort_unstable();
    let (p50, p99, max) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99), *latencies.last().unwrap());
    eprintln!(
        "200 players, 2.5 Mbit/s: latency p50 {p50} µs, p99 {p99} µs, max {max} µs; joined at frames {:?}..{:?}",
        joined.iter().min(),
        joined.iter().max()
    );
    assert!(p99 < 1_000_000, "players kept in real time: p99 {p99} µs");

    // Each edge received the stream from the owner once, not once per player: its
    // upstream media bytes are about the stream's size, and the owner wrote about two
    // streams' worth to its links (one per edge; edge-1 also sent the stream in).
    let (_, metrics) = c.call(owner, Method::GET, "/metrics", None, &[]).await.unwrap();
    let metrics = metrics.as_str().map(str::to_owned).unwrap_or_else(|| metrics.to_string());
    let owner_out: f64 = edges::metric_value(&metrics, "raftcast_link_bytes_out_total").expect("owner link bytes");
    let stream_bytes = (published.last_video + 1) as f64 * 2_500_000.0 / 8.0 / 30.0;
    for edge in [&edge1, &edge2] {
        let status = edge.status().await;
        let received: u64 =
            status["upstreams"].as_array().unwrap().iter().map(|u| u["bytes_in"].as_u64().unwrap()).sum();
        let ratio = received as f64 / stream_bytes;
        eprintln!("{}: {received} media bytes from the owner, {ratio:.2}x the video stream", edge.name);
        assert!((0.8..1.5).contains(&ratio), "{} received the stream {ratio:.2} times", edge.name);
    }
    let owner_ratio = owner_out / stream_bytes;
    eprintln!("owner origin {owner}: {owner_out} bytes to its links, {owner_ratio:.2}x the video stream");
    assert!((1.6..3.0).contains(&owner_ratio), "the owner sent the stream {owner_ratio:.2} times for two edges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_streams_taken_names_keys_and_graceful_shutdown() {
    let c = Cluster::start(3).await;
    let mut edge1 = EdgeProc::start(&c, "edge-1", &["--play-wait-ms", "700"]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &["--play-wait-ms", "700"]).await;

    // A missing stream: StreamNotFound after the configured wait, never a hang.
    let mut client = RtmpClient::connect(edge2.rtmp, "live").await.unwrap();
    let asked = Instant::now();
    let err = client.play("nobody").await.unwrap_err().to_string();
    let waited = asked.elapsed();
    assert!(err.contains("NetStream.Play.StreamNotFound"), "{err}");
    assert!(waited >= Duration::from_millis(650) && waited < Duration::from_secs(5), "answered after {waited:?}");
    let res = reqwest::get(edge2.flv_url("live", "nobody")).await.unwrap();
    assert_eq!(res.status(), 404);
    let res = reqwest::get(format!("http://{}/live/bad%20name.flv", edge2.http)).await.unwrap();
    assert_eq!(res.status(), 400);

    // A second publisher of a live stream gets BadName, on either edge.
    let mut first = RtmpClient::connect(edge1.rtmp, "live").await.unwrap();
    let id = first.publish("taken").await.unwrap();
    let (meta, avc, _) = synth::headers();
    first.send_data(id, 0, meta).await.unwrap();
    first.send_video(id, 0, avc).await.unwrap();
    for edge in [edge1.rtmp, edge2.rtmp] {
        let mut second = RtmpClient::connect(edge, "live").await.unwrap();
        let err = second.publish("taken").await.unwrap_err().to_string();
        assert!(err.contains("NetStream.Publish.BadName"), "{err}");
    }

    // An app that requires keys: no key or a wrong one is Denied, the right one publishes.
    let (s, _) = c
        .call(1, Method::PUT, "/apps/secure", Some(&serde_json::json!({"publish_key_required": true})), &[])
        .await
        .unwrap();
    assert!(s.is_success());
    let (s, key) = c.call(2, Method::POST, "/keys", Some(&serde_json::json!({"app": "secure"})), &[]).await.unwrap();
    assert!(s.is_success(), "{key}");
    let key = key["key"].as_str().unwrap();
    for name in ["cam".to_owned(), "cam?key=wrong".to_owned()] {
        let mut p = RtmpClient::connect(edge1.rtmp, "secure").await.unwrap();
        let err = p.publish(&name).await.unwrap_err().to_string();
        assert!(err.contains("NetStream.Publish.Denied"), "{name}: {err}");
    }
    let mut keyed = RtmpClient::connect(edge1.rtmp, "secure").await.unwrap();
    keyed.publish(&format!("cam?key={key}")).await.expect("the right key publishes");
    stream_entry(&c, "secure", "cam").await;

    // Graceful shutdown of edge-1: its player hears the stream ended, its publishers'
    // claims are released, the process exits 0.
    let mut player = RtmpClient::connect(edge1.rtmp, "live").await.unwrap();
    player.play("taken").await.unwrap();
    let status = edge1.terminate().await;
    assert!(status.success(), "edge exit status {status:?}");
    let mut heard_end = false;
    while let Ok(Some(event)) = player.next_event().await {
        if matches!(&event, ClientEvent::Status { code, .. } if code == "NetStream.Play.UnpublishNotify") {
            heard_end = true;
        }
    }
    assert!(heard_end, "the player was told the stream ended");
    eventually(Duration::from_secs(10), "edge-1's claims to be released", || async {
        let (_, v) = c.call(3, Method::GET, "/streams", None, &[]).await.ok()?;
        v["streams"].as_array()?.is_empty().then_some(())
    })
    .await;
}

/// A one-origin cluster whose origin goes silent for 1.5 s (SIGSTOP): the edge's link
/// drops, and no other origin can take the stream. Once the origin answers again the
/// publication goes back to it (found by bench-saturation.sh: at 12,000 players one
/// link blip, and no frame reached any player for the rest of the run; the claim was
/// only taken again after the orphan grace, 11 s here), and the player, still
/// connected, gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_origin_a_publication_goes_back_to_its_owner_after_a_link_blip() {
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    let epoch = Instant::now();
    let publisher = publish_synthetic(edge.rtmp, "blip", StreamShape::default(), epoch, Duration::from_secs(8));
    stream_entry(&c, "live", "blip").await;
    let player = tokio::spawn(play(edge.rtmp, "blip", epoch, Instant::now() + Duration::from_secs(12)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.signal(1, "-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.signal(1, "-CONT");
    let published = publisher.await.unwrap();
    let seen = player.await.unwrap();
    let log = std::fs::read_to_string(&edge.log).unwrap();
    assert!(log.contains("lost the owner"), "the blip cost the edge its link: {}", tail(&log));
    assert_continuous(&seen.video_seqs, "the player through the blip");
    assert_eq!(
        seen.video_seqs.last(),
        Some(&published.last_video),
        "the player got every frame to the last:\n{}",
        tail(&log)
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_takes_over_the_stream_of_a_dead_session_but_never_a_live_one() {
    let c = Cluster::start(3).await;
    let mut edge1 = EdgeProc::start(&c, "edge-1", &[]).await;
    let edge2 = EdgeProc::start(&c, "edge-2", &[]).await;
    let epoch = Instant::now();
    let first = publish_synthetic(edge1.rtmp, "phoenix", StreamShape::default(), epoch, Duration::from_secs(60));
    let claimed = stream_entry(&c, "live", "phoenix").await;
    // Past the young-claim guard, the session is judged by whether it publishes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut rival = RtmpClient::connect(edge2.rtmp, "live").await.unwrap();
    let err = rival.publish("phoenix").await.unwrap_err().to_string();
    assert!(err.contains("NetStream.Publish.BadName"), "a live session keeps its stream: {err}");

    // A player on edge-2 watches through what follows.
    let player = tokio::spawn(play(edge2.rtmp, "phoenix", epoch, Instant::now() + Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // edge-1 dies with its publisher's claim still committed: a publisher reconnecting
    // through edge-2 takes the stream over at once, under a new epoch.
    edge1.kill();
    first.abort();
    let asked = Instant::now();
    let second = publish_synthetic(edge2.rtmp, "phoenix", StreamShape::default(), epoch, Duration::from_secs(3));
    let took = eventually(Duration::from_secs(5), "the takeover", || async {
        let e = stream_entry(&c, "live", "phoenix").await;
        (e["edge"] == "edge-2").then(|| asked.elapsed())
    })
    .await;
    let now = stream_entry(&c, "live", "phoenix").await;
    assert_eq!(now["edge"], "edge-2", "{now}");
    assert!(now["epoch"].as_u64() > claimed["epoch"].as_u64(), "a new epoch: {claimed} then {now}");
    eprintln!("takeover of a dead session accepted after {took:?}");
    assert!(took < Duration::from_secs(3), "at once, not after the orphan grace: {took:?}");
    let second = second.await.unwrap();

    // The player stayed connected and went on with the new publisher's frames (whose
    // own sequence starts again at 0), its timestamps never going back.
    let seen = player.await.unwrap();
    let restarts = seen.video_seqs.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(restarts, 1, "the player saw the first publisher, then the second: {:?}", seen.video_seqs);
    assert!(seen.video_ts.windows(2).all(|w| w[1] >= w[0]), "timestamps are monotonic across the takeover");
    assert_eq!(seen.video_seqs.last(), Some(&second.last_video), "it played to the second publisher's end");
}
