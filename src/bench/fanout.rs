//! `raftcast bench fanout`: publishers of a synthetic stream and many players, all in
//! this process, through any RTMP server (raftcast edges, nginx-rtmp, …). Every frame
//! carries a sequence number and its send time: players check continuity and measure
//! publish→play latency without decoding. `raftcast bench idle` holds idle connections
//! to measure memory per connection.
//!
//! Server cost is sampled from `/proc/<pid>` of the processes named with `--watch-pid`
//! (CPU seconds and RSS over the measured window).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::client::RtmpClient;
use super::synth::{self, StreamShape, Synth, SynthFrame};
use super::Latency;
use crate::rtmp::session::ClientEvent;

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// RTMP address publishers connect to.
    #[arg(long, default_value = "127.0.0.1:1935")]
    publish: SocketAddr,
    /// RTMP addresses players connect to, comma-separated (players spread round-robin).
    #[arg(long, default_value = "127.0.0.1:1936", value_delimiter = ',')]
    play: Vec<SocketAddr>,
    /// RTMP application.
    #[arg(long, default_value = "live")]
    app: String,
    /// Stream names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "bench")]
    name: String,
    /// Streams (one publisher each); players spread over them.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Players in all.
    #[arg(long, default_value_t = 100)]
    players: usize,
    /// Video bitrate of each stream, kbit/s (plus about 64 kbit/s of audio).
    #[arg(long, default_value_t = 2500)]
    kbps: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Frames per GOP.
    #[arg(long, default_value_t = 60)]
    gop: u32,
    /// Seconds measured, after every player has started.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Players started per second.
    #[arg(long, default_value_t = 200.0)]
    ramp: f64,
    /// Server processes whose CPU time and RSS to sample, e.g. the edge's pid.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// A player is lagging when its p99 latency exceeds this, in ms.
    #[arg(long, default_value_t = 1000.0)]
    lag_ms: f64,
}

#[derive(Debug, Serialize)]
struct ProcessCost {
    pid: u32,
    cpu_seconds: f64,
    /// CPU seconds per GB delivered to players.
    cpu_seconds_per_gb: Option<f64>,
    /// Share of one core over the measured window.
    cpu_percent: f64,
    rss_kib: u64,
    /// RSS divided by the players.
    rss_kib_per_player: Option<f64>,
}

#[derive(Debug, Serialize)]
struct FanoutReport {
    workload: &'static str,
    streams: usize,
    players: usize,
    kbps: u32,
    seconds: f64,
    /// Payload bytes players received in the measured window.
    bytes_delivered: u64,
    egress_mbit_per_sec: f64,
    players_keeping_up: usize,
    players_lagging: usize,
    players_failed: usize,
    frames_lost: u64,
    /// Publish→play latency of live video frames in the measured window.
    latency: Option<Latency>,
    /// From `play` to the first video frame.
    time_to_first_frame: Option<Latency>,
    errors: Vec<String>,
    processes: Vec<ProcessCost>,
}

/// What one player saw in the measured window.
#[derive(Default)]
struct PlayerResult {
    ttff: Option<Duration>,
    latencies: Vec<Duration>,
    lost: u64,
    failed: Option<String>,
}

