//! Streams on an edge: publishers sending to their stream's owner origin, and relays
//! that subscribe once per stream to the owner and fan out to every local player.
//!
//! A [`Publication`] is one publishing session: claimed through the leader, accepted
//! by the owner under the claim's epoch, fed frames by the RTMP connection without ever
//! making it wait, and finished (unpublished and released) when dropped. Its forwarder
//! keeps the stream back to a keyframe ([`Retained`]); when the link to the owner is
//! lost it asks the leader to move the stream elsewhere (`Forward::Reassign` with the
//! expected epoch), or follows a move the leader made, attaches to the new owner and
//! re-sends from that keyframe — reading from the publisher all along. It also watches
//! the claim, and follows a move even while the old owner still answers (an owner cut
//! off from the other origins but not from this edge cannot fence it). Those decisions
//! are [`Publishing`]'s ([`super::publication`], no sockets, no clock); the forwarder
//! here only carries them out.
//!
//! A [`Relay`] exists while at least one player holds a [`Lease`] on it. It follows the
//! stream through the edge's claims feed ([`super::claims`]): subscribes on the
//! owner's link, re-subscribes at the new owner when ownership changes, and feeds one
//! local [`Hub`] per publishing generation through a [`Continuity`] filter that drops
//! what players already have and keeps timestamps monotonic; players wait on
//! [`Relay::hub`] for the current hub. Its hub keeps the HLS window (and the first
//! subscription asks the owner for the window's earlier frames) only while an HLS
//! packaging task holds an HLS lease ([`Relays::join_hls`]): a stream relayed to RTMP
//! and HTTP-FLV players only costs no window memory and no window transfer. When HLS
//! starts on a relay already subscribed, it fetches the owner's window on a channel of
//! its own (`FetchWindow`) and joins it to the live frames ([`Hub::splice_window`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftcast_raft::{Rejection, Response, StreamKey};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::claims::ClaimWatch;
use super::control::Owner;
use super::publication::{self, Publishing};
use super::relaying::{self, Followed, Relaying, RELAY_RETRY, WATCH_WAIT};
use super::upstream::{ChannelEvent, Sink, Upstream};
use super::EdgeContext;
use crate::hls::stamper::Stamper;
use crate::lease::{Leases, Released};
use crate::link::{ChannelId, Control, MediaFrame};
use crate::media::continuity::Continuity;
use crate::media::retain::{RetainLimits, Retained};
use crate::media::{Frame, Hub, HubLimits};
use crate::rtmp::session::PublishRejection;

/// Frames a publisher may have in flight towards its link before new ones are dropped
/// (counted): about 10 s of a 30 fps stream with audio. The RTMP connection never waits.
pub const PUBLISH_QUEUE: usize = 768;
/// How long a frame waits for room in the link's send queue.
const LINK_SEND_WAIT: Duration = Duration::from_millis(500);
/// How long the owner has to accept a publish or a subscription.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long to wait for a link to come up before trying again.
const LINK_WAIT: Duration = Duration::from_secs(2);
/// How long fetching the owner's HLS window (`FetchWindow`) may take before the
/// relay's window starts with the live frames only.
const WINDOW_FETCH_WAIT: Duration = Duration::from_secs(3);

/// A refused publish: the status code for the publisher and why.
pub type Refusal = (PublishRejection, String);

/// A publish refused for a reason inside the cluster: the reason (which may name
/// origins, their addresses or internal answers) goes to the log; the publisher hears
/// only that it may retry.
fn internal(stream: &StreamKey, why: String) -> Refusal {
    tracing::warn!(%stream, why, "publish refused");
    (PublishRejection::Failed, format!("{stream} cannot be published now; retry"))
}

/// One publishing session on this edge.
pub struct Publication {
    frames: mpsc::Sender<Frame>,
    dropped: Arc<AtomicU64>,
}

