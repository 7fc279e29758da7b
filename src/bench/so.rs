//! `raftcast bench so`: concurrent shared-object writes (PUT slot) through the admin
//! API, spread round-robin over the given origins as real clients would be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::Latency;

#[derive(Debug, Args)]
pub struct SoArgs {
    /// Origin admin addresses, comma-separated.
    #[arg(
        long,
        env = "RAFTCAST_CTL_ORIGIN",
        default_value = "127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103",
        value_delimiter = ','
    )]
    origins: Vec<String>,
    /// File with the admin token [default: $RAFTCAST_DATA_DIR/admin-token when it exists].
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Concurrent clients, each with one write in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many seconds...
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// ...or after this many writes, whichever comes first.
    #[arg(long)]
    writes: Option<u64>,
    /// Objects written to (client i writes object i mod N).
    #[arg(long, default_value_t = 16)]
    objects: usize,
    /// Size of each written string value, in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    workload: &'static str,
    concurrency: usize,
    origins: Vec<String>,
    writes: u64,
    errors: u64,
    seconds: f64,
    writes_per_sec: f64,
    latency: Option<Latency>,
}

pub async fn run(args: SoArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.concurrency > 0 && args.objects > 0, "--concurrency and --objects must be positive");
    let token = crate::secrets::admin_token(args.token_file.as_deref()).map_err(anyhow::Error::msg)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("HTTP client")?;
    let budget = Arc::new(AtomicU64::new(args.writes.unwrap_or(u64::MAX)));
    let errors = Arc::new(AtomicU64::new(0));
    let value = serde_json::Value::String("v".repeat(args.value_bytes));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let progress = tokio::spawn({
        let budget = budget.clone();
        let total = args.writes;
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let left = budget.load(Ordering::Relaxed);
                if let Some(total) = total {
                    eprint!("\r{} / {total} writes", total - left.min(total));
                } else {
                    eprint!("\r{:.0} s", started.elapsed().as_secs_f64());
                }
            }
        }
    });
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = client.clone();
        let token = token.clone();
        let origins = args.origins.clone();
        let budget = budget.clone();
        let errors = errors.clone();
        let value = value.clone();
        let object = format!("bench-{}", w % args.objects);
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for n in 0u64.. {
                let took_one = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok();
                if Instant::now() >= deadline || !took_one {
                    break;
                }
                let origin = &origins[(w + n as usize) % origins.len()];
                let url = format!("http://{origin}/shared-objects/{object}/slots/w{w}-{}", n % 64);
                let mut req = client.put(url).json(&value);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let t0 = Instant::now();
                match req.send().await {
                    Ok(res) if res.status().is_success() => {
                        let _ = res.bytes().await;
                        samples.push(t0.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await?);
    }
    progress.abort();
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    let report = Report {
        workload: "so-write",
        concurrency: args.concurrency,
        origins: args.origins,
        writes: samples.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        writes_per_sec: samples.len() as f64 / seconds,
        latency: Latency::of(&mut samples),
    };
    Ok(serde_json::to_string_pretty(&report)?)
}
