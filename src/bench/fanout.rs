//! `raftcast bench fanout`: publishers of a synthetic stream and many players, all in
//! this process, through any RTMP server (raftcast edges, nginx-rtmp, …). Every frame
//! carries a sequence number and its send time: players check continuity and measure
//! publish→play latency without decoding. `raftcast bench publish` is the same engine
//! with many publishers (and optionally a few checking players per stream).
//! `raftcast bench idle` holds idle connections to measure memory per connection.
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
use super::synth::{self, StampClock, StreamShape, Synth, SynthFrame};
use super::Latency;
use crate::rtmp::session::{ClientConfig, ClientEvent, CAPS_EX_RECONNECT};

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// RTMP address publishers connect to.
    #[arg(long, default_value = "127.0.0.1:1935")]
    publish: SocketAddr,
    /// RTMP addresses players connect to, comma-separated (players spread round-robin).
    #[arg(long, default_value = "127.0.0.1:1936", value_delimiter = ',')]
    play: Vec<SocketAddr>,
    /// Streams (one publisher each); players spread over them.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Players in all.
    #[arg(long, default_value_t = 100)]
    players: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// `raftcast bench publish`: many concurrent publishers, optionally each with players.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// RTMP address publishers connect to.
    #[arg(long, default_value = "127.0.0.1:1935")]
    publish: SocketAddr,
    /// RTMP addresses the checking players connect to, comma-separated.
    #[arg(long, default_value = "127.0.0.1:1936", value_delimiter = ',')]
    play: Vec<SocketAddr>,
    /// Concurrent publishers, each on its own stream.
    #[arg(long, default_value_t = 100)]
    publishers: usize,
    /// Players per stream checking what the server delivers (0: publishers only).
    #[arg(long, default_value_t = 0)]
    players_per_stream: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// Flags shared by `fanout` and `publish`.
#[derive(Debug, Args)]
struct CommonArgs {
    /// RTMP application.
    #[arg(long, default_value = "live")]
    app: String,
    /// Stream names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "bench")]
    name: String,
    /// Video bitrate of each stream, kbit/s (plus about 64 kbit/s of audio).
    #[arg(long, default_value_t = 2500)]
    kbps: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Frames per GOP.
    #[arg(long, default_value_t = 60)]
    gop: u32,
    /// Leave out the ~64 kbit/s of AAC audio: many light streams measure the control
    /// plane (claims, feeds, links) rather than media throughput.
    #[arg(long)]
    no_audio: bool,
    /// Seconds measured, after every publisher and player has started.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Players started per second.
    #[arg(long, default_value_t = 200.0)]
    ramp: f64,
    /// Publishers started per second.
    #[arg(long, default_value_t = 100.0)]
    publisher_ramp: f64,
    /// Server processes whose CPU time and RSS to sample, e.g. the edge's pid.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// A player is lagging when its p99 latency exceeds this, in ms; a publisher when
    /// its p99 send delay (from when a frame was due to when the server took it) does.
    #[arg(long, default_value_t = 1000.0)]
    lag_ms: f64,
    /// Players advertise Enhanced RTMP's reconnect capability and, when an edge asks
    /// them to reconnect (`NetConnection.Connect.ReconnectRequest` from a draining
    /// edge), connect again through this address (a load balancer), play on, then
    /// close the old connection; the frames the new edge repeats from its GOP are not
    /// counted out of order.
    #[arg(long, value_name = "ADDR")]
    reconnect_via: Option<SocketAddr>,
    /// Players connect with RTMPS (to the --play addresses, e.g. an edge's --rtmps
    /// port), trusting the CA certificate(s) in this PEM file and checking the name
    /// `localhost` (the bootstrap cluster's `$RAFTCAST_DATA_DIR/tls/ca.pem`).
    #[arg(long, value_name = "CA_PEM")]
    play_tls_ca: Option<std::path::PathBuf>,
}

/// What to run: the same engine serves `fanout` and `publish`.
struct Plan {
    workload: &'static str,
    publish: SocketAddr,
    play: Vec<SocketAddr>,
    streams: usize,
    players: usize,
    common: CommonArgs,
}

