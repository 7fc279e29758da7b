//! `raftcast bench`: load generators that print a JSON report. Each workload is one
//! file; they share the latency summary here.

pub mod client;
pub(crate) mod fanout;
pub(crate) mod so;
pub(crate) mod so_rtmp;
pub mod synth;

/// A loopback port that binds now, for a server process (a node the test harness or
/// `raftcast-chaos` starts) to bind later.
///
/// Taken from below the kernel's ephemeral range (32768–60999 on Linux), never from
/// it: a port the kernel hands out for `:0` is the same pool every outgoing connection
/// draws from, so between our release and the server's bind a client could take it
/// ("Address already in use"). Ports are handed out once per process (a counter from a
/// pid-derived start), and only if they bind now.
pub fn free_loopback_port() -> std::io::Result<u16> {
    free_loopback_range(1)
}

/// The first of `len` consecutive loopback ports that all bind now, from the same pool
/// and for the same reason as [`free_loopback_port`] (below the ephemeral range), for a
/// script that numbers its nodes' ports from a base (`scripts/bootstrap.sh`).
pub fn free_loopback_range(len: u16) -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // up to 31999, below the ephemeral range
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let len = u32::from(len.max(1));
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let base = LOW + NEXT.fetch_add(len, Ordering::SeqCst) % SPAN;
        if base + len > LOW + SPAN {
            continue;
        }
        let free = (base..base + len).all(|port| std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok());
        if free {
            return Ok(base as u16);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no {len} free loopback ports in a row in {LOW}..{}", LOW + SPAN),
    ))
}

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Shared-object writes through the admin API.
    So(so::SoArgs),
    /// Synthetic publishers and many players through RTMP servers: continuity,
    /// latency, time to first frame, server CPU and memory.
    Fanout(fanout::FanoutArgs),
    /// Many concurrent publishers of the synthetic stream, optionally with players
    /// checking what the server delivers.
    Publish(fanout::PublishArgs),
    /// Idle RTMP connections, for memory per connection.
    Idle(fanout::IdleArgs),
    /// Shared objects through RTMP on two edges: write-to-subscriber latency and
    /// committed writes per second.
    SoRtmp(so_rtmp::SoRtmpArgs),
}

/// Entry point of `raftcast bench`.
pub fn main(command: BenchCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        BenchCommand::So(args) => runtime.block_on(so::run(args)),
        BenchCommand::Fanout(args) => runtime.block_on(fanout::run(args)),
        BenchCommand::Publish(args) => runtime.block_on(fanout::run_publish(args)),
        BenchCommand::Idle(args) => runtime.block_on(fanout::idle(args)),
        BenchCommand::SoRtmp(args) => runtime.block_on(so_rtmp::run(args)),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    /// Summarizes samples (sorted in place).
    pub(crate) fn of(samples: &mut [Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1000.0
        };
        Some(Latency { p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99), max_ms: at(1.0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(&mut s).unwrap();
        assert_eq!((l.p50_ms.round(), l.p99_ms, l.max_ms), (51.0, 99.0, 100.0));
        assert!(Latency::of(&mut []).is_none());
    }
}
