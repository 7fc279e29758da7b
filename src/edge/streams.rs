//! Streams on an edge: publishers sending to their stream's owner origin, and relays
//! that subscribe once per stream to the owner and fan out to every local player.
//!
//! A [`Publication`] is one publishing session: claimed through the leader, accepted
//! by the owner under the claim's epoch, fed frames by the RTMP connection without ever
//! making it wait, and finished (unpublished and released) when dropped.
//!
//! A [`Relay`] exists while at least one player holds a [`Lease`] on it. It follows the
//! stream: looks up the owner, subscribes on the owner's link, and publishes what
//! arrives into a fresh local [`Hub`] per publishing generation; players wait on
//! [`Relay::hub`] for the current one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftcast_raft::{Rejection, Response, StreamKey};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::upstream::{ChannelEvent, Upstream};
use super::EdgeContext;
use crate::link::{ChannelId, Control, MediaFrame};
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
/// Pause between lookups while a watched stream is not published.
const RELAY_RETRY: Duration = Duration::from_millis(200);

/// A refused publish: the status code for the publisher and why.
pub type Refusal = (PublishRejection, String);

/// One publishing session on this edge.
pub struct Publication {
    pub stream: StreamKey,
    pub epoch: u64,
    pub owner: u64,
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
        let mut answer = ctx.control.claim(&stream, &ctx.config.id, &session, false, key.clone()).await;
        if matches!(answer, Ok(Response::Rejected(Rejection::StreamOwned { .. }))) {
            // Someone holds the stream: the leader lets this publisher take it over
            // only if that session is dead (a reconnecting publisher).
            answer = ctx.control.claim(&stream, &ctx.config.id, &session, true, key).await;
        }
        let claim = match answer {
            Ok(Response::Claimed(claim)) => claim,
            Ok(Response::Rejected(Rejection::StreamOwned { edge, .. })) => {
                return Err((PublishRejection::BadName, format!("{stream} is already being published (on {edge})")))
            }
            Ok(Response::Rejected(Rejection::PublishDenied)) => {
                return Err((PublishRejection::Denied, format!("publishing {stream} needs a valid key")))
            }
            Ok(other) => return Err((PublishRejection::Failed, format!("unexpected claim answer {other:?}"))),
            Err(e) => return Err((PublishRejection::Failed, format!("cannot claim {stream}: {e}"))),
        };
        let released = |why: String| {
            let (ctx, stream) = (ctx.clone(), stream.clone());
            tokio::spawn(async move { release(&ctx, &stream, claim.epoch).await });
            Err((PublishRejection::Failed, why))
        };
        let owner = match ctx.control.lookup_at_least(&stream, claim.epoch).await {
            Ok(owner) if owner.claim.epoch == claim.epoch => owner,
            Ok(_) => return Err((PublishRejection::BadName, format!("{stream} was claimed by another session"))),
            Err(e) => return released(format!("cannot find the owner of {stream}: {e}")),
        };
        let up = ctx.upstreams.get(owner.media);
        if !up.live(LINK_WAIT).await {
            return released(format!("origin {} is unreachable at {}", owner.claim.owner, owner.media));
        }
        let (channel, mut events) = up.open(None);
        let publish = Control::Publish { channel, stream: stream.clone(), epoch: claim.epoch };
        if let Err(e) = up.control(publish.clone()) {
            up.close(channel);
            return released(format!("link to origin {}: {e}", owner.claim.owner));
        }
        match wait_answer(&mut events).await {
            Some(Control::PublishAccepted { .. }) => {}
            Some(Control::PublishRefused { reason, .. }) => {
                up.close(channel);
                return Err((
                    PublishRejection::BadName,
                    format!("origin {} refused {stream}: {reason}", owner.claim.owner),
                ));
            }
            _ => {
                up.close(channel);
                return released(format!("origin {} did not accept {stream} in time", owner.claim.owner));
            }
        }
        tracing::info!(%stream, epoch = claim.epoch, owner = owner.claim.owner, "publishing");
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = Forwarder {
            ctx: ctx.clone(),
            up,
            channel,
            publish,
            stream: stream.clone(),
            epoch: claim.epoch,
            dropped: dropped.clone(),
            fenced,
        };
        tokio::spawn(task.run(rx, events));
        ctx.stats.publishers.fetch_add(1, Ordering::Relaxed);
        Ok(Publication { stream, epoch: claim.epoch, owner: owner.claim.owner, frames: tx, dropped })
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

/// Moves one publication's frames onto the owner's link.
struct Forwarder {
    ctx: Arc<EdgeContext>,
    up: Arc<Upstream>,
    channel: ChannelId,
    publish: Control,
    stream: StreamKey,
    epoch: u64,
    dropped: Arc<AtomicU64>,
    fenced: CancellationToken,
}

impl Forwarder {
    async fn run(self, mut frames: mpsc::Receiver<Frame>, mut events: mpsc::Receiver<ChannelEvent>) {
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let Some(frame) = frame else { break };
                    let sent = self.up.media(MediaFrame { channel: self.channel, frame }, LINK_SEND_WAIT).await;
                    if sent.is_err() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                event = events.recv() => match event {
                    // The same origin is back: publish again under the same epoch.
                    Some(ChannelEvent::Up) => {
                        let _ = self.up.control(self.publish.clone());
                    }
                    Some(ChannelEvent::Down(reason)) => {
                        tracing::warn!(stream = %self.stream, reason, "link to the owner lost");
                    }
                    Some(ChannelEvent::Control(Control::PublishRefused { reason, .. })) => {
                        tracing::warn!(stream = %self.stream, epoch = self.epoch, reason, "fenced by the owner");
                        self.fenced.cancel();
                        break;
                    }
                    Some(ChannelEvent::Control(_)) => {}
                    None => break,
                },
            }
        }
        let _ = self.up.control(Control::Unpublish { channel: self.channel });
        self.up.close(self.channel);
        self.ctx.stats.publisher_drops.fetch_add(self.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
        if !self.fenced.is_cancelled() {
            release(&self.ctx, &self.stream, self.epoch).await;
        }
        // Counted down only after the release, so a shutdown can wait for it.
        self.ctx.stats.publishers.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(stream = %self.stream, epoch = self.epoch, "unpublished");
    }
}