impl Publication {
    /// Claims `stream` and gets the owner to accept it. `fenced` is cancelled if a newer
    /// claim takes the stream away later.
    pub async fn start(
        ctx: &Arc<EdgeContext>,
        stream: StreamKey,
        session: String,
        key: Option<String>,
        fenced: CancellationToken,
    ) -> Result<Publication, Refusal> {
        // Followed before the claim, so the feed names the stream at its origin by the
        // time the claim applies there.
        let watch = ctx.claims.follow(ctx, &stream);
        let mut answer = ctx.control.claim(&stream, &ctx.config.id, &session, false, key.clone()).await;
        if matches!(answer, Ok(Response::Rejected(Rejection::StreamOwned { .. }))) {
            // Someone holds the stream: the leader lets this publisher take it over
            // only if that session is dead (a reconnecting publisher).
            answer = ctx.control.claim(&stream, &ctx.config.id, &session, true, key.clone()).await;
        }
        let claim = match answer {
            Ok(Response::Claimed(claim)) => claim,
            Ok(Response::Rejected(Rejection::StreamOwned { edge, .. })) => {
                tracing::info!(%stream, held_on = edge, "publish refused: the stream is held");
                return Err((PublishRejection::BadName, format!("{stream} is already being published")));
            }
            Ok(Response::Rejected(Rejection::PublishDenied)) => {
                return Err((PublishRejection::Denied, format!("publishing {stream} needs a valid key")))
            }
            // What went wrong inside the cluster is logged, not told to the publisher.
            Ok(other) => return Err(internal(&stream, format!("unexpected claim answer {other:?}"))),
            Err(e) => return Err(internal(&stream, format!("cannot claim: {e}"))),
        };
        let released = |why: String| {
            let (ctx, stream) = (ctx.clone(), stream.clone());
            let refusal = internal(&stream, why);
            tokio::spawn(async move { release(&ctx, &stream, claim.epoch).await });
            Err(refusal)
        };
        let owner = match watch.at_least(claim.epoch, ctx.config.request_deadline).await {
            Ok(owner) if owner.claim.epoch == claim.epoch => owner,
            Ok(_) => return Err((PublishRejection::BadName, format!("{stream} was claimed by another session"))),
            Err(e) => return released(format!("cannot find the owner: {e}")),
        };
        let up = ctx.upstreams.get(owner.media);
        if !up.live(LINK_WAIT).await {
            return released(format!("owner {} unreachable at {}", owner.claim.owner, owner.media));
        }
        let (channel, mut events) = up.open(None);
        let publish = Control::Publish { channel, stream: stream.clone(), epoch: claim.epoch };
        if let Err(e) = up.control(publish) {
            up.close(channel);
            return released(format!("link to origin {}: {e}", owner.claim.owner));
        }
        let continue_after = match wait_answer(&mut events).await {
            Some(Control::PublishAccepted { .. }) => None,
            Some(Control::PublishAcceptedAt { continue_after, .. }) => continue_after,
            Some(Control::PublishRefused { reason, .. }) => {
                up.close(channel);
                // A just-restarted or busy owner asks for a retry (the publisher may
                // try again); anything else means the claim is not ours any more.
                tracing::info!(%stream, origin = owner.claim.owner, %reason, "the owner refused the publish");
                if reason.retryable() {
                    return Err((PublishRejection::Failed, format!("{stream} cannot be published yet; retry")));
                }
                return Err((PublishRejection::BadName, format!("{stream} is published by another session")));
            }
            _ => {
                up.close(channel);
                return released(format!("origin {} did not accept {stream} in time", owner.claim.owner));
            }
        };
        tracing::info!(%stream, epoch = claim.epoch, owner = owner.claim.owner, ?continue_after, "publishing");
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let machine = Publishing::new(
            stream.clone(),
            ctx.config.id.clone(),
            session,
            claim.epoch,
            owner.claim.owner,
            Retained::new(retain_limits(&ctx.config)),
            Stamper::new(ctx.config.hls, continue_after),
        );
        let task = Forwarder {
            ctx: ctx.clone(),
            up,
            channel,
            key,
            machine,
            dropped: dropped.clone(),
            fenced,
            watch,
            previous: None,
        };
        tokio::spawn(task.run(rx, events));
        ctx.stats.publishers.fetch_add(1, Ordering::Relaxed);
        Ok(Publication { frames: tx, dropped })
    }

