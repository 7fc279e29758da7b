//! The origin's side of the edge↔origin link: accepts links from edges, authenticates
//! them, takes publishers' media under their claim's epoch into a per-stream [`Hub`],
//! and fans each stream out once per subscribed edge.
//!
//! One task reads each link; one task writes it from a bounded queue; one pump task per
//! subscription moves frames from the hub's bounded reader queue (which skips to the
//! next keyframe when the edge falls behind) into the link's queue. A publish whose
//! claim is not applied here yet waits in a task of its own, never on the read loop.
//! One task follows the applied claims and fences publishers whose claim was
//! released, moved to another origin or superseded.
//!
//! Per stream, the owner knows the attached publisher, the subscribed edges and the
//! ingest counters; [`LinkContext::live_streams`] reports them. A new publishing
//! session's HLS numbering continues after the last mark of the claim right before its
//! own (`numbering`, `history`), asked of that claim's owner when it was another
//! origin. Never knows RTMP.

mod feed;
mod held;
mod history;
mod link;
mod numbering;
mod recent;
mod registry;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use raftcast_raft::rpc::constant_time_eq;
use raftcast_raft::state::Event;
use raftcast_storage::Notice;
use raftcast_storage::RecvError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use numbering::{Ask, AskPrevious, NotFinal};
pub use registry::{LinkContext, LiveStream};

use crate::limits::{Limit, Permit};
use crate::link::frame::{MAX_FRAME, MAX_UNAUTHENTICATED};
use crate::link::stream::{LinkReader, LinkStream, LinkWriter};
use crate::link::{Control, FrameCodec, LinkFrame, OLDEST_PROTOCOL, PROTOCOL_VERSION};
use crate::tls::peer::PeerTls;
use crate::tls::HandshakeStats;
use link::Link;

/// Most authenticated edge links an origin holds at once; a link that says a valid
/// `Hello` while all are taken is refused (the edge retries with backoff).
pub const MAX_LINKS: usize = 256;
/// Frames queued for one link's writer. Pumps wait when it is full; the hub's reader
/// queue behind each pump is what drops (to a keyframe) when an edge cannot keep up.
pub const LINK_SEND_QUEUE: usize = 1024;
/// Control frames queued for one link's writer, written ahead of media.
pub const LINK_CONTROL_QUEUE: usize = 1024;

/// The media-link port's caps, stated beside its accept loop ([`serve`]).
#[derive(Debug, Clone)]
pub struct LinkCaps {
    /// Connections that have not said `Hello` yet: per address and in all. They wait
    /// in this pool of their own and never hold one of the [`MAX_LINKS`] slots.
    pub unauthenticated: Arc<Limit>,
    /// The whole `Hello` must arrive within this long.
    pub hello_timeout: Duration,
}

impl LinkCaps {
    /// At most `per_address` and `total` connections before their `Hello`, each within
    /// `hello_timeout`.
    pub fn new(per_address: usize, total: usize, hello_timeout: Duration) -> LinkCaps {
        LinkCaps { unauthenticated: Limit::new("link_unauthenticated", per_address, total), hello_timeout }
    }
}
/// A drained link read buffer larger than this is replaced ([`shrink_when_drained`]).
const READ_BUFFER_KEEP: usize = 256 * 1024;
/// The capacity it is replaced with.
const READ_BUFFER_START: usize = 16 * 1024;
/// A link silent for this long is dead (edges ping every 100 ms).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(2);
/// How long a publish waits for this origin to apply the claim it names.
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);
/// How long a new session's publish waits, its claim applied, for the owner of the
/// claim before (another origin) to say where the stream's numbering stood; without
/// an answer in time the session is numbered from the wall clock. A live owner answers
/// within a round trip once it has applied the new claim (it learns the commit within
/// a heartbeat, 50 ms); a dead one refuses the connection at once or misses the
/// 300 ms connect timeout (`crate::peer::CONNECT_TIMEOUT`). The publish's media is
/// held meanwhile ([`PENDING_FRAMES`]), and [`CLAIM_WAIT`] plus this stays within the
/// 3 s an edge waits for the answer to its `Publish`.
pub const PREVIOUS_OWNER_WAIT: Duration = Duration::from_millis(750);
/// How often a link looks again at what its publishing edge should keep of each
/// stream's HLS window (`RetainWindow`, [`link::WINDOW_GRACE`]).
const WINDOW_SWEEP: Duration = Duration::from_secs(2);
/// Publishes one link may have waiting for their claims at once; more are refused
/// (the edge retries). Also the capacity of the link's queue of finished waits, so a
/// waiter never waits for room in it for long.
pub const MAX_PENDING_PUBLISHES: usize = 8;

