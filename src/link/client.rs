//! The edge's end of a link to one origin: connects, says `Hello`, pings, notices a
//! dead or silent origin, and reconnects with backoff — for as long as the edge runs.
//!
//! The lifecycle is [`LinkState`]: `Connecting → Live → Backoff → Connecting …`. Frames
//! are sent only while `Live`; the layer above re-publishes and re-subscribes on every
//! `Up` (and resends what it buffered), so nothing here queues across reconnects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use raftcast_raft::rpc::ClusterSecret;
use raftcast_raft::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::frame::{FrameCodec, LinkFrame};
use super::protocol::{Control, PROTOCOL_VERSION};
use super::stream::{LinkReader, LinkStream, LinkWriter};
use crate::backoff::Backoff;
use crate::tls::peer::PeerTls;

/// Media frames waiting to be written to the origin; `send_wait` waits for room.
pub(crate) const SEND_QUEUE: usize = 1024;
/// Control frames waiting to be written to the origin, ahead of media; `send` fails
/// fast when it is full.
pub(crate) const CONTROL_QUEUE: usize = 1024;

/// Timing of a link.
#[derive(Debug, Clone, Copy)]
pub struct LinkTiming {
    /// How often to ping the origin.
    pub(crate) ping_every: Duration,
    /// Silence (no frame at all) after which the origin is considered dead.
    pub(crate) dead_after: Duration,
    /// Connect + Hello must finish within this.
    pub(crate) connect_timeout: Duration,
    /// First and longest pause between reconnect attempts (doubling).
    pub(crate) backoff: (Duration, Duration),
}

impl Default for LinkTiming {
    fn default() -> Self {
        LinkTiming {
            ping_every: Duration::from_millis(100),
            dead_after: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            backoff: (Duration::from_millis(50), Duration::from_secs(2)),
        }
    }
}

/// Where a link is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Live {
        origin: NodeId,
    },
    /// Waiting before the next attempt; `reason` says why the last one ended.
    Backoff {
        reason: String,
    },
}

/// What the link tells the layer above, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A (new) connection is live: publish and subscribe again.
    Up { origin: NodeId },
    /// The connection ended; everything in flight on it is lost.
    Down { reason: String },
    /// A frame from the origin (pongs are handled here).
    Frame(LinkFrame),
}

/// Why a frame was not sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the link is not live")]
    NotLive,
    #[error("the link's send queue is full")]
    Full,
}

/// A running link; dropping it does not stop the task (cancel its token for that).
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<LinkFrame>,
    control: mpsc::Sender<LinkFrame>,
    state: watch::Receiver<LinkState>,
    /// Cuts a reconnect pause short: someone waits for this link ([`LinkHandle::want`]).
    wanted: Arc<Notify>,
}

impl LinkHandle {
    /// Queues a control frame for the origin if the link is live. Control frames have
    /// a queue of their own ([`CONTROL_QUEUE`]), written before any media waiting, so
    /// a publish or a feed message never waits behind a burst of media; a control
    /// frame that must stay in order with a channel's media goes with the media
    /// ([`send_wait`](Self::send_wait)).
    pub fn send(&self, frame: LinkFrame) -> Result<(), SendError> {
        if !matches!(*self.state.borrow(), LinkState::Live { .. }) {
            return Err(SendError::NotLive);
        }
        self.control.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::NotLive,
        })
    }

    /// Queues a frame for the origin if the link is live, waiting up to `limit` for room
    /// in the send queue (a publisher's frames wait briefly rather than being lost to a
    /// momentary burst).
    pub(crate) async fn send_wait(&self, frame: LinkFrame, limit: Duration) -> Result<(), SendError> {
        if !matches!(*self.state.borrow(), LinkState::Live { .. }) {
            return Err(SendError::NotLive);
        }
        match tokio::time::timeout(limit, self.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::NotLive),
            Err(_) => Err(SendError::Full),
        }
    }

    pub(crate) fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub(crate) fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Someone needs this link now (a stream was placed on this origin): if it is
    /// pausing between reconnects, the next attempt comes at once, or
    /// [`MIN_RECONNECT_GAP`] after the last one if that was more recent. The pauses
    /// double up to seconds while an origin is down; without this, an origin that came
    /// back and was given streams at once (an undrain in a rolling restart) made their
    /// publishers and players wait out the rest of the pause: a second's stall in
    /// `scripts/moves-under-load.sh`. Many callers wanting a dead origin cost at most
    /// one attempt per [`MIN_RECONNECT_GAP`].
    pub(crate) fn want(&self) {
        if !matches!(*self.state.borrow(), LinkState::Live { .. }) {
            self.wanted.notify_one();
        }
    }
}