/// Counters shared by all players, for the progress line.
#[derive(Default)]
struct Live {
    bytes: AtomicU64,
    frames: AtomicU64,
    playing: AtomicU64,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.streams > 0 && !args.play.is_empty(), "--streams and --play must not be empty");
    anyhow::ensure!(args.fps > 0 && args.gop > 0 && args.ramp > 0.0, "--fps, --gop and --ramp must be positive");
    let shape = StreamShape { video_kbps: args.kbps, fps: args.fps, gop: args.gop, ..StreamShape::default() };
    let epoch = Instant::now();
    let ramp = Duration::from_secs_f64(args.players as f64 / args.ramp);
    let measure_from = Instant::now() + Duration::from_secs(2) + ramp;
    let measure = Duration::from_secs_f64(args.duration);
    let measure_to = measure_from + measure;
    let stop = measure_to + Duration::from_millis(500);
    let names: Vec<String> = (0..args.streams).map(|i| format!("{}-{i}", args.name)).collect();

    let mut publishers = Vec::new();
    for name in &names {
        let (addr, app, name) = (args.publish, args.app.clone(), name.clone());
        publishers.push(tokio::spawn(async move { publish(addr, &app, &name, shape, epoch, stop).await }));
    }
    // Give publishers a moment to be accepted before players ask for the streams.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live = Arc::new(Live::default());
    let mut players = Vec::new();
    for i in 0..args.players {
        let addr = args.play[i % args.play.len()];
        let (app, name, live) = (args.app.clone(), names[i % names.len()].clone(), live.clone());
        let start_at = tokio::time::Instant::now() + Duration::from_secs_f64(i as f64 / args.ramp);
        let gop = u64::from(args.gop);
        players.push(tokio::spawn(async move {
            tokio::time::sleep_until(start_at).await;
            play(addr, &app, &name, epoch, gop, (measure_from, measure_to), &live).await
        }));
    }
    let progress = tokio::spawn({
        let live = live.clone();
        async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let bytes = live.bytes.load(Ordering::Relaxed);
                let phase = if Instant::now() < measure_from { "warming up" } else { "measuring" };
                eprintln!(
                    "{phase}: {} players, {:.1} Mbit/s, {} frames",
                    live.playing.load(Ordering::Relaxed),
                    (bytes - last) as f64 * 8.0 / 1e6,
                    live.frames.load(Ordering::Relaxed)
                );
                last = bytes;
            }
        }
    });
    tokio::time::sleep_until(measure_from.into()).await;
    let before: Vec<_> = args.watch_pids.iter().map(|p| proc_cpu(*p)).collect();
    let bytes_before = live.bytes.load(Ordering::Relaxed);
    tokio::time::sleep_until(measure_to.into()).await;
    let bytes_delivered = live.bytes.load(Ordering::Relaxed) - bytes_before;
    let after: Vec<_> = args.watch_pids.iter().map(|p| proc_cpu(*p)).collect();
    let rss: Vec<_> = args.watch_pids.iter().map(|p| proc_rss_kib(*p)).collect();
    progress.abort();

    let mut errors = Vec::new();
    for p in publishers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("publisher: {e:#}")),
            Err(e) => errors.push(format!("publisher task: {e}")),
        }
    }
    let (mut latencies, mut ttffs) = (Vec::new(), Vec::new());
    let (mut keeping_up, mut lagging, mut failed, mut lost) = (0, 0, 0, 0);
    for p in players {
        let r = p.await.unwrap_or_else(|e| PlayerResult { failed: Some(e.to_string()), ..Default::default() });
        if let Some(e) = r.failed {
            failed += 1;
            if errors.len() < 20 {
                errors.push(format!("player: {e}"));
            }
            continue;
        }
        lost += r.lost;
        let mut own = r.latencies.clone();
        let p99 = Latency::of(&mut own).map_or(f64::INFINITY, |l| l.p99_ms);
        if r.lost == 0 && p99 <= args.lag_ms {
            keeping_up += 1;
        } else {
            lagging += 1;
        }
        latencies.extend(r.latencies);
        ttffs.extend(r.ttff);
    }
    let seconds = measure.as_secs_f64();
    let gb = bytes_delivered as f64 / 1e9;
    let processes = args
        .watch_pids
        .iter()
        .zip(before.iter().zip(after.iter()))
        .zip(rss)
        .map(|((pid, (b, a)), rss)| {
            let cpu = match (b, a) {
                (Some(b), Some(a)) => a - b,
                _ => f64::NAN,
            };
            ProcessCost {
                pid: *pid,
                cpu_seconds: cpu,
                cpu_seconds_per_gb: (gb > 0.0).then(|| cpu / gb),
                cpu_percent: cpu / seconds * 100.0,
                rss_kib: rss.unwrap_or(0),
                rss_kib_per_player: (args.players > 0).then(|| rss.unwrap_or(0) as f64 / args.players as f64),
            }
        })
        .collect();
    let report = FanoutReport {
        workload: "fanout",
        streams: args.streams,
        players: args.players,
        kbps: args.kbps,
        seconds,
        bytes_delivered,
        egress_mbit_per_sec: bytes_delivered as f64 * 8.0 / 1e6 / seconds,
        players_keeping_up: keeping_up,
        players_lagging: lagging,
        players_failed: failed,
        frames_lost: lost,
        latency: Latency::of(&mut latencies),
        time_to_first_frame: Latency::of(&mut ttffs),
        errors,
        processes,
    };
    Ok(serde_json::to_string_pretty(&report)?)
}

