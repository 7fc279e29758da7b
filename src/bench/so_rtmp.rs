//! `raftcast bench so-rtmp`: shared objects as RTMP clients use them. Writers on one
//! edge set slots to their send time; a subscriber on another edge measures how long
//! each change takes to reach it (write-to-subscriber latency across edges), and the
//! writers count committed writes per second — all on one object, or each writer on
//! its own object (cluster-wide).
//!
//! Every writer is one RTMP connection; the edge allows each connection 50 messages
//! per second, so writers × 50 bounds the offered rate. Writers pass `--token` (a write
//! token covering the object names, e.g. `ctl tokens sign --object-prefix bench-so
//! --write`) on their connect URL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use super::client::RtmpClient;
use super::Latency;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::session::ClientEvent;
use crate::rtmp::shared_object::{self, SoEvent, SoMessage};

#[derive(Debug, Args)]
pub struct SoRtmpArgs {
    /// RTMP address of the edge the writers use.
    #[arg(long, default_value = "127.0.0.1:1935")]
    writer: SocketAddr,
    /// RTMP address of the edge the subscriber uses.
    #[arg(long, default_value = "127.0.0.1:1936")]
    reader: SocketAddr,
    /// Writer connections.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Writes per second per writer (the edge allows 50).
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Each writer writes its own object (cluster-wide) instead of all sharing one.
    #[arg(long)]
    spread: bool,
    /// Object name (prefix, with --spread).
    #[arg(long, default_value = "bench-so")]
    object: String,
    /// Write token for the objects (`ctl tokens sign --object-prefix bench-so --write`).
    #[arg(long, env = "RAFTCAST_SO_TOKEN")]
    token: String,
}

#[derive(Debug, Serialize)]
struct Report {
    writers: usize,
    objects: usize,
    seconds: f64,
    writes_sent: u64,
    writes_committed: u64,
    write_errors: u64,
    committed_per_second: f64,
    /// From the writer's send to the subscriber on the other edge receiving the change.
    write_to_subscriber_ms: Option<Latency>,
    changes_received: usize,
}

fn now_us(origin: Instant) -> f64 {
    origin.elapsed().as_secs_f64() * 1e6
}

async fn use_object(client: &mut RtmpClient, name: &str) -> anyhow::Result<()> {
    let body = shared_object::encode(&SoMessage {
        name: name.to_owned(),
        version: 0,
        persistent: false,
        events: vec![SoEvent::Use],
    });
    client.send_shared_object(Bytes::from(body), false).await?;
    loop {
        match client.next_event().await? {
            Some(ClientEvent::SharedObject { payload, .. }) => {
                let msg = shared_object::decode(&payload)?;
                if msg.name == name && msg.events.contains(&SoEvent::UseSuccess) {
                    return Ok(());
                }
            }
            Some(_) => {}
            None => anyhow::bail!("the edge closed the connection"),
        }
    }
}

pub async fn run(args: SoRtmpArgs) -> anyhow::Result<String> {
    let origin = Instant::now();
    let objects: Vec<String> = if args.spread {
        (0..args.writers).map(|i| format!("{}-{i}", args.object)).collect()
    } else {
        vec![args.object.clone()]
    };
    // The subscriber uses every object before anyone writes.
    let mut reader = RtmpClient::connect(args.reader, "live").await?;
    for name in &objects {
        use_object(&mut reader, name).await?;
    }
    let duration = Duration::from_secs_f64(args.duration);
    let reading = tokio::spawn(async move {
        let mut samples = Vec::new();
        let stop = Instant::now() + duration + Duration::from_secs(3);
        while let Ok(Ok(Some(event))) = tokio::time::timeout_at(stop.into(), reader.next_event()).await {
            let ClientEvent::SharedObject { payload, .. } = event else { continue };
            let Ok(msg) = shared_object::decode(&payload) else { continue };
            let at = now_us(origin);
            for e in msg.events {
                if let SoEvent::Change { value: Amf0Value::Number(sent), .. } = e {
                    samples.push(Duration::from_secs_f64(((at - sent) / 1e6).max(0.0)));
                }
            }
        }
        samples
    });
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for i in 0..args.writers {
        let name = objects[i % objects.len()].clone();
        let (addr, rate, sent) = (args.writer, args.rate, sent.clone());
        let app = format!("live?token={}", args.token);
        writers.push(tokio::spawn(async move {
            let mut client = RtmpClient::connect(addr, &app).await?;
            use_object(&mut client, &name).await?;
            let slot = format!("w{i}");
            let every = Duration::from_secs_f64(1.0 / rate);
            let started = Instant::now();
            let (mut committed, mut errors) = (0u64, 0u64);
            let mut next = started;
            while started.elapsed() < duration {
                if Instant::now() >= next {
                    next += every;
                    let body = shared_object::encode(&SoMessage {
                        name: name.clone(),
                        version: 0,
                        persistent: false,
                        events: vec![SoEvent::RequestChange {
                            key: slot.clone(),
                            value: Amf0Value::Number(now_us(origin)),
                        }],
                    });
                    client.send_shared_object(Bytes::from(body), false).await?;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let wait = next.saturating_duration_since(Instant::now());
                if let Ok(event) = tokio::time::timeout(wait, client.next_event()).await {
                    let Some(ClientEvent::SharedObject { payload, .. }) = event? else { continue };
                    let msg = shared_object::decode(&payload)?;
                    for e in msg.events {
                        match e {
                            SoEvent::Success { .. } => committed += 1,
                            SoEvent::Status { .. } => errors += 1,
                            _ => {}
                        }
                    }
                }
            }
            // Answers still in flight.
            while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_secs(2), client.next_event()).await {
                if let ClientEvent::SharedObject { payload, .. } = event {
                    let msg = shared_object::decode(&payload)?;
                    committed += msg.events.iter().filter(|e| matches!(e, SoEvent::Success { .. })).count() as u64;
                }
            }
            anyhow::Ok((committed, errors))
        }));
    }
    let (mut committed, mut errors) = (0, 0);
    for w in writers {
        let (c, e) = w.await??;
        committed += c;
        errors += e;
    }
    let mut samples = reading.await?;
    let report = Report {
        writers: args.writers,
        objects: objects.len(),
        seconds: args.duration,
        writes_sent: sent.load(std::sync::atomic::Ordering::Relaxed),
        writes_committed: committed,
        write_errors: errors,
        committed_per_second: committed as f64 / args.duration,
        changes_received: samples.len(),
        write_to_subscriber_ms: Latency::of(&mut samples),
    };
    Ok(serde_json::to_string_pretty(&report)?)
}