/// The shortest time between two connection attempts that [`LinkHandle::want`] causes.
pub(crate) const MIN_RECONNECT_GAP: Duration = Duration::from_millis(50);

/// Starts a link to the origin at `addr` (over mutual TLS with `tls`). Events go to
/// `events` (bounded: the link waits for the layer above to keep up).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    addr: SocketAddr,
    edge: String,
    secret: ClusterSecret,
    tls: Option<Arc<PeerTls>>,
    timing: LinkTiming,
    events: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) -> LinkHandle {
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (state_tx, state) = watch::channel(LinkState::Connecting);
    let wanted = Arc::new(Notify::new());
    // Detached from whichever session happened to open the link first.
    let span = tracing::info_span!(parent: None, "uplink", origin.addr = %addr);
    let outgoing = Outgoing { control: control_rx, media: rx };
    let link = Link { addr, edge, secret, tls, timing, wanted: wanted.clone() };
    tokio::spawn(tracing::Instrument::instrument(run(link, outgoing, state_tx, events, shutdown), span));
    LinkHandle { tx, control, state, wanted }
}

/// What the edge queued for the origin: control first, then media.
struct Outgoing {
    control: mpsc::Receiver<LinkFrame>,
    media: mpsc::Receiver<LinkFrame>,
}

/// Where a link goes and how it behaves.
struct Link {
    addr: SocketAddr,
    edge: String,
    secret: ClusterSecret,
    tls: Option<Arc<PeerTls>>,
    timing: LinkTiming,
    wanted: Arc<Notify>,
}