async fn publish(
    addr: SocketAddr,
    app: &str,
    name: &str,
    shape: StreamShape,
    epoch: Instant,
    stop: Instant,
) -> anyhow::Result<()> {
    let mut client = RtmpClient::connect(addr, app).await.context("publisher connect")?;
    let id = client.publish(name).await.context("publish")?;
    let (meta, avc, aac) = synth::headers();
    client.send_data(id, 0, meta).await?;
    client.send_video(id, 0, avc).await?;
    client.send_audio(id, 0, aac).await?;
    let mut synth = Synth::new(shape, epoch);
    let started = tokio::time::Instant::now();
    loop {
        if Instant::now() >= stop {
            return Ok(());
        }
        tokio::time::sleep_until(started + synth.next_due()).await;
        let (_, frame) = synth.next_frame();
        match frame {
            SynthFrame::Video { timestamp, payload, .. } => client.send_video(id, timestamp, payload).await?,
            SynthFrame::Audio { timestamp, payload } => client.send_audio(id, timestamp, payload).await?,
        }
    }
}

async fn play(
    addr: SocketAddr,
    app: &str,
    name: &str,
    epoch: Instant,
    gop: u64,
    (from, to): (Instant, Instant),
    live: &Live,
) -> PlayerResult {
    let mut result = PlayerResult::default();
    let mut client = match RtmpClient::connect(addr, app).await {
        Ok(c) => c,
        Err(e) => return PlayerResult { failed: Some(format!("{e:#}")), ..result },
    };
    let asked = Instant::now();
    if let Err(e) = client.play(name).await {
        return PlayerResult { failed: Some(format!("{e:#}")), ..result };
    }
    live.playing.fetch_add(1, Ordering::Relaxed);
    let (mut first, mut last): (Option<u64>, Option<u64>) = (None, None);
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = tokio::time::sleep_until(to.into()) => break,
        };
        let payload = match event {
            Ok(Some(ClientEvent::Video { payload, .. })) => payload,
            Ok(Some(ClientEvent::Audio { payload, .. })) => {
                live.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                result.failed = Some("the server closed the connection".into());
                break;
            }
            Err(e) => {
                result.failed = Some(format!("{e:#}"));
                break;
            }
        };
        live.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
        live.frames.fetch_add(1, Ordering::Relaxed);
        let Some((seq, sent_us)) = synth::read_stamp(&payload) else { continue };
        result.ttff.get_or_insert_with(|| asked.elapsed());
        let now = Instant::now();
        if let Some(prev) = last {
            if now >= from && seq > prev + 1 {
                result.lost += seq - prev - 1;
            }
        }
        last = Some(seq);
        // The first GOP comes from the cache and was sent before the player joined.
        if now >= from && seq >= *first.get_or_insert(seq) + gop {
            let sent = epoch + Duration::from_micros(sent_us);
            result.latencies.push(now.saturating_duration_since(sent));
        }
    }
    live.playing.fetch_sub(1, Ordering::Relaxed);
    result
}

/// `raftcast bench idle`: holds connected RTMP sessions that do nothing.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// RTMP address to connect to.
    #[arg(long, default_value = "127.0.0.1:1935")]
    rtmp: SocketAddr,
    #[arg(long, default_value = "live")]
    app: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The server process whose RSS to sample before and after.
    #[arg(long = "watch-pid")]
    watch_pid: Option<u32>,
    /// Seconds to hold the connections after the last one is up.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
}

#[derive(Debug, Serialize)]
struct IdleReport {
    workload: &'static str,
    connections: usize,
    failed: usize,
    rss_kib_before: Option<u64>,
    rss_kib_after: Option<u64>,
    rss_bytes_per_connection: Option<f64>,
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<String> {
    let before = args.watch_pid.and_then(proc_rss_kib);
    let mut clients = Vec::with_capacity(args.connections);
    let mut failed = 0;
    for chunk in (0..args.connections).collect::<Vec<_>>().chunks(100) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|_| {
                let app = args.app.clone();
                let addr = args.rtmp;
                tokio::spawn(async move { RtmpClient::connect(addr, &app).await })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(Ok(c)) => clients.push(c),
                _ => failed += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let after = args.watch_pid.and_then(proc_rss_kib);
    let per = match (before, after) {
        (Some(b), Some(a)) if !clients.is_empty() => Some((a as f64 - b as f64) * 1024.0 / clients.len() as f64),
        _ => None,
    };
    let report = IdleReport {
        workload: "idle",
        connections: clients.len(),
        failed,
        rss_kib_before: before,
        rss_kib_after: after,
        rss_bytes_per_connection: per,
    };
    drop(clients);
    Ok(serde_json::to_string_pretty(&report)?)
}

/// User + system CPU seconds of a process.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = 100.0; // USER_HZ on Linux
    Some((utime + stime) / ticks)
}

/// Resident set size of a process in KiB.
fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}