#[derive(Debug, Serialize)]
struct ProcessCost {
    pid: u32,
    cpu_seconds: f64,
    /// CPU seconds per GB delivered to players.
    cpu_seconds_per_gb: Option<f64>,
    /// Share of one core over the measured window.
    cpu_percent: f64,
    /// RSS at the end of the measured window.
    rss_kib: u64,
    /// RSS before this run's first connection.
    rss_kib_before: u64,
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
    /// Video frames that arrived with a sequence number at or below one already
    /// seen (a duplicate or a frame out of order), in the measured window.
    frames_out_of_order: u64,
    /// Each player's longest wait between two video frames in the measured window
    /// (a failover's or a move's stall shows here), summarized over the players.
    longest_gap: Option<Latency>,
    /// Reconnects an edge asked players for and that succeeded (`--reconnect-via`).
    player_reconnects: u64,
    /// The players by the address they first played from: who noticed what when one
    /// edge is drained or dies.
    players_by_address: Vec<AddressReport>,
    /// Publish→play latency of live video frames in the measured window.
    latency: Option<Latency>,
    /// Publish→play latency of live audio frames in the measured window: those sent
    /// after the player asked to play (the GOP cache's audio is older), each sequence
    /// number once. Not part of keeping up.
    audio_latency: Option<Latency>,
    /// From `play` to the first video frame.
    time_to_first_frame: Option<Latency>,
    /// Payload bytes publishers handed to the server in the measured window.
    bytes_published: u64,
    publishers_keeping_up: usize,
    publishers_lagging: usize,
    publishers_failed: usize,
    /// From when a frame was due to when the server had taken all of it (TCP back
    /// pressure shows here), in the measured window.
    publish_delay: Option<Latency>,
    errors: Vec<String>,
    processes: Vec<ProcessCost>,
}

/// The players of one `--play` address.
#[derive(Debug, Default, Serialize, PartialEq)]
struct AddressReport {
    addr: String,
    players: usize,
    failed: usize,
    reconnected: usize,
    frames_lost: u64,
    frames_out_of_order: u64,
    /// The longest wait between two video frames at any of them.
    longest_gap_ms: Option<f64>,
}

/// [`AddressReport`]s of `players`, by address (`?` for a player that never started).
fn by_address(players: &[PlayerResult]) -> Vec<AddressReport> {
    let mut out: std::collections::BTreeMap<String, AddressReport> = std::collections::BTreeMap::new();
    for p in players {
        let addr = p.addr.map_or_else(|| "?".to_owned(), |a| a.to_string());
        let r = out.entry(addr.clone()).or_insert_with(|| AddressReport { addr, ..AddressReport::default() });
        r.players += 1;
        r.failed += usize::from(p.failed.is_some());
        r.reconnected += usize::from(p.reconnects > 0);
        r.frames_lost += p.lost;
        r.frames_out_of_order += p.out_of_order;
        if let Some(gap) = p.longest_gap {
            let ms = gap.as_secs_f64() * 1000.0;
            r.longest_gap_ms = Some(r.longest_gap_ms.map_or(ms, |g| g.max(ms)));
        }
    }
    out.into_values().collect()
}

/// What one player saw in the measured window.
#[derive(Default)]
struct PlayerResult {
    ttff: Option<Duration>,
    latencies: Vec<Duration>,
    audio_latencies: Vec<Duration>,
    lost: u64,
    out_of_order: u64,
    /// The longest time between two video frames, both in the measured window.
    longest_gap: Option<Duration>,
    /// Where it first played.
    addr: Option<SocketAddr>,
    /// Reconnects an edge asked for and that succeeded.
    reconnects: u32,
    failed: Option<String>,
}

/// What one publisher did in the measured window.
#[derive(Default)]
struct PublisherResult {
    delays: Vec<Duration>,
    failed: Option<String>,
}

/// Counters shared by all clients, for the progress line.
#[derive(Default)]
struct Live {
    bytes: AtomicU64,
    frames: AtomicU64,
    playing: AtomicU64,
    published: AtomicU64,
    publishing: AtomicU64,
}