    /// Hands a frame to the forwarder; never waits. A full queue drops the frame
    /// (counted): the publisher's TCP session must never stall.
    pub fn push(&self, frame: Frame) {
        if self.frames.try_send(frame).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames lost on the way to the owner.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Waits for the first control answer on a fresh channel.
async fn wait_answer(events: &mut mpsc::Receiver<ChannelEvent>) -> Option<Control> {
    let answer = async {
        loop {
            match events.recv().await? {
                ChannelEvent::Control(c) => return Some(c),
                ChannelEvent::Down(_) => return None,
                ChannelEvent::Up => {}
            }
        }
    };
    tokio::time::timeout(ANSWER_WAIT, answer).await.ok().flatten()
}

async fn release(ctx: &EdgeContext, stream: &StreamKey, epoch: u64) {
    match ctx.control.release(stream, epoch).await {
        Ok(Response::Released) => tracing::info!(%stream, epoch, "released"),
        Ok(other) => tracing::info!(%stream, epoch, ?other, "release changed nothing"),
        // The owner releases orphaned claims after a grace period.
        Err(e) => tracing::warn!(%stream, epoch, error = %e, "release failed"),
    }
}

/// Carries out a publication's decisions ([`Publishing`]): writes frames on the owner's
/// link, sends the control requests of a move one at a time, and feeds back what
/// happens (link events, the claims feed, answers, wake-ups, the publisher's end).
struct Forwarder {
    ctx: Arc<EdgeContext>,
    up: Arc<Upstream>,
    channel: ChannelId,
    key: Option<String>,
    /// The decisions; also the stream and the session.
    machine: Publishing,
    dropped: Arc<AtomicU64>,
    fenced: CancellationToken,
    /// The stream's claim on the edge's claims feed.
    watch: ClaimWatch,
    /// The old owner's channel while a make-before-break move attaches to the new one
    /// ([`publication::Output::ClosePrevious`]).
    previous: Option<(Arc<Upstream>, ChannelId)>,
}

/// A publication attached to a (new) owner.
struct Attached {
    up: Arc<Upstream>,
    channel: ChannelId,
    events: mpsc::Receiver<ChannelEvent>,
}

/// The request of a move under way: its answer, and the channel an attach opened.
type Request = futures::future::BoxFuture<'static, (publication::Input, Option<Attached>)>;

impl Forwarder {
    async fn run(mut self, mut frames: mpsc::Receiver<Frame>, mut events: mpsc::Receiver<ChannelEvent>) {
        // While attached: waits for the claim to move past our epoch. An owner cut off
        // from the other origins, but not from this edge, keeps accepting our frames
        // after the leader moved the stream away from it; players follow the claim to
        // the new owner, so we must too, or they get nothing until the partition heals.
        let mut claim_moved = watch_claim(self.watch.clone(), self.machine.epoch());
        let mut request: Option<Request> = None;
        let mut wake: Option<tokio::time::Instant> = None;
        while !self.machine.is_ended() {
            let moving = self.machine.is_moving();
            // The owner's channel is heard while frames go on it: attached, or the old
            // owner of a make-before-break move.
            let writing = !moving || self.machine.keeps_old();
            let input = tokio::select! {
                frame = frames.recv() => match frame {
                    // The per-frame path: no decision to make unless the write fails.
                    Some(frame) => match self.machine.frame(frame, wall_ms()) {
                        Some(live) => match self.send(live).await {
                            Ok(()) => continue,
                            Err(e) => publication::Input::OwnerLost(e),
                        },
                        None => continue,
                    },
                    None => publication::Input::PublisherLeft,
                },
                event = events.recv(), if writing => match event {
                    Some(ChannelEvent::Down(reason)) => publication::Input::OwnerLost(format!("link down: {reason}")),
                    // The owner fenced us: the claim moved on. Ours still (the leader
                    // moved it), or someone else's: finding out is the same move.
                    Some(ChannelEvent::Control(Control::PublishRefused { reason, .. })) => {
                        publication::Input::OwnerLost(format!("refused: {reason}"))
                    }
                    Some(ChannelEvent::Control(Control::RetainWindow { keep, .. })) => {
                        if self.machine.retain_window(keep) {
                            tracing::info!(stream = %self.machine.stream(), keep, "the owner says whether a new owner needs the HLS window");
                        }
                        continue;
                    }
                    Some(_) => continue,
                    None => publication::Input::OwnerLost("channel closed".to_owned()),
                },
                epoch = &mut claim_moved, if !moving => publication::Input::ClaimMoved(epoch),
                answer = async { request.as_mut().expect("guarded").await }, if request.is_some() => {
                    request = None;
                    let (input, attached) = answer;
                    if let Some(attached) = attached {
                        // Publishing there from now on: what the machine sends next
                        // (the replay first) goes on this channel.
                        let old_up = std::mem::replace(&mut self.up, attached.up);
                        let old_channel = std::mem::replace(&mut self.channel, attached.channel);
                        if self.machine.keeps_old() {
                            self.previous = Some((old_up, old_channel));
                        }
                        events = attached.events;
                    }
                    input
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                    wake = None;
                    publication::Input::Woke
                }
                _ = self.ctx.shutdown.cancelled(), if moving => publication::Input::Shutdown,
            };
            for output in self.machine.handle(input, std::time::Instant::now()) {
                match output {
                    publication::Output::Replay(frames) => {
                        for frame in frames {
                            if self.send(frame).await.is_err() {
                                self.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    publication::Output::CloseChannel => self.up.close(self.channel),
                    publication::Output::ClosePrevious => {
                        if let Some((up, channel)) = self.previous.take() {
                            // Behind the frames queued there, so the old owner's
                            // players get every one of them before the stream ends.
                            let _ = up.control_after_media(Control::Unpublish { channel }, LINK_SEND_WAIT).await;
                            up.close(channel);
                        }
                    }
                    publication::Output::WatchClaim(epoch) => claim_moved = watch_claim(self.watch.clone(), epoch),
                    publication::Output::WakeAt(at) => wake = Some(at.into()),
                    publication::Output::Moved { owner, epoch, took, resent } => {
                        self.ctx.stats.publisher_failovers.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(stream = %self.machine.stream(), epoch, owner, ?took, resent, "publishing on a new owner");
                    }
                    publication::Output::Fenced(why) => {
                        tracing::warn!(stream = %self.machine.stream(), epoch = self.machine.epoch(), why, "fenced");
                        self.fenced.cancel();
                    }
                    publication::Output::Unpublish => {
                        let unpublish = Control::Unpublish { channel: self.channel };
                        let _ = self.up.control_after_media(unpublish, LINK_SEND_WAIT).await;
                    }
                    publication::Output::Release(epoch) => release(&self.ctx, self.machine.stream(), epoch).await,
                    request_output => request = Some(self.request(request_output)),
                }
            }
        }
        self.up.close(self.channel);
        let lost = self.machine.lost();
        self.ctx.stats.publisher_drops.fetch_add(self.dropped.load(Ordering::Relaxed) + lost, Ordering::Relaxed);
        // Counted down only after the release, so a shutdown can wait for it.
        self.ctx.stats.publishers.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(stream = %self.machine.stream(), epoch = self.machine.epoch(), "unpublished");
    }

    /// The control request `output` asks for, as a future of its answer.
    fn request(&self, output: publication::Output) -> Request {
        let (ctx, stream) = (self.ctx.clone(), self.machine.stream().clone());
        let (me, session, key) = (ctx.config.id.clone(), self.machine.session().to_owned(), self.key.clone());
        let text = |e: super::control::ControlError| e.to_string();
        Box::pin(async move {
            match output {
                publication::Output::Lookup => {
                    (publication::Input::Looked(ctx.control.lookup(&stream).await.map_err(text)), None)
                }
                publication::Output::Reassign { epoch, away_from } => (
                    publication::Input::Reassigned(ctx.control.reassign(&stream, epoch, away_from).await.map_err(text)),
                    None,
                ),
                publication::Output::Claim => {
                    let claimed = ctx.control.claim(&stream, &me, &session, false, key).await;
                    (publication::Input::Claimed(claimed.map_err(text)), None)
                }
                publication::Output::LookupAtLeast(epoch) => (
                    publication::Input::Confirmed(ctx.control.lookup_at_least(&stream, epoch).await.map_err(text)),
                    None,
                ),
                publication::Output::Attach(owner) => attached(attach(&ctx, &stream, &owner, LINK_WAIT).await),
                publication::Output::Reattach(owner) => attached(attach(&ctx, &stream, &owner, Duration::ZERO).await),
                other => unreachable!("not a request: {other:?}"),
            }
        })
    }

    async fn send(&self, frame: Frame) -> Result<(), String> {
        let arrived = frame.arrived.0;
        self.up.media(MediaFrame { channel: self.channel, frame }, LINK_SEND_WAIT).await.map_err(|e| e.to_string())?;
        self.ctx.stats.hop_ingest.observe_since(arrived);
        Ok(())
    }
}

/// The wall clock, ms since the Unix epoch (`EXT-X-PROGRAM-DATE-TIME`, and the base of
/// the numbering of a stream nobody remembers).
fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a publication keeps for a new owner: the frames back to a keyframe at least
/// 2 s old, and back to the start of the HLS window's oldest segment
/// (`--hls-window-segments` complete ones before the open one), so a new owner after a
/// failover rebuilds the window the old one had and an edge that starts the stream
/// later gets the same segments. Bounded as before: 64 MiB and 30 s of stream time.
fn retain_limits(config: &super::config::EdgeConfig) -> RetainLimits {
    RetainLimits { window_segments: config.hls_window.segments, ..RetainLimits::default() }
}

/// Resolves with the epoch of the stream's claim once it is newer than `epoch` (the
/// claims feed relays follow too); never while the claim stays at `epoch` or is released
/// (the owner's refusal or the link says the rest).
fn watch_claim(claim: ClaimWatch, epoch: u64) -> futures::future::BoxFuture<'static, u64> {
    Box::pin(async move {
        loop {
            match claim.changed(Some(epoch), WATCH_WAIT).await {
                Ok(Some(o)) if o.claim.epoch > epoch => return o.claim.epoch,
                Ok(Some(o)) if o.claim.epoch == epoch => {}
                // An origin behind us, or the claim released: look again shortly.
                Ok(_) | Err(_) => tokio::time::sleep(RELAY_RETRY).await,
            }
        }
    })
}

/// What an attempt to attach tells the publication, and the channel if it took.
fn attached(result: Result<Attached, String>) -> (publication::Input, Option<Attached>) {
    match result {
        Ok(attached) => (publication::Input::Attached(Ok(())), Some(attached)),
        Err(why) => (publication::Input::Attached(Err(why)), None),
    }
}

/// Opens a channel on `owner`'s link, waiting up to `link_wait` for the link to be up,
/// and publishes under its epoch.
async fn attach(ctx: &EdgeContext, stream: &StreamKey, owner: &Owner, link_wait: Duration) -> Result<Attached, String> {
    let up = ctx.upstreams.get(owner.media);
    if !up.live(link_wait).await {
        return Err(format!("no link to {}", owner.media));
    }
    let (channel, mut events) = up.open(None);
    let publish = Control::Publish { channel, stream: stream.clone(), epoch: owner.claim.epoch };
    if let Err(e) = up.control(publish) {
        up.close(channel);
        return Err(e.to_string());
    }
    match wait_answer(&mut events).await {
        // The same session on a new owner: its own stamper goes on numbering, whatever
        // the new owner remembers.
        Some(Control::PublishAccepted { .. } | Control::PublishAcceptedAt { .. }) => {
            Ok(Attached { up, channel, events })
        }
        other => {
            up.close(channel);
            Err(format!("not accepted: {other:?}"))
        }
    }
}

/// The relays of this edge, one per stream with players. Clones share them.
#[derive(Clone, Default)]
pub struct Relays {
    relays: Leases<StreamKey, Arc<Relay>>,
}

/// One stream's upstream subscription on this edge.
pub struct Relay {
    pub stream: StreamKey,
    hub: watch::Sender<Option<Arc<Hub>>>,
    /// HLS leases held: while there is one, the hub keeps the HLS window.
    hls: watch::Sender<usize>,
    /// Warm leases held ([`Relays::join_warm`]): while there is one, the hub keeps
    /// [`RTMPT_RESUME_HISTORY`].
    warm: watch::Sender<usize>,
    stop: CancellationToken,
    /// The owner this relay is subscribed to (0: none).
    owner: AtomicU64,
}

impl Released for Arc<Relay> {
    /// The last player (or HLS packaging task) left: the relay stops.
    fn released(&self) {
        self.stop.cancel();
    }
}

/// A player's (or an HLS packaging task's) hold on a relay; the last one dropped
/// stops it.
pub struct Lease {
    kind: LeaseKind,
    /// The relay; its drop (after its kind's count is counted down) may stop it.
    lease: crate::lease::Lease<StreamKey, Arc<Relay>>,
}

/// Who holds a [`Lease`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum LeaseKind {
    Player,
    /// HLS packaging ([`Relays::join_hls`]).
    Hls,
    /// An RTMPT session's replica ([`Relays::join_warm`]).
    Warm,
}

impl Lease {
    pub fn relay(&self) -> &Arc<Relay> {
        self.lease.value()
    }
}

impl Relays {
    /// Joins the relay of `stream`, starting it if this is its first player.
    pub fn join(&self, ctx: &Arc<EdgeContext>, stream: &StreamKey) -> Lease {
        self.join_as(ctx, stream, LeaseKind::Player)
    }

    /// Joins the relay of `stream` for HLS packaging: while the lease is held the
    /// relay's hub keeps the HLS window, fetched from the owner if the relay was
    /// subscribed without it. Not counted as a player.
    pub fn join_hls(&self, ctx: &Arc<EdgeContext>, stream: &StreamKey) -> Lease {
        self.join_as(ctx, stream, LeaseKind::Hls)
    }

    /// Joins the relay of `stream` for an RTMPT session whose replica this edge holds:
    /// while the lease is held the relay's hub keeps [`RTMPT_RESUME_HISTORY`], so a
    /// takeover resumes the session's plays where its client is. Not counted as a
    /// player. Hubs nobody holds such a lease on keep no history.
    pub fn join_warm(&self, ctx: &Arc<EdgeContext>, stream: &StreamKey) -> Lease {
        self.join_as(ctx, stream, LeaseKind::Warm)
    }

    fn join_as(&self, ctx: &Arc<EdgeContext>, stream: &StreamKey, kind: LeaseKind) -> Lease {
        let lease = self.relays.acquire(stream, || {
            let relay = Arc::new(Relay {
                stream: stream.clone(),
                hub: watch::Sender::new(None),
                hls: watch::Sender::new(0),
                warm: watch::Sender::new(0),
                stop: ctx.shutdown.child_token(),
                owner: AtomicU64::new(0),
            });
            // Relaying's own log lines name no stream: the span does.
            let span = tracing::info_span!("relay", %stream);
            tokio::spawn(tracing::Instrument::instrument(run_relay(ctx.clone(), relay.clone()), span));
            relay
        });
        if let Some(count) = lease.value().count(kind) {
            count.send_modify(|n| *n += 1);
        }
        Lease { kind, lease }
    }

    /// (stream, players, owner) of every relay; HLS packaging tasks and RTMPT replicas'
    /// warm leases are not players.
    pub fn snapshot(&self) -> Vec<(StreamKey, usize, u64)> {
        let mut all: Vec<_> = self
            .relays
            .entries()
            .into_iter()
            .map(|(stream, r, holders)| {
                let players = holders.saturating_sub(*r.hls.borrow() + *r.warm.borrow());
                (stream, players, r.owner.load(Ordering::Relaxed))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// (relays whose hub keeps an HLS window of frames, the bytes of those windows):
    /// what relaying costs for HLS beyond the packaged windows (`edge_relay_hls_windows`,
    /// `edge_relay_window_bytes`). A hub keeps one only while HLS starts on its stream:
    /// the packaging task takes it ([`Hub::take_window`]).
    pub fn windows(&self) -> (usize, usize) {
        self.relays
            .entries()
            .iter()
            .filter_map(|(_, r, _)| r.hub.borrow().clone())
            .filter(|h| h.keeps_window())
            .fold((0, 0), |(n, b), h| (n + 1, b + h.window_size().2))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(count) = self.relay().count(self.kind) {
            count.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Relay {
    /// The count of leases of `kind` (players are not counted apart).
    fn count(&self, kind: LeaseKind) -> Option<&watch::Sender<usize>> {
        match kind {
            LeaseKind::Player => None,
            LeaseKind::Hls => Some(&self.hls),
            LeaseKind::Warm => Some(&self.warm),
        }
    }

    /// A receiver of the stream's current hub (`None` while it is not published).
    pub fn hub(&self) -> watch::Receiver<Option<Arc<Hub>>> {
        self.hub.subscribe()
    }
}

/// Follows one stream for its players until the last one leaves, carrying out what
/// [`Relaying`] decides: subscribes at the owner, re-subscribes wherever the claim
/// moves (the claims feed), and ends a generation when the claim is released.
async fn run_relay(ctx: Arc<EdgeContext>, relay: Arc<Relay>) {
    let stream = relay.stream.clone();
    let claim = ctx.claims.follow(&ctx, &stream);
    let mut generation: Option<Generation> = None;
    let mut machine = Relaying::default();
    let mut next = machine.start();
    'relay: while !relay.stop.is_cancelled() {
        let mut input = None;
        for output in next.drain(..) {
            input = match output {
                relaying::Output::StartGeneration(session) => {
                    tracing::debug!(%stream, session, "a publishing generation starts");
                    generation = Some(Generation::start(&ctx, &relay));
                    None
                }
                relaying::Output::NewSession(session) => {
                    tracing::debug!(%stream, session, "another publishing session took over");
                    if let Some(g) = &generation {
                        g.continuity.lock().unwrap_or_else(|p| p.into_inner()).new_session();
                    }
                    None
                }
                relaying::Output::EndGeneration => {
                    if let Some(g) = generation.take() {
                        g.end(&relay);
                    }
                    None
                }
                relaying::Output::CountFailover => {
                    ctx.stats.relay_failovers.fetch_add(1, Ordering::Relaxed);
                    None
                }
                relaying::Output::Lookup => tokio::select! {
                    found = ctx.control.lookup(&stream) => Some(relaying::Input::Found(found.map_err(|e| e.to_string()))),
                    _ = relay.stop.cancelled() => break 'relay,
                },
                relaying::Output::WaitChange { known, wait } => tokio::select! {
                    found = claim.changed(known, wait) => Some(relaying::Input::Found(found.map_err(|e| e.to_string()))),
                    _ = relay.stop.cancelled() => break 'relay,
                },
                relaying::Output::Pause(d) => {
                    pause(&relay, d).await;
                    Some(relaying::Input::Woke)
                }
                relaying::Output::Follow(owner) => {
                    let Some(g) = generation.as_ref() else { break 'relay };
                    match follow(&ctx, &relay, g, &owner, &claim).await {
                        Some(followed) => Some(relaying::Input::Followed(followed)),
                        None => break 'relay,
                    }
                }
            };
        }
        let Some(input) = input else {
            // Every decision ends in one request; none means a bug, not a reason to spin.
            tracing::error!(%stream, "relay decision without a request; stopping the relay");
            break;
        };
        next = machine.handle(input);
    }
    if let Some(g) = generation.take() {
        g.end(&relay);
    }
}

/// What an edge hub keeps for RTMPT takeovers while an RTMPT session's replica here
/// plays the stream ([`Relays::join_warm`]): back to a keyframe at least 3 s old (a
/// takeover comes within about a second of the holder's death; a player that was
/// behind by a few seconds is still covered), at most 10 s and 8 MiB per stream.
const RTMPT_RESUME_HISTORY: RetainLimits =
    RetainLimits { history_ms: 3_000, max_bytes: 8 << 20, max_ms: 10_000, window_segments: 0 };

/// One publishing generation of a relayed stream: the hub its players read.
struct Generation {
    hub: Arc<Hub>,
    continuity: Arc<Mutex<Continuity>>,
    /// A subscription of this generation was taken: later ones never ask for the
    /// window again (the hub has it, and a new session's window would repeat frames).
    subscribed: AtomicBool,
}

impl Generation {
    fn start(ctx: &EdgeContext, relay: &Relay) -> Generation {
        // While an RTMPT session's replica here plays the stream, a few seconds of
        // history: an edge that takes over a session resumes its plays from where its
        // client is (`Hub::subscribe_after`), which may be before the current GOP.
        // Frames kept hold their pre-chunked copies and the link buffers they are
        // sliced from, so hubs no replica plays keep none (`follow` turns it on and off).
        let history = (*relay.warm.borrow() > 0).then_some(RTMPT_RESUME_HISTORY);
        let limits = HubLimits {
            queue: ctx.config.player_queue,
            window: Some(ctx.config.hls_window),
            history,
            ..HubLimits::default()
        };
        let hub = Hub::with_drop_counter(limits, ctx.stats.player_drops.clone());
        if *relay.hls.borrow() == 0 {
            // Players only: no window until HLS asks for one.
            hub.stop_window();
        }
        relay.hub.send_replace(Some(hub.clone()));
        Generation { hub, continuity: Arc::default(), subscribed: AtomicBool::new(false) }
    }

    fn end(self, relay: &Relay) {
        relay.owner.store(0, Ordering::Relaxed);
        relay.hub.send_replace(None);
        self.hub.end();
    }
}

/// Subscribes at `owner` and relays until the subscription ends or the claim moves;
/// `None` when the relay stops.
async fn follow(
    ctx: &EdgeContext,
    relay: &Relay,
    g: &Generation,
    owner: &Owner,
    claim: &ClaimWatch,
) -> Option<Followed> {
    let stream = &relay.stream;
    let up = ctx.upstreams.get(owner.media);
    if !up.live(LINK_WAIT).await {
        return Some(Followed::LostOwner);
    }
    let resume = g.continuity.lock().unwrap_or_else(|p| p.into_inner()).resume_point();
    // The generation's first subscription brings the owner's HLS window as history
    // (kept for HLS readers, not given to players) ahead of the live GOP, if HLS is
    // packaged here (the hub keeps a window); a window wanted later is fetched.
    let window = resume.is_none() && !g.subscribed.load(Ordering::Relaxed) && g.hub.keeps_window();
    let sink =
        Sink { hub: g.hub.clone(), continuity: g.continuity.clone(), history: Arc::new(AtomicBool::new(window)) };
    let (channel, mut events) = up.open(Some(sink));
    // Following the same session to a new owner: ask for what comes after what players
    // have, so a keyframe the new owner got meanwhile cannot make us skip frames.
    let subscribe = match resume {
        Some(at) => Control::SubscribeAfter { channel, stream: stream.clone(), audio_ts: at.audio, video_ts: at.video },
        None if window => Control::SubscribeWindow { channel, stream: stream.clone() },
        None => Control::Subscribe { channel, stream: stream.clone() },
    };
    if up.control(subscribe).is_err() {
        up.close(channel);
        return Some(Followed::LostOwner);
    }
    match wait_answer(&mut events).await {
        Some(Control::Subscribed { .. }) => g.subscribed.store(true, Ordering::Relaxed),
        other => {
            tracing::debug!(%stream, ?other, "subscription not taken");
            up.close(channel);
            return Some(Followed::Refused);
        }
    }
    tracing::info!(%stream, owner = owner.claim.owner, epoch = owner.claim.epoch, "relaying");
    relay.owner.store(owner.claim.owner, Ordering::Relaxed);
    let mut hls = relay.hls.subscribe();
    hls.mark_changed();
    // What the owner counts this subscription as: feeding HLS if it was `SubscribeWindow`.
    let mut packaging = resume.is_none() && window;
    let mut warm = relay.warm.subscribe();
    warm.mark_changed();
    let epoch = owner.claim.epoch;
    let watch = async {
        loop {
            match claim.changed(Some(epoch), WATCH_WAIT).await {
                Ok(Some(o)) if o.claim.epoch == epoch => {}
                Ok(Some(o)) => return o,
                // Released: the owner's `Ended` says the rest.
                Ok(None) => std::future::pending::<()>().await,
                Err(_) => tokio::time::sleep(RELAY_RETRY).await,
            }
        }
    };
    tokio::pin!(watch);
    let mut tail = false;
    let outcome = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(ChannelEvent::Control(Control::Ended { .. })) => break Some(Followed::Ended),
                Some(ChannelEvent::Down(_)) | None => break Some(Followed::LostOwner),
                Some(_) => {}
            },
            next = &mut watch => {
                // The same session moved on (a planned move, a drain): its old owner
                // goes on relaying what the publisher still sends it until the new owner
                // has the stream, so the subscription stays open beside the new one;
                // the continuity filter passes each frame once, from whichever brings
                // it first.
                tail = next.claim.edge == owner.claim.edge && next.claim.session == owner.claim.session;
                break Some(Followed::Moved(next.claim.epoch));
            }
            changed = hls.changed() => if changed.is_ok() {
                let wanted = *hls.borrow_and_update() > 0;
                sync_window(ctx, relay, g, &up, wanted);
                // The owner tells the publishing edge to keep the window while some
                // edge packages the stream (a `SubscribeWindow` counts already).
                if wanted != packaging {
                    packaging = wanted;
                    let _ = up.control(Control::HlsInterest { channel, packaging });
                }
            },
            changed = warm.changed() => if changed.is_ok() {
                let wanted = *warm.borrow_and_update() > 0;
                g.hub.keep_history(wanted.then_some(RTMPT_RESUME_HISTORY));
            },
            _ = relay.stop.cancelled() => {
                let _ = up.control(Control::Unsubscribe { channel });
                break None;
            }
        }
    };
    if tail {
        tail_old_owner(up.clone(), channel, events, relay.stop.clone());
    } else {
        if matches!(outcome, Some(Followed::Moved(_))) {
            let _ = up.control(Control::Unsubscribe { channel });
        }
        up.close(channel);
    }
    let duplicates = std::mem::take(&mut g.continuity.lock().unwrap_or_else(|p| p.into_inner()).duplicates);
    ctx.stats.relay_duplicates.fetch_add(duplicates, Ordering::Relaxed);
    outcome
}

/// How long a relay keeps its subscription at a stream's old owner after a
/// make-before-break move: a little more than the old owner's own grace
/// (`HANDOVER_GRACE` in `origin/link_server/registry.rs`).
const OLD_OWNER_TAIL: Duration = Duration::from_secs(3);

/// Keeps `channel`, a subscription at a stream's old owner, open until that owner ends
/// the stream (its publisher attached to the new owner and left), its link goes down,
/// [`OLD_OWNER_TAIL`] passes or the relay stops; then unsubscribes.
fn tail_old_owner(
    up: Arc<Upstream>,
    channel: ChannelId,
    mut events: mpsc::Receiver<ChannelEvent>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let ended = async {
            loop {
                match events.recv().await {
                    Some(ChannelEvent::Control(Control::Ended { .. }) | ChannelEvent::Down(_)) | None => return,
                    Some(_) => {}
                }
            }
        };
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep(OLD_OWNER_TAIL) => {}
            _ = stop.cancelled() => {}
        }
        let _ = up.control(Control::Unsubscribe { channel });
        up.close(channel);
    });
}

/// Keeps the generation's HLS window while HLS is `wanted` and lets it go when not.
/// A window started on a hub already relaying is fetched from the owner on a channel
/// of its own and joined to what came live meanwhile; players see nothing of it.
fn sync_window(ctx: &EdgeContext, relay: &Relay, g: &Generation, up: &Arc<Upstream>, wanted: bool) {
    if !wanted {
        if g.hub.keeps_window() {
            tracing::debug!(stream = %relay.stream, "no HLS here any more: the relay's window goes");
        }
        g.hub.stop_window();
        return;
    }
    if !g.hub.start_window() {
        return;
    }
    let (up, hub, stream, stop) = (up.clone(), g.hub.clone(), relay.stream.clone(), relay.stop.clone());
    let max_bytes = ctx.config.hls_window.max_bytes;
    tokio::spawn(async move {
        let fetched = tokio::select! {
            fetched = fetch_window(&up, &stream, max_bytes) => fetched,
            _ = stop.cancelled() => None,
        };
        let count = fetched.as_ref().map_or(0, Vec::len);
        let joined = hub.splice_window(fetched.unwrap_or_default());
        tracing::info!(%stream, frames = count, joined, "HLS window fetched from the owner");
    });
}

/// Asks `up`'s origin for `stream`'s HLS window (`FetchWindow`); `None` if it has
/// none, does not answer in [`WINDOW_FETCH_WAIT`], or sends more than `max_bytes`.
async fn fetch_window(up: &Upstream, stream: &StreamKey, max_bytes: usize) -> Option<Vec<Frame>> {
    let (channel, mut events, collected) = up.open_collect(max_bytes);
    let fetch = async {
        up.control(Control::FetchWindow { channel, stream: stream.clone() }).ok()?;
        loop {
            match events.recv().await? {
                // In order with the media: everything sent is collected.
                ChannelEvent::Control(Control::WindowEnd { .. }) => return collected.take(),
                ChannelEvent::Control(_) | ChannelEvent::Down(_) => return None,
                ChannelEvent::Up => {}
            }
        }
    };
    let fetched = tokio::time::timeout(WINDOW_FETCH_WAIT, fetch).await.ok().flatten();
    up.close(channel);
    fetched
}

async fn pause(relay: &Relay, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = relay.stop.cancelled() => {}
    }
}