async fn run(
    link: Link,
    mut outgoing: Outgoing,
    state: watch::Sender<LinkState>,
    events: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) {
    let Link { addr, edge, secret, tls, timing, wanted } = link;
    let mut backoff = Backoff::new(timing.backoff.0, timing.backoff.1);
    loop {
        let attempted = tokio::time::Instant::now();
        state.send_replace(LinkState::Connecting);
        let connected = tokio::select! {
            c = tokio::time::timeout(timing.connect_timeout, connect(addr, &edge, &secret, tls.as_deref())) => c,
            _ = shutdown.cancelled() => return,
        };
        let reason = match connected {
            Ok(Ok((socket, origin, buf))) => {
                let (reader, writer) = socket;
                tracing::info!(origin, "link up");
                backoff.reset();
                // Frames queued for a previous connection belong to it.
                while outgoing.control.try_recv().is_ok() {}
                while outgoing.media.try_recv().is_ok() {}
                state.send_replace(LinkState::Live { origin });
                if events.send(LinkEvent::Up { origin }).await.is_err() {
                    return;
                }
                let reason = tokio::select! {
                    r = live(reader, writer, buf, &timing, &mut outgoing, &events) => r,
                    _ = shutdown.cancelled() => return,
                };
                // The state leaves `Live` before anyone hears `Down`, so a sender that
                // reacts to the event can never still get a frame queued.
                state.send_replace(LinkState::Backoff { reason: reason.clone() });
                let _ = events.send(LinkEvent::Down { reason: reason.clone() }).await;
                reason
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no welcome within {:?}", timing.connect_timeout),
        };
        let pause = backoff.next_pause();
        tracing::warn!(reason, ?pause, "link down");
        state.send_replace(LinkState::Backoff { reason });
        // A want stored since the last pause (during an attempt) wakes this one at once:
        // the next attempt still waits out MIN_RECONNECT_GAP from the last.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wanted.notified() => {
                tracing::debug!("link wanted: reconnecting before the pause ends");
                tokio::time::sleep_until(attempted + MIN_RECONNECT_GAP).await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Connects (with `tls`, a TLS handshake too) and exchanges `Hello`/`Welcome`.
async fn connect(
    addr: SocketAddr,
    edge: &str,
    secret: &ClusterSecret,
    tls: Option<&PeerTls>,
) -> Result<((LinkReader, LinkWriter), NodeId, BytesMut), String> {
    let socket = LinkStream::connect(addr, tls).await.map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = socket.split();
    let hello =
        Control::Hello { protocol: PROTOCOL_VERSION, edge: edge.to_owned(), secret: secret.as_str().to_owned() };
    let mut out = BytesMut::new();
    FrameCodec::encode(&LinkFrame::Control(hello), &mut out);
    writer.write_all(&out).await.map_err(|e| format!("hello: {e}"))?;
    writer.flush().await.map_err(|e| format!("hello: {e}"))?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match FrameCodec::decode(&mut buf).map_err(|e| e.to_string())? {
            Some(LinkFrame::Control(Control::Welcome { origin, .. })) => return Ok(((reader, writer), origin, buf)),
            Some(LinkFrame::Control(Control::Refused { reason })) => return Err(format!("refused: {reason}")),
            Some(other) => return Err(format!("expected Welcome, got {other:?}")),
            None => {}
        }
        if reader.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before Welcome".into());
        }
    }
}

/// Runs a live connection until it fails; returns why.
async fn live(
    mut reader: LinkReader,
    mut writer: LinkWriter,
    mut buf: BytesMut,
    timing: &LinkTiming,
    outgoing: &mut Outgoing,
    events: &mpsc::Sender<LinkEvent>,
) -> String {
    let mut ping = tokio::time::interval(timing.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(64);
    let mut control_batch = Vec::with_capacity(64);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        // Deliver everything already decoded before waiting again.
        loop {
            match FrameCodec::decode(&mut buf) {
                Ok(Some(LinkFrame::Control(Control::Pong { .. }))) => {}
                Ok(Some(LinkFrame::Control(Control::Ping { seq }))) => {
                    FrameCodec::encode(&LinkFrame::Control(Control::Pong { seq }), &mut out);
                }
                Ok(Some(frame)) => {
                    if events.send(LinkEvent::Frame(frame)).await.is_err() {
                        return "the edge stopped".into();
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("bad frame from the origin: {e}"),
            }
        }
        if !out.is_empty() {
            // A paused origin stops reading: bound the write by the same silence limit.
            let write = async {
                writer.write_all(&out).await?;
                writer.flush().await
            };
            match tokio::time::timeout_at(last_heard + timing.dead_after, write).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(e)) => return format!("write: {e}"),
                Err(_) => return format!("origin silent for {:?}", timing.dead_after),
            }
        }
        let silence = tokio::time::sleep_until(last_heard + timing.dead_after);
        tokio::select! {
            // Control before media: a publish or a feed message never queues behind a
            // burst of frames.
            biased;
            n = outgoing.control.recv_many(&mut control_batch, 64) => {
                if n == 0 {
                    return "the edge stopped".into();
                }
                for frame in control_batch.drain(..) {
                    FrameCodec::encode(&frame, &mut out);
                }
            }
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => return "closed by the origin".into(),
                Ok(_) => last_heard = tokio::time::Instant::now(),
                Err(e) => return format!("read: {e}"),
            },
            n = outgoing.media.recv_many(&mut batch, 64) => {
                if n == 0 {
                    return "the edge stopped".into();
                }
                for frame in batch.drain(..) {
                    FrameCodec::encode(&frame, &mut out);
                }
            }
            _ = ping.tick() => {
                seq += 1;
                FrameCodec::encode(&LinkFrame::Control(Control::Ping { seq }), &mut out);
            }
            _ = silence => return format!("origin silent for {:?}", timing.dead_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::TcpListener;

    use super::*;

    /// Answers every link's `Hello` with `Welcome` from origin 7, then holds it.
    async fn fake_origin(listener: TcpListener) {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while !matches!(FrameCodec::decode(&mut buf), Ok(Some(_))) {
                    if socket.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                let mut out = BytesMut::new();
                FrameCodec::encode(
                    &LinkFrame::Control(Control::Welcome { protocol: PROTOCOL_VERSION, origin: 7 }),
                    &mut out,
                );
                let _ = socket.write_all(&out).await;
                while socket.read_buf(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    }

    #[tokio::test]
    async fn a_wanted_link_reconnects_before_its_pause_ends() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Nothing listens there yet: the first attempt fails, then a 5 s pause.
        let timing = LinkTiming { backoff: (Duration::from_secs(5), Duration::from_secs(5)), ..LinkTiming::default() };
        let (events, _keep) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let secret = ClusterSecret::new("a-test-secret-that-is-long-enough").unwrap();
        let link = spawn(addr, "edge-t".into(), secret, None, timing, events, shutdown.clone());
        let mut state = link.watch();
        tokio::time::timeout(Duration::from_secs(2), state.wait_for(|s| matches!(s, LinkState::Backoff { .. })))
            .await
            .expect("the first attempt fails")
            .unwrap();
        // The origin comes up and a stream needs it: the link does not wait out 5 s.
        tokio::spawn(fake_origin(TcpListener::bind(addr).await.unwrap()));
        let wanted = Instant::now();
        link.want();
        tokio::time::timeout(Duration::from_secs(1), state.wait_for(|s| matches!(s, LinkState::Live { origin: 7 })))
            .await
            .expect("live within a second of being wanted")
            .unwrap();
        assert!(wanted.elapsed() < Duration::from_millis(500), "{:?}", wanted.elapsed());
        shutdown.cancel();
    }
}
