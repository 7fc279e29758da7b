//! A live RTMP stream through the edges: one synthetic publisher (every video frame
//! stamped with a sequence number) and players that record each frame's sequence and
//! arrival time and every disconnect. Clients reconnect after a disconnect, so one
//! failure does not hide the rest of the run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth::{self, StreamShape, Synth, SynthFrame};
use raftcast::rtmp::session::ClientEvent;
use tokio::sync::watch;

use super::Ctx;
use crate::history::{MediaEvent, MediaTrace};

pub const APP: &str = "live";
pub const STREAM: &str = "chaos";

/// "No frame sent yet."
pub const NONE: u64 = u64::MAX;

/// A light stream: 25 fps, a keyframe every 2 s, 600 kbit/s, no audio.
pub fn shape() -> StreamShape {
    StreamShape { video_kbps: 600, fps: 25, gop: 50, keyframe_ratio: 6, audio: false }
}

/// Publishes until `stop`; `last_sent` holds the newest video sequence sent.
pub async fn publisher(
    ctx: Ctx,
    addr: SocketAddr,
    last_sent: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> MediaTrace {
    let mut trace = MediaTrace { client: format!("publisher@{addr}"), events: Vec::new() };
    let mut synth = Synth::new(shape(), Instant::now());
    let started = tokio::time::Instant::now();
    let mut was_live = false;
    while !*stop.borrow() {
        let attempt = async {
            let mut c = RtmpClient::connect(addr, APP).await?;
            let id = c.publish(STREAM).await?;
            let (meta, avc, _) = synth::headers();
            c.send_data(id, 0, meta).await?;
            c.send_video(id, 0, avc).await?;
            anyhow::Ok((c, id))
        };
        let (mut c, id) = match attempt.await {
            Ok(v) => v,
            Err(e) => {
                if was_live {
                    trace.events.push(MediaEvent::Disconnect { t_us: ctx.now_us(), why: format!("republish: {e:#}") });
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        was_live = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(started + synth.next_due()) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return trace;
            }
            let (_, frame) = synth.next_frame();
            let sent = match frame {
                SynthFrame::Video { timestamp, payload, .. } => {
                    let seq = synth::read_stamp(&payload).map(|s| s.0);
                    c.send_video(id, timestamp, payload).await.map(|_| seq)
                }
                SynthFrame::Audio { timestamp, payload } => c.send_audio(id, timestamp, payload).await.map(|_| None),
            };
            match sent {
                Ok(Some(seq)) => last_sent.store(seq, Ordering::Release),
                Ok(None) => {}
                Err(e) => {
                    trace.events.push(MediaEvent::Disconnect { t_us: ctx.now_us(), why: format!("send: {e:#}") });
                    break;
                }
            }
        }
    }
    trace
}

/// Plays until `stop`; `last_seen` holds the newest sequence received.
pub async fn player(
    ctx: Ctx,
    name: String,
    addr: SocketAddr,
    last_seen: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> MediaTrace {
    let mut trace = MediaTrace { client: format!("{name}@{addr}"), events: Vec::new() };
    let mut was_playing = false;
    while !*stop.borrow() {
        let attempt = async {
            let mut c = RtmpClient::connect(addr, APP).await?;
            c.play(STREAM).await?;
            anyhow::Ok(c)
        };
        let mut c = match attempt.await {
            Ok(c) => c,
            Err(e) => {
                if was_playing {
                    trace.events.push(MediaEvent::Disconnect { t_us: ctx.now_us(), why: format!("replay: {e:#}") });
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        was_playing = true;
        loop {
            let event = tokio::select! {
                e = c.next_event() => e,
                _ = stop.changed() => return trace,
            };
            match event {
                Ok(Some(ClientEvent::Video { payload, .. })) => {
                    if let Some((seq, _)) = synth::read_stamp(&payload) {
                        trace.events.push(MediaEvent::Frame { t_us: ctx.now_us(), seq });
                        last_seen.fetch_max(seq.wrapping_add(1), Ordering::AcqRel);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    trace.events.push(MediaEvent::Disconnect { t_us: ctx.now_us(), why: "closed by the edge".into() });
                    break;
                }
                Err(e) => {
                    trace.events.push(MediaEvent::Disconnect { t_us: ctx.now_us(), why: format!("{e:#}") });
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    trace
}
