//! The edge's HAProxy agent: a TCP port that answers every connection with one line
//! telling the load balancer how much new work this edge should get, then closes.
//!
//! HAProxy's `agent-check` connects every `agent-inter`, reads the line and applies it:
//! `ready 63%` sets the server's weight to 63 % of its configured weight (and cancels
//! a `drain` it applied earlier, e.g. before a restart); `drain` sends it no new
//! traffic while its health checks keep it up. A refused connect changes nothing:
//! liveness is the health check's job (`GET /health`).
//!
//! The weight comes from the edge's own load, sampled every second by [`sample`]:
//! the busiest of its CPU (this process, against the cores it may use), its egress
//! (bytes written to RTMP, HTTP-FLV and HLS clients, against `--agent-egress-mbps`)
//! and its RTMP connections (against `--max-connections`). The weight is the headroom
//! left, `100 × (1 − load)`, never below 1 % so an edge that is merely full still gets
//! a share when every edge is full, and smoothed so one busy second does not swing it.
//! How it was measured with HAProxy: docs/hls.md, "Load balancer".

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::WriteMerge;
use super::EdgeContext;
use crate::media::fanout::Merge;

/// How often the load is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long one answer may take to write before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Weight of the newest sample in the smoothed load (an exponential moving average:
/// a step change reaches 90 % of its size after about 4 samples).
const SMOOTHING: f64 = 0.45;

/// The edge's load as last sampled, for the agent, `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct LoadGauge {
    /// CPU used by the process, in thousandths of the cores it may use.
    pub cpu_permille: AtomicU32,
    /// Bytes per second written to clients.
    pub egress_bytes_per_s: AtomicU64,
    /// RTMP connections, in thousandths of `--max-connections`.
    pub connections_permille: AtomicU32,
    /// The weight the agent answers, in percent of the configured one (1-100).
    pub weight_percent: AtomicU32,
    /// The adaptive write merge's window under load, in µs (0: light load, only audio
    /// waits for video; see [`next_merge_window`]).
    pub merge_window_us: AtomicU32,
    /// Whether the adaptive merge holds audio for the next video frame now (see
    /// [`next_audio_hold`]); off until the edge is busy enough.
    pub audio_held: AtomicBool,
}

impl LoadGauge {
    /// How long media reaching an idle player socket is gathered under the current
    /// load (zero until the edge passes [`MERGE_RAISE_CPU`]).
    pub fn merge_window(&self) -> Duration {
        Duration::from_micros(u64::from(self.merge_window_us.load(Ordering::Relaxed)))
    }

    /// How the edge's player writes gather frames now, under `setting`: the one answer
    /// for the connections' own writes (`rtmp_conn`) and the direct fan-out's.
    pub fn merge(&self, setting: WriteMerge) -> Merge {
        match setting {
            WriteMerge::Adaptive { audio_hold, hold_above_percent } => {
                Merge { audio_hold: self.audio_hold(audio_hold, hold_above_percent), window: self.merge_window() }
            }
            WriteMerge::Window(window) => Merge { audio_hold: window, window },
        }
    }

    /// How long the adaptive merge holds a player's audio for the next video frame
    /// now: `configured` while the edge is busy enough (or always, `above_percent` 0),
    /// none while it is lightly loaded.
    fn audio_hold(&self, configured: Duration, above_percent: u32) -> Duration {
        if above_percent == 0 || self.audio_held.load(Ordering::Relaxed) {
            configured
        } else {
            Duration::ZERO
        }
    }

    pub fn weight(&self) -> u32 {
        match self.weight_percent.load(Ordering::Relaxed) {
            0 => 100,
            w => w,
        }
    }
}

/// One sample's loads, each a fraction of its capacity (may exceed 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub cpu: f64,
    pub egress: f64,
    pub connections: f64,
}

impl Load {
    /// The busiest resource decides.
    pub fn max(self) -> f64 {
        self.cpu.max(self.egress).max(self.connections)
    }
}

/// The weight, in percent, for a (smoothed) load: the headroom left, at least 1.
pub fn weight_for(load: f64) -> u32 {
    let headroom = (1.0 - load).clamp(0.0, 1.0);
    ((headroom * 100.0).round() as u32).clamp(1, 100)
}

/// The next value of an exponential moving average ([`SMOOTHING`]) that was `prev`.
fn moving_average(prev: Option<f64>, sample: f64) -> f64 {
    prev.map_or(sample, |p| p + SMOOTHING * (sample - p))
}