/// The relays of this edge, one per stream with players.
#[derive(Default)]
pub struct Relays {
    relays: Mutex<HashMap<StreamKey, Arc<Relay>>>,
}

/// One stream's upstream subscription on this edge.
pub struct Relay {
    pub stream: StreamKey,
    hub: watch::Sender<Option<Arc<Hub>>>,
    players: AtomicUsize,
    stop: CancellationToken,
    /// The owner this relay is subscribed to (0: none).
    owner: AtomicU64,
}

/// A player's hold on a relay; the last one dropped stops it.
pub struct Lease {
    ctx: Arc<EdgeContext>,
    pub relay: Arc<Relay>,
}

impl Relays {
    /// Joins the relay of `stream`, starting it if this is its first player.
    pub fn join(&self, ctx: &Arc<EdgeContext>, stream: &StreamKey) -> Lease {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        let relay = relays
            .entry(stream.clone())
            .or_insert_with(|| {
                let relay = Arc::new(Relay {
                    stream: stream.clone(),
                    hub: watch::Sender::new(None),
                    players: AtomicUsize::new(0),
                    stop: ctx.shutdown.child_token(),
                    owner: AtomicU64::new(0),
                });
                tokio::spawn(run_relay(ctx.clone(), relay.clone()));
                relay
            })
            .clone();
        relay.players.fetch_add(1, Ordering::Relaxed);
        Lease { ctx: ctx.clone(), relay }
    }

    /// (stream, players, owner) of every relay.
    pub fn snapshot(&self) -> Vec<(StreamKey, usize, u64)> {
        let relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = relays
            .values()
            .map(|r| (r.stream.clone(), r.players.load(Ordering::Relaxed), r.owner.load(Ordering::Relaxed)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut relays = self.ctx.relays.relays.lock().unwrap_or_else(|p| p.into_inner());
        if self.relay.players.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.relay.stop.cancel();
            if relays.get(&self.relay.stream).is_some_and(|r| Arc::ptr_eq(r, &self.relay)) {
                relays.remove(&self.relay.stream);
            }
        }
    }
}

impl Relay {
    /// A receiver of the stream's current hub (`None` while it is not published).
    pub fn hub(&self) -> watch::Receiver<Option<Arc<Hub>>> {
        self.hub.subscribe()
    }
}

/// Follows one stream for its players until the last one leaves.
async fn run_relay(ctx: Arc<EdgeContext>, relay: Arc<Relay>) {
    let stream = relay.stream.clone();
    while !relay.stop.is_cancelled() {
        let owner = tokio::select! {
            owner = ctx.control.lookup(&stream) => owner,
            _ = relay.stop.cancelled() => break,
        };
        let owner = match owner {
            Ok(Some(owner)) => owner,
            Ok(None) => {
                pause(&relay, RELAY_RETRY).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(%stream, error = %e, "lookup failed");
                pause(&relay, RELAY_RETRY).await;
                continue;
            }
        };
        let up = ctx.upstreams.get(owner.media);
        if !up.live(LINK_WAIT).await {
            continue;
        }
        let limits = HubLimits { queue: ctx.config.player_queue, ..HubLimits::default() };
        let hub = Hub::with_drop_counter(limits, ctx.stats.player_drops.clone());
        let (channel, mut events) = up.open(Some(hub.clone()));
        if up.control(Control::Subscribe { channel, stream: stream.clone() }).is_err() {
            up.close(channel);
            continue;
        }
        match wait_answer(&mut events).await {
            Some(Control::Subscribed { .. }) => {}
            other => {
                tracing::debug!(%stream, ?other, "subscription not taken");
                up.close(channel);
                pause(&relay, RELAY_RETRY).await;
                continue;
            }
        }
        tracing::info!(%stream, owner = owner.claim.owner, epoch = owner.claim.epoch, "relaying");
        relay.owner.store(owner.claim.owner, Ordering::Relaxed);
        relay.hub.send_replace(Some(hub.clone()));
        let why = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(ChannelEvent::Control(Control::Ended { .. })) => break "the publisher stopped".to_owned(),
                    Some(ChannelEvent::Down(reason)) => break reason,
                    Some(_) => {}
                    None => break "the link ended".to_owned(),
                },
                _ = relay.stop.cancelled() => {
                    let _ = up.control(Control::Unsubscribe { channel });
                    break "no players left".to_owned();
                }
            }
        };
        tracing::info!(%stream, why, "relay ended");
        up.close(channel);
        relay.owner.store(0, Ordering::Relaxed);
        relay.hub.send_replace(None);
        hub.end();
    }
}

async fn pause(relay: &Relay, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = relay.stop.cancelled() => {}
    }
}