/// The measured window and when clients stop.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
    stop: Instant,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<String> {
    let plan = Plan {
        workload: "fanout",
        publish: args.publish,
        play: args.play,
        streams: args.streams,
        players: args.players,
        common: args.common,
    };
    run_plan(plan).await
}

pub async fn run_publish(args: PublishArgs) -> anyhow::Result<String> {
    let plan = Plan {
        workload: "publish",
        publish: args.publish,
        play: args.play,
        streams: args.publishers,
        players: args.publishers * args.players_per_stream,
        common: args.common,
    };
    run_plan(plan).await
}

async fn run_plan(plan: Plan) -> anyhow::Result<String> {
    let args = &plan.common;
    anyhow::ensure!(plan.streams > 0, "at least one stream (publisher) is needed");
    anyhow::ensure!(plan.players == 0 || !plan.play.is_empty(), "--play must not be empty");
    anyhow::ensure!(
        args.fps > 0 && args.gop > 0 && args.ramp > 0.0 && args.publisher_ramp > 0.0,
        "--fps, --gop, --ramp and --publisher-ramp must be positive"
    );
    let shape = StreamShape {
        video_kbps: args.kbps,
        fps: args.fps,
        gop: args.gop,
        audio: !args.no_audio,
        ..StreamShape::default()
    };
    let rss_before: Vec<_> = args.watch_pids.iter().map(|p| proc_rss_kib(*p)).collect();
    let epoch = Instant::now();
    // Stamps are Unix µs (an outside player can read them); publishers and players
    // share one clock so the players' latencies here are exact.
    let clock = StampClock::new(epoch);
    let publisher_ramp = Duration::from_secs_f64((plan.streams - 1) as f64 / args.publisher_ramp);
    let players_from = Duration::from_millis(1500) + publisher_ramp;
    let ramp = Duration::from_secs_f64(plan.players as f64 / args.ramp);
    let from = epoch + players_from + Duration::from_millis(500) + ramp;
    let measure = Duration::from_secs_f64(args.duration);
    let window = Window { from, to: from + measure, stop: from + measure + Duration::from_millis(500) };
    let names: Vec<String> = (0..plan.streams).map(|i| format!("{}-{i}", args.name)).collect();
    let live = Arc::new(Live::default());

    let mut publishers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (addr, app, name, live) = (plan.publish, args.app.clone(), name.clone(), live.clone());
        let start_at = tokio::time::Instant::now() + Duration::from_secs_f64(i as f64 / args.publisher_ramp);
        publishers.push(tokio::spawn(async move {
            tokio::time::sleep_until(start_at).await;
            publish(addr, &app, &name, shape, clock, window, &live).await
        }));
    }
    // Publishers get a moment to be accepted before players ask for the streams.
    let tls = args.play_tls_ca.as_deref().map(super::client::tls_client_config).transpose()?;
    let mut players = Vec::new();
    for i in 0..plan.players {
        let addr = plan.play[i % plan.play.len()];
        let target = PlayTarget { addr, tls: tls.clone(), reconnect_via: args.reconnect_via };
        let (app, name, live) = (args.app.clone(), names[i % names.len()].clone(), live.clone());
        let start_at =
            tokio::time::Instant::from_std(epoch + players_from) + Duration::from_secs_f64(i as f64 / args.ramp);
        let gop = u64::from(args.gop);
        players.push(tokio::spawn(async move {
            tokio::time::sleep_until(start_at).await;
            play(target, &app, &name, clock, gop, window, &live).await
        }));
    }
    let progress = tokio::spawn({
        let live = live.clone();
        async move {
            let (mut last_out, mut last_in) = (0, 0);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (out, inn) = (live.bytes.load(Ordering::Relaxed), live.published.load(Ordering::Relaxed));
                let phase = if Instant::now() < from { "warming up" } else { "measuring" };
                eprintln!(
                    "{phase}: {} publishing {:.1} Mbit/s, {} players {:.1} Mbit/s, {} frames",
                    live.publishing.load(Ordering::Relaxed),
                    (inn - last_in) as f64 * 8.0 / 1e6,
                    live.playing.load(Ordering::Relaxed),
                    (out - last_out) as f64 * 8.0 / 1e6,
                    live.frames.load(Ordering::Relaxed)
                );
                (last_out, last_in) = (out, inn);
            }
        }
    });
    tokio::time::sleep_until(window.from.into()).await;
    let before: Vec<_> = args.watch_pids.iter().map(|p| proc_cpu(*p)).collect();
    let (bytes_before, published_before) = (live.bytes.load(Ordering::Relaxed), live.published.load(Ordering::Relaxed));
    tokio::time::sleep_until(window.to.into()).await;
    let bytes_delivered = live.bytes.load(Ordering::Relaxed) - bytes_before;
    let bytes_published = live.published.load(Ordering::Relaxed) - published_before;
    let after: Vec<_> = args.watch_pids.iter().map(|p| proc_cpu(*p)).collect();
    let rss: Vec<_> = args.watch_pids.iter().map(|p| proc_rss_kib(*p)).collect();
    progress.abort();

    let mut publisher_results = Vec::new();
    for p in publishers {
        publisher_results
            .push(p.await.unwrap_or_else(|e| PublisherResult { failed: Some(e.to_string()), ..Default::default() }));
    }
    let mut player_results = Vec::new();
    for p in players {
        player_results
            .push(p.await.unwrap_or_else(|e| PlayerResult { failed: Some(e.to_string()), ..Default::default() }));
    }
    let seconds = measure.as_secs_f64();
    let gb = bytes_delivered as f64 / 1e9;
    let processes = args
        .watch_pids
        .iter()
        .enumerate()
        .map(|(i, pid)| {
            let cpu = match (before[i], after[i]) {
                (Some(b), Some(a)) => a - b,
                _ => f64::NAN,
            };
            let rss = rss[i].unwrap_or(0);
            ProcessCost {
                pid: *pid,
                cpu_seconds: cpu,
                cpu_seconds_per_gb: (gb > 0.0).then(|| cpu / gb),
                cpu_percent: cpu / seconds * 100.0,
                rss_kib: rss,
                rss_kib_before: rss_before[i].unwrap_or(0),
                rss_kib_per_player: (plan.players > 0).then(|| rss as f64 / plan.players as f64),
            }
        })
        .collect();
    let totals = Totals { seconds, bytes_delivered, bytes_published };
    let report = summarize(&plan, totals, player_results, publisher_results, processes);
    Ok(serde_json::to_string_pretty(&report)?)
}