/// The load window's controller (`edge::rtmp_conn`'s adaptive merge under load): the
/// window is raised while the edge's (smoothed) CPU share is above
/// [`MERGE_RAISE_CPU`], lowered while it is below [`MERGE_LOWER_CPU`], and held in
/// between. Set straight from the load (0 ms at half the cores, 100 ms at 80 %) it
/// oscillated: the window lowers the CPU it is set from, so it closed, the CPU rose
/// and it opened again, 0 ↔ 61 ms on a 3 s cycle at 2,000 pinned players. Stepping
/// with a dead band settles on the window that keeps the edge inside the band.
pub const MERGE_RAISE_CPU: f64 = 0.6;
/// Below this share the window is lowered (to none: latency first).
pub const MERGE_LOWER_CPU: f64 = 0.4;
/// From this share the window is raised faster.
pub const MERGE_FULL_CPU: f64 = 0.8;
/// The longest window under load: the fixed window's former default.
pub const MERGE_WINDOW_MAX: Duration = Duration::from_millis(100);
/// Steps of the window per CPU sample (one a second).
const MERGE_STEP: Duration = Duration::from_millis(10);
const MERGE_STEP_FULL: Duration = Duration::from_millis(25);

/// The next write merge window, from the current one and the (smoothed) CPU load, a
/// fraction of the usable cores (see [`MERGE_RAISE_CPU`]).
pub fn next_merge_window(window: Duration, cpu: f64) -> Duration {
    let next = if cpu.is_nan() || cpu < MERGE_LOWER_CPU {
        window.saturating_sub(MERGE_STEP)
    } else if cpu >= MERGE_FULL_CPU {
        window + MERGE_STEP_FULL
    } else if cpu >= MERGE_RAISE_CPU {
        window + MERGE_STEP
    } else {
        window
    };
    next.min(MERGE_WINDOW_MAX)
}

/// Whether the adaptive merge holds audio after this sample: from `above` (a fraction
/// of the usable cores, smoothed CPU) up, until the CPU falls under half of it. Holding
/// audio saves about 40 % of the edge's CPU per GB at light load, so the band is wide
/// enough that the saving does not release the hold it started (at 30 %: held from
/// 30 %, about 18-20 % once held, released under 15 %, about 24 % after).
pub fn next_audio_hold(held: bool, cpu: f64, above: f64) -> bool {
    if above <= 0.0 {
        return true;
    }
    if cpu.is_nan() {
        return held;
    }
    if held {
        cpu >= above * AUDIO_RELEASE
    } else {
        cpu >= above
    }
}

/// Where a held audio is let go again, as a share of the threshold that started it.
const AUDIO_RELEASE: f64 = 0.5;

/// The line the agent answers.
pub fn answer(draining: bool, weight: u32) -> String {
    if draining {
        "drain\n".to_owned()
    } else {
        format!("ready {weight}%\n")
    }
}

/// The unit of `/proc/*/stat` times: the kernel reports them in USER_HZ, which is
/// 100 on every architecture Linux exports to user space as such (`sysconf(_SC_CLK_TCK)`).
const USER_HZ: u64 = 100;

/// CPU time used by this process so far (user + system), from `/proc/self/stat`.
async fn cpu_time() -> Option<Duration> {
    let stat = tokio::fs::read_to_string("/proc/self/stat").await.ok()?;
    cpu_time_from_stat(&stat)
}

/// utime and stime are fields 14 and 15; the command name (field 2) may hold spaces,
/// so fields are counted after its closing parenthesis.
fn cpu_time_from_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / USER_HZ))
}

/// Samples the edge's load every [`SAMPLE_EVERY`] into `ctx.stats.load` until `stop`.
pub async fn sample(ctx: Arc<EdgeContext>, egress_capacity_bytes_per_s: u64, stop: CancellationToken) {
    let max_connections = ctx.config.max_connections.max(1) as f64;
    let egress_now = |ctx: &EdgeContext| {
        ctx.stats.bytes_out.load(Ordering::Relaxed) + ctx.hls.stats.bytes_served.load(Ordering::Relaxed)
    };
    let (mut at, mut cpu, mut egress) = (Instant::now(), cpu_time().await, egress_now(&ctx));
    let mut smoothed: Option<f64> = None;
    let mut smoothed_cpu: Option<f64> = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (now, cpu_now, egress_bytes) = (Instant::now(), cpu_time().await, egress_now(&ctx));
        // Asked each time: an operator may pin the process to fewer cores (`taskset`)
        // or change its cgroup's quota while it runs.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
        let cpu_used = match (cpu, cpu_now) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() / secs / cores,
            _ => 0.0,
        };
        let egress_rate = egress_bytes.saturating_sub(egress) as f64 / secs;
        let load = Load {
            cpu: cpu_used,
            egress: egress_rate / egress_capacity_bytes_per_s.max(1) as f64,
            connections: ctx.stats.connections.load(Ordering::Relaxed) as f64 / max_connections,
        };
        let s = *smoothed.insert(moving_average(smoothed, load.max()));
        let c = *smoothed_cpu.insert(moving_average(smoothed_cpu, load.cpu));
        let gauge = &ctx.stats.load;
        let window = next_merge_window(gauge.merge_window(), c);
        gauge.merge_window_us.store(window.as_micros() as u32, Ordering::Relaxed);
        if let WriteMerge::Adaptive { hold_above_percent, .. } = ctx.config.write_merge {
            let above = f64::from(hold_above_percent) / 100.0;
            let held = next_audio_hold(gauge.audio_held.load(Ordering::Relaxed), c, above);
            gauge.audio_held.store(held, Ordering::Relaxed);
        }
        gauge.cpu_permille.store((load.cpu * 1000.0).round() as u32, Ordering::Relaxed);
        gauge.egress_bytes_per_s.store(egress_rate as u64, Ordering::Relaxed);
        gauge.connections_permille.store((load.connections * 1000.0).round() as u32, Ordering::Relaxed);
        gauge.weight_percent.store(weight_for(s), Ordering::Relaxed);
        (at, cpu, egress) = (now, cpu_now, egress_bytes);
    }
}