/// Counters of the link server, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Authenticated links open now.
    pub links: Gauge,
    /// Bytes read from and written to links.
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Links refused: at accept (caps before `Hello`), at `Hello` (silent, too large,
    /// wrong secret or protocol), or with every link slot taken.
    pub refused: Counter,
    /// Media frames dropped while their publish waited for its claim (overflow, or the
    /// publish was refused or withdrawn).
    pub pending_dropped: Counter,
    /// Make-before-break moves away from this origin: the publisher left once it had
    /// attached to the new owner, or the grace ran out first.
    pub handovers_completed: Counter,
    pub handovers_expired: Counter,
    /// Live frames: from an ingest link to an edge's link (see [`crate::media::hop`]).
    pub hop: crate::media::hop::HopLatency,
}

/// Follows the applied claims: after each change of a stream's claim, reconciles
/// what this origin serves of it (see [`LinkContext::reconcile`]).
async fn follow_claims(ctx: LinkContext, shutdown: CancellationToken) {
    let mut notices = ctx.state.subscribe();
    // Whatever changed before we subscribed.
    ctx.claims_resync();
    ctx.reconcile_all();
    loop {
        let notice = tokio::select! {
            notice = notices.recv() => notice,
            _ = shutdown.cancelled() => return,
        };
        match notice {
            Ok(Notice::Applied { index, events }) => {
                for event in events.iter() {
                    if let Event::Stream { stream, claim } = event {
                        ctx.claim_changed(stream, claim.as_ref());
                        ctx.reconcile(stream);
                        ctx.feeds.changed(stream);
                    }
                }
                ctx.claims_followed(index);
            }
            // Missed changes, or a whole new state: look at everything.
            Ok(Notice::Replaced { .. }) | Err(RecvError::Lagged(_)) => {
                ctx.claims_resync();
                ctx.reconcile_all();
                ctx.feeds.changed_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Accepts links until `shutdown`. Caps:
///
/// - before `Hello`: `--link-max-unauthenticated[-per-address]` connections (over it,
///   closed at accept), frames of at most [`MAX_UNAUTHENTICATED`] bytes, and the whole
///   `Hello` within `--link-hello-timeout-ms`; none of this holds a link slot;
/// - after `Hello`: [`MAX_LINKS`] authenticated links (over it, `Refused`), frames up
///   to [`crate::link::frame::MAX_FRAME`].
///
/// With `tls` (the cluster's mutual TLS) a link first completes a TLS handshake with a
/// member's certificate, within the same `Hello` deadline.
pub async fn serve(
    listener: TcpListener,
    ctx: LinkContext,
    caps: LinkCaps,
    tls: Option<(Arc<PeerTls>, Arc<HandshakeStats>)>,
    shutdown: CancellationToken,
) {
    tokio::spawn(follow_claims(ctx.clone(), shutdown.clone()).in_current_span());
    let slots = Arc::new(Semaphore::new(MAX_LINKS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a link failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let unauthenticated = match caps.unauthenticated.try_acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                ctx.stats.refused.inc();
                tracing::debug!(%peer, %refused, "link refused at accept");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let link = ctx.next_link.fetch_add(1, Ordering::Relaxed);
        let tls = tls.clone();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let slots = slots.clone();
        let hello_timeout = caps.hello_timeout;
        let span = tracing::info_span!("link", link, peer = %peer);
        tokio::spawn(
            async move {
                let deadline = tokio::time::Instant::now() + hello_timeout;
                let stream = match &tls {
                    None => LinkStream::Plain(socket),
                    Some((tls, handshakes)) => {
                        let accepted = tokio::time::timeout_at(deadline, LinkStream::accept(socket, tls)).await;
                        match handshakes.record(accepted) {
                            Ok(stream) => stream,
                            Err(why) => {
                                // Not a member: no certificate, another CA's, or none in time.
                                ctx.stats.refused.inc();
                                tracing::warn!(error = %why, "link refused at the TLS handshake");
                                return;
                            }
                        }
                    }
                };
                match run_link(stream, link, &ctx, unauthenticated, &slots, deadline, shutdown).await {
                    Ok(()) => tracing::info!("link closed"),
                    Err(e) => tracing::warn!(error = %e, "link closed"),
                }
            }
            .instrument(span),
        );
    }
}

/// Reads one frame, waiting at most `limit`.
async fn read_frame(
    socket: &mut LinkReader,
    buf: &mut BytesMut,
    stats: &LinkStats,
    limit: Duration,
    max_frame: usize,
) -> Result<LinkFrame, String> {
    loop {
        if let Some(frame) = FrameCodec::decode_within(buf, max_frame).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let n = tokio::time::timeout(limit, socket.read_buf(buf))
            .await
            .map_err(|_| format!("silent for {limit:?}"))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the edge".into());
        }
        stats.bytes_in.inc_by(n as u64);
    }
}

async fn run_link(
    socket: LinkStream,
    link: u64,
    ctx: &LinkContext,
    unauthenticated: Permit,
    slots: &Arc<Semaphore>,
    hello_by: tokio::time::Instant,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let (mut reader, mut writer) = socket.split();
    let mut buf = BytesMut::with_capacity(MAX_UNAUTHENTICATED);
    // Authenticate before anything else; only a small frame is accepted here, and the
    // whole of it must come within one deadline (a drip does not reset it).
    let left = hello_by.saturating_duration_since(tokio::time::Instant::now());
    let hello =
        tokio::time::timeout_at(hello_by, read_frame(&mut reader, &mut buf, &ctx.stats, left, MAX_UNAUTHENTICATED))
            .await
            .map_err(|_| "no Hello in time after connecting".to_owned())
            .and_then(|read| read);
    let hello = match hello {
        Ok(hello) => hello,
        Err(e) => {
            ctx.stats.refused.inc();
            return Err(e);
        }
    };
    let spoken = OLDEST_PROTOCOL..=PROTOCOL_VERSION;
    let (edge, protocol) = match hello {
        LinkFrame::Control(Control::Hello { protocol, edge, secret })
            if spoken.contains(&protocol) && constant_time_eq(secret.as_bytes(), ctx.secret.as_str().as_bytes()) =>
        {
            (edge, protocol)
        }
        other => {
            ctx.stats.refused.inc();
            let reason = match other {
                LinkFrame::Control(Control::Hello { protocol, .. }) if !spoken.contains(&protocol) => {
                    format!("protocol {protocol} is not one of {OLDEST_PROTOCOL} to {PROTOCOL_VERSION}")
                }
                LinkFrame::Control(Control::Hello { .. }) => "wrong cluster secret".to_owned(),
                _ => "the first frame must be Hello".to_owned(),
            };
            let mut out = BytesMut::new();
            FrameCodec::encode(&LinkFrame::Control(Control::Refused { reason: reason.clone() }), &mut out);
            let _ = write_flushed(&mut writer, &out).await;
            return Err(reason);
        }
    };
    drop(unauthenticated);
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        ctx.stats.refused.inc();
        let reason = format!("this origin already holds {MAX_LINKS} links");
        let mut out = BytesMut::new();
        FrameCodec::encode(&LinkFrame::Control(Control::Refused { reason: reason.clone() }), &mut out);
        let _ = write_flushed(&mut writer, &out).await;
        return Err(reason);
    };
    tracing::info!(edge, "link up");
    ctx.stats.links.inc();
    let (tx, rx) = mpsc::channel::<LinkFrame>(LINK_SEND_QUEUE);
    let (control_tx, control_rx) = mpsc::channel::<LinkFrame>(LINK_CONTROL_QUEUE);
    let writer_task = tokio::spawn(write_link(writer, control_rx, rx, ctx.stats.clone()));
    let _ = control_tx.send(LinkFrame::Control(Control::Welcome { protocol, origin: ctx.id })).await;
    let (mut link, mut applied) = Link::new(link, edge, protocol, ctx.clone(), control_tx, tx);
    let nudge = link.nudge();
    let mut sweep = tokio::time::interval(WINDOW_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        // `read_frame` is cancel-safe: bytes read so far stay in `buf`.
        tokio::select! {
            frame = read_frame(&mut reader, &mut buf, &ctx.stats, SILENCE_LIMIT, MAX_FRAME) => match frame {
                Ok(frame) => {
                    link.handle(frame).await;
                    shrink_when_drained(&mut buf);
                }
                Err(e) => break Err(e),
            },
            Some(ready) = applied.recv() => link.claim_ready(ready).await,
            // What the publishing edge should keep of the HLS window: at once when a
            // stream becomes packaged somewhere, and every few seconds for the rest
            // (a grace ending, recording switched on or off).
            _ = nudge.notified() => link.retain_windows().await,
            _ = sweep.tick() => link.retain_windows().await,
            _ = shutdown.cancelled() => break Ok(()),
        }
    };
    link.close();
    drop(link);
    let _ = writer_task.await;
    ctx.stats.links.dec();
    result
}

/// A link's read buffer grows to the largest burst it was sent (64 KiB shared-object
/// values, a relay catching up) and `BytesMut` never gives capacity back: after the
/// 5-minute `flood-catchup` chaos schedule a heap profile of the leader found 1.2 MB
/// still held by one link's buffer, a minute after the last write. Once drained, a
/// buffer above [`READ_BUFFER_KEEP`] is replaced by a small one.
fn shrink_when_drained(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > READ_BUFFER_KEEP {
        *buf = BytesMut::with_capacity(READ_BUFFER_START);
    }
}

/// Writes `out` and flushes it (a TLS stream may otherwise hold it).
async fn write_flushed(writer: &mut LinkWriter, out: &[u8]) -> std::io::Result<()> {
    writer.write_all(out).await?;
    writer.flush().await
}

async fn write_link(
    mut writer: LinkWriter,
    mut control: mpsc::Receiver<LinkFrame>,
    mut rx: mpsc::Receiver<LinkFrame>,
    stats: Arc<LinkStats>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut frames = Vec::with_capacity(64);
    let mut controls = Vec::with_capacity(64);
    loop {
        // Control first (answers, refusals, the claims feed), then media: a burst of
        // frames never delays what the edge waits for. What must stay in order with a
        // channel's media (`Ended`, `WindowEnd`) goes with the media.
        let n = tokio::select! {
            biased;
            n = control.recv_many(&mut controls, 64) => n,
            n = rx.recv_many(&mut frames, 64) => n,
        };
        if n == 0 {
            return;
        }
        for frame in controls.drain(..).chain(frames.drain(..)) {
            FrameCodec::encode(&frame, &mut out);
        }
        let n = out.len();
        if write_flushed(&mut writer, &out).await.is_err() {
            return;
        }
        stats.bytes_out.inc_by(n as u64);
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_large_read_buffer_is_replaced_by_a_small_one() {
        let mut buf = BytesMut::with_capacity(1024 * 1024);
        buf.extend_from_slice(b"part of a frame");
        shrink_when_drained(&mut buf);
        assert!(buf.capacity() >= 1024 * 1024, "a buffer holding bytes keeps them and its capacity");
        buf.clear();
        shrink_when_drained(&mut buf);
        assert!(buf.capacity() <= READ_BUFFER_KEEP, "drained: {} bytes of capacity kept", buf.capacity());
        let mut small = BytesMut::with_capacity(READ_BUFFER_KEEP);
        let before = small.as_ptr();
        shrink_when_drained(&mut small);
        assert_eq!(small.as_ptr(), before, "a buffer within the bound is kept");
    }
}