/// Byte counts of the measured window.
struct Totals {
    seconds: f64,
    bytes_delivered: u64,
    bytes_published: u64,
}

/// Errors kept in a report; the rest are only counted.
const MAX_ERRORS: usize = 20;

/// Turns what every client saw into the report.
fn summarize(
    plan: &Plan,
    totals: Totals,
    players: Vec<PlayerResult>,
    publishers: Vec<PublisherResult>,
    processes: Vec<ProcessCost>,
) -> FanoutReport {
    let lag_ms = plan.common.lag_ms;
    let mut errors = Vec::new();
    let (mut delays, mut pub_ok, mut pub_lagging, mut pub_failed) = (Vec::new(), 0, 0, 0);
    for p in publishers {
        if let Some(e) = p.failed {
            pub_failed += 1;
            if errors.len() < MAX_ERRORS {
                errors.push(format!("publisher: {e}"));
            }
            continue;
        }
        let mut own = p.delays.clone();
        let p99 = Latency::of(&mut own).map_or(0.0, |l| l.p99_ms);
        if p99 <= lag_ms {
            pub_ok += 1;
        } else {
            pub_lagging += 1;
        }
        delays.extend(p.delays);
    }
    let players_by_address = by_address(&players);
    let player_reconnects = players.iter().map(|p| u64::from(p.reconnects)).sum();
    let (mut latencies, mut audio_latencies, mut ttffs, mut gaps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut keeping_up, mut lagging, mut failed, mut lost, mut out_of_order) = (0, 0, 0, 0, 0);
    for r in players {
        if let Some(e) = r.failed {
            failed += 1;
            if errors.len() < MAX_ERRORS {
                errors.push(format!("player: {e}"));
            }
            continue;
        }
        lost += r.lost;
        out_of_order += r.out_of_order;
        gaps.extend(r.longest_gap);
        let mut own = r.latencies.clone();
        let p99 = Latency::of(&mut own).map_or(f64::INFINITY, |l| l.p99_ms);
        if r.lost == 0 && r.out_of_order == 0 && p99 <= lag_ms {
            keeping_up += 1;
        } else {
            lagging += 1;
        }
        latencies.extend(r.latencies);
        audio_latencies.extend(r.audio_latencies);
        ttffs.extend(r.ttff);
    }
    FanoutReport {
        workload: plan.workload,
        streams: plan.streams,
        players: plan.players,
        kbps: plan.common.kbps,
        seconds: totals.seconds,
        bytes_delivered: totals.bytes_delivered,
        egress_mbit_per_sec: totals.bytes_delivered as f64 * 8.0 / 1e6 / totals.seconds,
        players_keeping_up: keeping_up,
        players_lagging: lagging,
        players_failed: failed,
        frames_lost: lost,
        frames_out_of_order: out_of_order,
        longest_gap: Latency::of(&mut gaps),
        player_reconnects,
        players_by_address,
        latency: Latency::of(&mut latencies),
        audio_latency: Latency::of(&mut audio_latencies),
        time_to_first_frame: Latency::of(&mut ttffs),
        bytes_published: totals.bytes_published,
        publishers_keeping_up: pub_ok,
        publishers_lagging: pub_lagging,
        publishers_failed: pub_failed,
        publish_delay: Latency::of(&mut delays),
        errors,
        processes,
    }
}