/// Answers HAProxy's agent checks on `listener` until `stop`. Each connection gets its
/// line and is closed; nothing is read, so a client cannot hold one open by sending.
/// Connections are answered one at a time: an answer is one short write, bounded by
/// [`WRITE_TIMEOUT`], so a stranger cannot make the agent hold descriptors.
pub async fn serve(listener: TcpListener, ctx: Arc<EdgeContext>, stop: CancellationToken) {
    loop {
        let (mut socket, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "agent accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let line = answer(ctx.draining.is_cancelled(), ctx.stats.load.weight());
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            socket.write_all(line.as_bytes()).await?;
            socket.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_is_the_headroom_of_the_busiest_resource() {
        let load = Load { cpu: 0.37, egress: 0.1, connections: 0.0 };
        assert_eq!(weight_for(load.max()), 63);
        assert_eq!(weight_for(0.0), 100);
        assert_eq!(weight_for(1.0), 1, "a full edge keeps a share");
        assert_eq!(weight_for(3.5), 1);
    }

    #[test]
    fn the_merge_window_steps_up_above_the_band_down_below_it_and_holds_inside() {
        let ms = Duration::from_millis;
        // Light load: no window, and an open one closes step by step.
        assert_eq!(next_merge_window(Duration::ZERO, 0.2), Duration::ZERO);
        assert_eq!(next_merge_window(ms(30), 0.2), ms(20));
        assert_eq!(next_merge_window(ms(5), f64::NAN), Duration::ZERO);
        // In the band the window holds, whatever it is: that is where it settles.
        assert_eq!(next_merge_window(Duration::ZERO, 0.55), Duration::ZERO);
        assert_eq!(next_merge_window(ms(40), 0.45), ms(40));
        // Above it the window grows, faster when the edge is nearly full, up to 100 ms.
        assert_eq!(next_merge_window(ms(40), 0.65), ms(50));
        assert_eq!(next_merge_window(ms(40), 0.9), ms(65));
        assert_eq!(next_merge_window(ms(95), 3.0), MERGE_WINDOW_MAX);
    }

    #[test]
    fn audio_is_held_from_the_threshold_until_the_cpu_falls_under_half_of_it() {
        // Light load: audio goes as it comes.
        assert!(!next_audio_hold(false, 0.05, 0.3));
        assert!(!next_audio_hold(false, 0.29, 0.3));
        // From the threshold it is held, and stays held while the saving it brings
        // keeps the CPU above half the threshold.
        assert!(next_audio_hold(false, 0.3, 0.3));
        assert!(next_audio_hold(true, 0.19, 0.3));
        assert!(next_audio_hold(true, 0.15, 0.3));
        assert!(!next_audio_hold(true, 0.14, 0.3));
        // No sample keeps what was; a zero threshold always holds.
        assert!(next_audio_hold(true, f64::NAN, 0.3));
        assert!(!next_audio_hold(false, f64::NAN, 0.3));
        assert!(next_audio_hold(false, 0.0, 0.0));
        // What the connections and the fan-out ask: the configured hold, or none.
        let gauge = LoadGauge::default();
        let hold = Duration::from_millis(50);
        assert_eq!(gauge.audio_hold(hold, 30), Duration::ZERO);
        assert_eq!(gauge.audio_hold(hold, 0), hold);
        gauge.audio_held.store(true, Ordering::Relaxed);
        assert_eq!(gauge.audio_hold(hold, 30), hold);
    }

    #[test]
    fn draining_wins_over_the_weight() {
        assert_eq!(answer(false, 63), "ready 63%\n");
        assert_eq!(answer(true, 63), "drain\n");
    }

    #[test]
    fn cpu_time_reads_utime_and_stime_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (raft cast) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_time_from_stat(stat), Some(Duration::from_secs(3)));
        assert_eq!(cpu_time_from_stat("garbage"), None);
    }
}
