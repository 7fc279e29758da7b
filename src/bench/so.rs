//! `raftcast bench so`: concurrent shared-object writes (PUT slot) through the admin
//! API, spread round-robin over the given origins as real clients would be.
//!
//! `--target etcd` runs the same clients against an etcd cluster's v3 JSON gateway
//! (`POST /v3/kv/put`), so the two systems are measured by one tool: the same HTTP
//! client (keep-alive, one pooled connection per worker), the same key per write
//! (`bench-<object>/w<worker>-<n mod 64>`), the same value size, the same round-robin
//! over the given endpoints, one write in flight per worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::Latency;

/// What `bench so` writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// raftcast origins: `PUT /shared-objects/{object}/slots/{slot}`.
    Raftcast,
    /// etcd members' v3 JSON gateway: `POST /v3/kv/put`.
    Etcd,
}

#[derive(Debug, Args)]
pub struct SoArgs {
    /// What the addresses are.
    #[arg(long, value_enum, default_value = "raftcast")]
    target: Target,
    /// Origin admin addresses (or etcd client addresses), comma-separated.
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
    /// Writes per second over all clients (an open-loop pace: write k is due k/RATE s
    /// after the start, and a client that is late sends at once); unset: as fast as the
    /// clients go. The rate reached is at most what --concurrency clients sustain.
    #[arg(long)]
    rate: Option<f64>,
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
    target: Target,
    concurrency: usize,
    /// The pace asked for (`--rate`), writes per second; `null`: unpaced.
    rate: Option<f64>,
    origins: Vec<String>,
    writes: u64,
    errors: u64,
    /// Writes refused with 429 `overloaded` (admission control); each worker waits the
    /// `Retry-After` (1 s) before its next write, as a polite client would.
    overloaded: u64,
    seconds: f64,
    writes_per_sec: f64,
    /// Value bytes of the acknowledged writes per second.
    value_bytes_per_sec: f64,
    latency: Option<Latency>,
}

pub async fn run(args: SoArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.concurrency > 0 && args.objects > 0, "--concurrency and --objects must be positive");
    let pacer = match args.rate {
        Some(rate) => Some(Arc::new(Pacer::new(rate).context("--rate must be positive and finite")?)),
        None => None,
    };
    let token = match args.target {
        Target::Raftcast => crate::secrets::admin_token(args.token_file.as_deref()).map_err(anyhow::Error::msg)?,
        Target::Etcd => None,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("HTTP client")?;
    let budget = Arc::new(AtomicU64::new(args.writes.unwrap_or(u64::MAX)));
    let errors = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let value = "v".repeat(args.value_bytes);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let progress = tokio::spawn({
        let (done, errors) = (done.clone(), errors.clone());
        async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "{:.0} s: {now} writes ({}/s), {} errors",
                    started.elapsed().as_secs_f64(),
                    now - last,
                    errors.load(Ordering::Relaxed)
                );
                last = now;
            }
        }
    });
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = client.clone();
        let token = token.clone();
        let origins = args.origins.clone();
        let budget = budget.clone();
        let (errors, done, overloaded) = (errors.clone(), done.clone(), overloaded.clone());
        let value = value.clone();
        let object = format!("bench-{}", w % args.objects);
        let target = args.target;
        let pacer = pacer.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for n in 0u64.. {
                if let Some(pacer) = &pacer {
                    let due = started + pacer.next();
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                let took_one = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok();
                if Instant::now() >= deadline || !took_one {
                    break;
                }
                let origin = &origins[(w + n as usize) % origins.len()];
                let slot = format!("w{w}-{}", n % 64);
                let mut req = match target {
                    Target::Raftcast => {
                        client.put(format!("http://{origin}/shared-objects/{object}/slots/{slot}")).json(&value)
                    }
                    Target::Etcd => client.post(format!("http://{origin}/v3/kv/put")).json(&serde_json::json!({
                        "key": base64(format!("{object}/{slot}").as_bytes()),
                        "value": base64(value.as_bytes()),
                    })),
                };
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let t0 = Instant::now();
                let ok = match req.send().await {
                    Ok(res) if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                        overloaded.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Ok(res) if res.status().is_success() => match res.bytes().await {
                        Ok(body) => target == Target::Raftcast || etcd_put_revision(&body).is_ok(),
                        Err(_) => false,
                    },
                    _ => false,
                };
                if ok {
                    samples.push(t0.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
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
    let seconds = started.elapsed().as_secs_f64();
    let report = Report {
        workload: "so-write",
        target: args.target,
        concurrency: args.concurrency,
        rate: args.rate,
        origins: args.origins,
        writes: samples.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        overloaded: overloaded.load(Ordering::Relaxed),
        seconds,
        writes_per_sec: samples.len() as f64 / seconds,
        value_bytes_per_sec: (samples.len() * args.value_bytes) as f64 / seconds,
        latency: Latency::of(&mut samples),
    };
    Ok(serde_json::to_string_pretty(&report)?)
}

/// Hands out the due times of a paced run's writes, in order, to any number of
/// clients: write k is due k/rate seconds after the start, whoever sends it.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    next: AtomicU64,
}

impl Pacer {
    /// `None` unless `rate` (writes per second) is positive and finite.
    fn new(rate: f64) -> Option<Pacer> {
        (rate.is_finite() && rate > 0.0)
            .then(|| Pacer { interval: Duration::from_secs_f64(1.0 / rate), next: 0.into() })
    }

    /// When the next write is due, counted from the start.
    fn next(&self) -> Duration {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.interval.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX))
    }
}

/// Standard base64 with padding (what etcd's JSON gateway expects for `bytes` fields).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The revision an etcd `PutResponse` (JSON gateway) reports, or why the body is not
/// one. int64 fields come as strings in the gateway's JSON.
fn etcd_put_revision(body: &[u8]) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(message) = v.get("message").or_else(|| v.get("error")) {
        return Err(format!("etcd error: {message}"));
    }
    let revision = v.get("header").and_then(|h| h.get("revision")).ok_or("no header.revision")?;
    match revision {
        serde_json::Value::String(s) => s.parse().map_err(|e| format!("revision {s:?}: {e}")),
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("revision {n}")),
        other => Err(format!("revision {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_writes_are_due_one_interval_apart_whoever_takes_them() {
        let pacer = Pacer::new(100.0).unwrap();
        let taken: Vec<Duration> = (0..4).map(|_| pacer.next()).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(taken, [ms(0), ms(10), ms(20), ms(30)]);
        // Clients on other threads share the one sequence: no due time is handed out twice.
        let pacer = Arc::new(Pacer::new(1000.0).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let pacer = pacer.clone();
                std::thread::spawn(move || (0..250).map(|_| pacer.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1000);
        assert_eq!(all.last(), Some(&ms(999)));
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Pacer::new(rate).is_none(), "{rate}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn etcd_put_answers_parse() {
        // What etcd 3.4's gateway answers to POST /v3/kv/put.
        let ok = br#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"42","raft_term":"2"}}"#;
        assert_eq!(etcd_put_revision(ok), Ok(42));
        assert_eq!(etcd_put_revision(br#"{"header":{"revision":7}}"#), Ok(7));
        let err = br#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#;
        assert!(etcd_put_revision(err).unwrap_err().contains("timed out"));
        assert!(etcd_put_revision(b"{}").is_err());
        assert!(etcd_put_revision(b"<html>").is_err());
    }
}