async fn publish(
    addr: SocketAddr,
    app: &str,
    name: &str,
    shape: StreamShape,
    clock: StampClock,
    window: Window,
    live: &Live,
) -> PublisherResult {
    let mut result = PublisherResult::default();
    live.publishing.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = publish_frames(addr, app, name, shape, clock, window, live, &mut result.delays).await {
        result.failed = Some(format!("{e:#}"));
    }
    live.publishing.fetch_sub(1, Ordering::Relaxed);
    result
}

#[allow(clippy::too_many_arguments)]
async fn publish_frames(
    addr: SocketAddr,
    app: &str,
    name: &str,
    shape: StreamShape,
    clock: StampClock,
    window: Window,
    live: &Live,
    delays: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let mut client = RtmpClient::connect(addr, app).await.context("publisher connect")?;
    let id = client.publish(name).await.context("publish")?;
    let (meta, avc, aac) = synth::headers();
    client.send_data(id, 0, meta).await?;
    client.send_video(id, 0, avc).await?;
    client.send_audio(id, 0, aac).await?;
    let mut synth = Synth::with_clock(shape, clock);
    let started = tokio::time::Instant::now();
    loop {
        if Instant::now() >= window.stop {
            return Ok(());
        }
        let due = started + synth.next_due();
        tokio::time::sleep_until(due).await;
        let (_, frame) = synth.next_frame();
        let len = match frame {
            SynthFrame::Video { timestamp, payload, .. } => {
                let len = payload.len();
                client.send_video(id, timestamp, payload).await?;
                len
            }
            SynthFrame::Audio { timestamp, payload } => {
                let len = payload.len();
                client.send_audio(id, timestamp, payload).await?;
                len
            }
        };
        live.published.fetch_add(len as u64, Ordering::Relaxed);
        let now = Instant::now();
        if now >= window.from && now < window.to {
            delays.push(tokio::time::Instant::now().saturating_duration_since(due));
        }
    }
}

/// Where a player plays from.
#[derive(Clone)]
struct PlayTarget {
    addr: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Where to connect again when an edge asks for a reconnect; `None`: the player
    /// does not advertise the capability.
    reconnect_via: Option<SocketAddr>,
}

impl PlayTarget {
    /// Connects to `addr`, advertising the reconnect capability when it has somewhere
    /// to reconnect to.
    async fn connect(&self, addr: SocketAddr, app: &str) -> anyhow::Result<RtmpClient> {
        let caps_ex = if self.reconnect_via.is_some() { CAPS_EX_RECONNECT } else { 0 };
        let config = ClientConfig { caps_ex, ..ClientConfig::default() };
        match &self.tls {
            Some(tls) => RtmpClient::connect_tls_with(addr, app, tls.clone(), config).await,
            None => RtmpClient::connect_with(addr, app, None, config).await,
        }
    }
}

/// The `onStatus` code of a draining edge's request to reconnect elsewhere.
const RECONNECT_REQUEST: &str = "NetConnection.Connect.ReconnectRequest";

async fn play(
    target: PlayTarget,
    app: &str,
    name: &str,
    clock: StampClock,
    gop: u64,
    window: Window,
    live: &Live,
) -> PlayerResult {
    let (from, to) = (window.from, window.to);
    let addr = target.addr;
    let mut result = PlayerResult { addr: Some(addr), ..PlayerResult::default() };
    let mut client = match target.connect(addr, app).await {
        Ok(c) => c,
        Err(e) => return PlayerResult { failed: Some(format!("{e:#}")), ..result },
    };
    let asked = Instant::now();
    if let Err(e) = client.play(name).await {
        return PlayerResult { failed: Some(format!("{e:#}")), ..result };
    }
    live.playing.fetch_add(1, Ordering::Relaxed);
    let mut first = None;
    let mut seen = Continuity::new(from);
    let mut last_audio: Option<u64> = None;
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = tokio::time::sleep_until(to.into()) => break,
        };
        let payload = match event {
            Ok(Some(ClientEvent::Video { payload, .. })) => payload,
            Ok(Some(ClientEvent::Audio { payload, .. })) => {
                live.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                let Some((seq, sent_us)) = synth::read_stamp(&payload) else { continue };
                // Live audio only: sent after `play` (the cached GOP's audio is older),
                // and a sequence number once (a reconnect repeats the new edge's GOP).
                if last_audio.is_some_and(|last| seq <= last) {
                    continue;
                }
                last_audio = Some(seq);
                let (now, sent) = (Instant::now(), clock.instant_of(sent_us));
                if now >= from && sent >= asked {
                    result.audio_latencies.push(now.saturating_duration_since(sent));
                }
                continue;
            }
            Ok(Some(ClientEvent::Status { code, .. })) if code == RECONNECT_REQUEST => {
                let Some(via) = target.reconnect_via else { continue };
                // The new connection plays before the old one closes.
                let again = async {
                    let mut next = target.connect(via, app).await?;
                    next.play(name).await?;
                    anyhow::Ok(next)
                };
                match again.await {
                    Ok(next) => {
                        client = next;
                        result.reconnects += 1;
                        seen.resume();
                        eprintln!("{name} at {addr}: asked to reconnect; playing again through {via}");
                    }
                    Err(e) => {
                        result.failed = Some(format!("reconnect through {via}: {e:#}"));
                        break;
                    }
                }
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
        let waited = seen.last.map(|(_, at)| now.saturating_duration_since(at));
        if !seen.frame(seq, now) {
            continue;
        }
        // Stalls are rare and worth placing in time: say when one ended.
        if let Some(gap) = waited.filter(|g| *g >= STALL_REPORT && now >= from) {
            eprintln!(
                "{name} at {addr}: {} ms without a video frame, until {:.3} s into the run (Unix time {:.3})",
                gap.as_millis(),
                now.duration_since(clock.epoch()).as_secs_f64(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
            );
        }
        // The first GOP comes from the cache and was sent before the player joined.
        if now >= from && seq >= *first.get_or_insert(seq) + gop {
            let sent = clock.instant_of(sent_us);
            result.latencies.push(now.saturating_duration_since(sent));
        }
    }
    live.playing.fetch_sub(1, Ordering::Relaxed);
    (result.lost, result.out_of_order, result.longest_gap) = (seen.lost, seen.out_of_order, seen.longest_gap);
    result
}

/// A wait between two video frames at least this long is printed (stderr) as it ends.
const STALL_REPORT: Duration = Duration::from_millis(300);

/// A player's view of a stream's video sequence numbers, counted from `from` (the
/// measured window): frames skipped, frames at or below one already seen (a
/// duplicate or out of order), and the longest wait between two frames in order.
struct Continuity {
    from: Instant,
    /// The newest sequence number and when it came.
    last: Option<(u64, Instant)>,
    lost: u64,
    out_of_order: u64,
    longest_gap: Option<Duration>,
    /// Reconnected: frames up to the newest one seen come again (the new server's
    /// GOP) and are not out of order, until a newer one arrives.
    resuming: bool,
}

impl Continuity {
    fn new(from: Instant) -> Self {
        Continuity { from, last: None, lost: 0, out_of_order: 0, longest_gap: None, resuming: false }
    }

    /// The player connected again: what the new connection repeats is expected.
    fn resume(&mut self) {
        self.resuming = true;
    }

    /// Takes frame `seq`, arrived at `now`: false when it is a duplicate or out of
    /// order (the caller ignores it).
    fn frame(&mut self, seq: u64, now: Instant) -> bool {
        if let Some((prev, at)) = self.last {
            if seq <= prev {
                if now >= self.from && !self.resuming {
                    self.out_of_order += 1;
                }
                return false;
            }
            if now >= self.from {
                self.lost += seq - prev - 1;
            }
            if at >= self.from {
                let gap = now - at;
                self.longest_gap = Some(self.longest_gap.map_or(gap, |g| g.max(gap)));
            }
        }
        self.last = Some((seq, now));
        self.resuming = false;
        true
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(players: usize) -> Plan {
        let common = CommonArgs {
            app: "live".into(),
            name: "t".into(),
            kbps: 600,
            fps: 30,
            gop: 60,
            no_audio: false,
            duration: 10.0,
            ramp: 100.0,
            publisher_ramp: 100.0,
            watch_pids: vec![],
            lag_ms: 100.0,
            play_tls_ca: None,
            reconnect_via: None,
        };
        let addr: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        Plan { workload: "fanout", publish: addr, play: vec![addr], streams: 2, players, common }
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn the_report_counts_players_and_publishers_by_outcome() {
        let players = vec![
            // Audio latency is reported, not judged: this one keeps up all the same.
            PlayerResult {
                ttff: Some(Duration::from_millis(3)),
                latencies: ms(&[1, 2, 3]),
                audio_latencies: ms(&[4, 5, 2000]),
                longest_gap: Some(Duration::from_millis(40)),
                ..Default::default()
            },
            // Lost frames, or frames out of order, make a player lag whatever its latency.
            PlayerResult {
                latencies: ms(&[1]),
                lost: 2,
                longest_gap: Some(Duration::from_millis(250)),
                ..Default::default()
            },
            PlayerResult { latencies: ms(&[1]), out_of_order: 1, ..Default::default() },
            PlayerResult { latencies: ms(&[500]), ..Default::default() },
            PlayerResult { failed: Some("refused".into()), audio_latencies: ms(&[9000]), ..Default::default() },
        ];
        let publishers = vec![
            PublisherResult { delays: ms(&[0, 1]), failed: None },
            PublisherResult { delays: ms(&[300]), failed: None },
            PublisherResult { failed: Some("reset".into()), ..Default::default() },
        ];
        let totals = Totals { seconds: 10.0, bytes_delivered: 125_000_000, bytes_published: 1_000 };
        let r = summarize(&plan(5), totals, players, publishers, vec![]);
        assert_eq!((r.players_keeping_up, r.players_lagging, r.players_failed, r.frames_lost), (1, 3, 1, 2));
        let audio = r.audio_latency.as_ref().unwrap();
        assert_eq!((audio.p50_ms, audio.max_ms), (5.0, 2000.0), "failed players' samples are left out");
        assert_eq!(r.frames_out_of_order, 1);
        assert_eq!(r.longest_gap.as_ref().map(|g| g.max_ms), Some(250.0));
        assert_eq!((r.publishers_keeping_up, r.publishers_lagging, r.publishers_failed), (1, 1, 1));
        assert_eq!(r.egress_mbit_per_sec, 100.0);
        assert_eq!(r.latency.as_ref().unwrap().max_ms, 500.0);
        assert_eq!(r.errors, vec!["publisher: reset".to_owned(), "player: refused".to_owned()]);

        // The fields scripts/bench-compare.sh reads.
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        for field in [
            "workload",
            "bytes_delivered",
            "players_keeping_up",
            "players_lagging",
            "players_failed",
            "frames_lost",
            "latency",
            "audio_latency",
            "time_to_first_frame",
            "publish_delay",
            "errors",
            "processes",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["latency"]["p50_ms"], 2.0);
        assert_eq!(json["audio_latency"]["p99_ms"], 2000.0);
        assert_eq!(json["time_to_first_frame"]["p99_ms"], 3.0);
    }

    #[test]
    fn continuity_counts_gaps_duplicates_and_the_longest_wait_in_the_window_only() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Continuity::new(at(1000));
        // Before the window: a skip, a duplicate and a long wait count for nothing.
        assert!(c.frame(1, at(0)) && c.frame(5, at(500)));
        assert!(!c.frame(5, at(600)));
        // In it: 6 → 9 loses two, 8 and 9 again are out of order, the waits are
        // 1000→1100 (from a frame before the window: not counted), then 100, 300, 50.
        assert!(c.frame(6, at(1100)) && c.frame(7, at(1200)) && c.frame(10, at(1500)));
        assert!(!c.frame(8, at(1510)) && !c.frame(10, at(1520)));
        assert!(c.frame(11, at(1550)));
        assert_eq!((c.lost, c.out_of_order), (2, 2));
        assert_eq!(c.longest_gap, Some(Duration::from_millis(300)));
        // Reconnected: the new server's GOP repeats 5..=11 (not out of order), then 12
        // goes on; the wait across the reconnect counts.
        c.resume();
        for seq in 5..=11 {
            assert!(!c.frame(seq, at(1600)));
        }
        assert!(c.frame(12, at(2000)) && !c.frame(12, at(2010)));
        assert_eq!((c.lost, c.out_of_order), (2, 3), "only the repeat after the resume counts");
        assert_eq!(c.longest_gap, Some(Duration::from_millis(450)));
    }

    #[test]
    fn players_are_reported_by_the_address_they_played_from() {
        let a: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1936".parse().unwrap();
        let players = vec![
            PlayerResult { addr: Some(a), longest_gap: Some(Duration::from_millis(120)), ..Default::default() },
            PlayerResult {
                addr: Some(a),
                reconnects: 1,
                longest_gap: Some(Duration::from_millis(300)),
                ..Default::default()
            },
            PlayerResult { addr: Some(b), failed: Some("closed".into()), lost: 4, ..Default::default() },
            PlayerResult { failed: Some("panicked".into()), ..Default::default() },
        ];
        let r = by_address(&players);
        let row = |addr: &str| r.iter().find(|r| r.addr == addr).unwrap();
        assert_eq!(r.len(), 3);
        let at_a = row("127.0.0.1:1935");
        assert_eq!((at_a.players, at_a.failed, at_a.reconnected, at_a.longest_gap_ms), (2, 0, 1, Some(300.0)));
        let at_b = row("127.0.0.1:1936");
        assert_eq!((at_b.players, at_b.failed, at_b.frames_lost, at_b.longest_gap_ms), (1, 1, 4, None));
        assert_eq!(row("?").failed, 1);
    }

    #[test]
    fn nothing_measured_gives_null_latencies() {
        let totals = Totals { seconds: 1.0, bytes_delivered: 0, bytes_published: 0 };
        let r = summarize(&plan(0), totals, vec![], vec![], vec![]);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["latency"].is_null() && json["audio_latency"].is_null() && json["publish_delay"].is_null());
        assert_eq!(json["players_keeping_up"], 0);
    }

    #[test]
    fn proc_stat_of_this_process_parses() {
        let me = std::process::id();
        assert!(proc_cpu(me).is_some());
        assert!(proc_rss_kib(me).unwrap() > 0);
    }
}
