//! The edge's claims feed: who owns each stream this edge publishes or relays, kept
//! current by one feed on one origin's link (`WatchClaims` out, `Claims` in), instead
//! of one long-poll per stream.
//!
//! Publications and relays hold a [`ClaimWatch`] on their stream for as long as they
//! care about it; the first holder adds the stream to the feed, the last one's drop
//! removes it. One task keeps the feed: it finds the origins' media addresses
//! (`Forward::Origins`), opens a channel on one origin's link, names every followed
//! stream there, then sends additions and removals as they come and stores each claim
//! the origin sends. When that link goes down, a message is lost (a gap in `seq`), or
//! the origin goes silent (an origin out of touch with the cluster stops its
//! heartbeats: its claims may be stale), it starts afresh on the next origin, asking it to wait
//! until its applied state reaches the highest index this edge has seen, so a claim
//! never goes back to an older one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use raftcast_raft::StreamKey;
use tokio::sync::{watch, Notify};

use super::control::{ControlError, Owner};
use super::upstream::{ChannelEvent, Upstream};
use super::EdgeContext;
use crate::backoff::Backoff;
use crate::lease::{Lease, Leases, Released};
use crate::link::protocol::{FeedClaim, MAX_FEED_BATCH};
use crate::link::Control;

/// Control events the feed's channel may have queued; a lost one is noticed (a gap in
/// `seq`) and costs a fresh start, not a wrong claim.
const FEED_EVENTS: usize = 1024;
/// How long a feed may stay silent before the edge moves it to another origin. An
/// origin in touch with the cluster sends at least an empty `Claims` every 100 ms; one
/// cut off from the others, or behind the index the edge asked for, says nothing.
const FEED_SILENCE: Duration = Duration::from_millis(500);
/// How long to wait for a link to come up.
const LINK_WAIT: Duration = Duration::from_secs(2);

/// What the feed says of one stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// No origin has answered for this stream yet.
    Unknown,
    /// Its claim and the owner's media address (`None`: not claimed).
    Claim(Option<Owner>),
}

/// One followed stream: what the feed says of it, for its watches.
struct Entry {
    stream: StreamKey,
    tx: watch::Sender<Known>,
    feed: Weak<Shared>,
}

impl Released for Arc<Entry> {
    /// The last watch went: the feed stops following the stream.
    fn released(&self) {
        if let Some(feed) = self.feed.upgrade() {
            let mut changes = lock(&feed.changes);
            changes.add.remove(&self.stream);
            changes.remove.insert(self.stream.clone());
            feed.wake.notify_one();
        }
    }
}

/// Additions and removals not yet sent.
#[derive(Default)]
struct Changes {
    add: HashSet<StreamKey>,
    remove: HashSet<StreamKey>,
}

#[derive(Default)]
struct Shared {
    entries: Leases<StreamKey, Arc<Entry>>,
    changes: Mutex<Changes>,
    wake: Notify,
    /// The highest applied index of any answer taken.
    applied: AtomicU64,
    /// Whether the feed's task runs.
    started: AtomicBool,
    /// Fresh starts of the feed (another origin, a lost message), for metrics.
    restarts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This edge's claims feed.
#[derive(Clone, Default)]
pub struct ClaimFeed {
    shared: Arc<Shared>,
}

impl ClaimFeed {
    /// Follows `stream`'s claim until the returned watch is dropped. Starts the feed's
    /// task on first use.
    pub fn follow(&self, ctx: &Arc<EdgeContext>, stream: &StreamKey) -> ClaimWatch {
        if !self.shared.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(tracing::Instrument::in_current_span(run(ctx.clone(), self.shared.clone())));
        }
        let shared = &self.shared;
        let lease = shared.entries.acquire(stream, || {
            let mut changes = lock(&shared.changes);
            changes.remove.remove(stream);
            changes.add.insert(stream.clone());
            shared.wake.notify_one();
            let tx = watch::Sender::new(Known::Unknown);
            Arc::new(Entry { stream: stream.clone(), tx, feed: Arc::downgrade(shared) })
        });
        let rx = lease.value().tx.subscribe();
        ClaimWatch { _lease: lease, rx }
    }

    /// (streams followed, fresh starts of the feed so far).
    pub fn stats(&self) -> (usize, u64) {
        (self.shared.entries.len(), self.shared.restarts.load(Ordering::Relaxed))
    }
}

/// A hold on one stream's claim in the feed.
#[derive(Clone)]
pub struct ClaimWatch {
    /// Held for its drop: the last one stops following the stream.
    _lease: Lease<StreamKey, Arc<Entry>>,
    rx: watch::Receiver<Known>,
}

impl ClaimWatch {
    /// What the feed knows now.
    pub fn now(&self) -> Known {
        self.rx.borrow().clone()
    }

    /// The owner once the stream's claim is at `epoch` or later (a claim just
    /// committed may not be applied on the feed's origin yet); `Unavailable` after
    /// `wait`.
    pub async fn at_least(&self, epoch: u64, wait: Duration) -> Result<Owner, ControlError> {
        let reached = |k: &Known| matches!(k, Known::Claim(Some(o)) if o.claim.epoch >= epoch);
        let mut rx = self.rx.clone();
        if let Ok(Ok(known)) = tokio::time::timeout(wait, rx.wait_for(reached)).await {
            if let Known::Claim(Some(owner)) = &*known {
                return Ok(owner.clone());
            }
        }
        Err(ControlError::Unavailable(wait))
    }

    /// The claim once its epoch differs from `known` (a new epoch, a release, or a
    /// first claim when `known` is `None`), or when `wait` passed, what the feed knows
    /// then; `Unavailable` if no origin has answered for the stream by then.
    pub async fn changed(&self, known: Option<u64>, wait: Duration) -> Result<Option<Owner>, ControlError> {
        let differs = |k: &Known| match k {
            Known::Unknown => false,
            Known::Claim(owner) => owner.as_ref().map(|o| o.claim.epoch) != known,
        };
        let mut rx = self.rx.clone();
        let _ = tokio::time::timeout(wait, rx.wait_for(differs)).await;
        match self.now() {
            Known::Claim(owner) => Ok(owner),
            Known::Unknown => Err(ControlError::Unavailable(wait)),
        }
    }
}

/// Keeps the feed on one origin after another until the edge stops.
async fn run(ctx: Arc<EdgeContext>, shared: Arc<Shared>) {
    let mut origins: Vec<SocketAddr> = Vec::new();
    let mut next = 0usize;
    // Edges start their rounds at different origins, so their feeds spread out.
    let first = ctx.config.id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    let mut pause = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while !ctx.shutdown.is_cancelled() {
        if next >= origins.len() {
            // A round over every origin (or the first): ask where they are again.
            next = 0;
            match ctx.control.origins().await {
                Ok(found) if !found.is_empty() => origins = found.into_iter().map(|(_, a)| a).collect(),
                Ok(_) | Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(pause.next_pause()) => {}
                        _ = ctx.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        // The next origin in the round whose link is up now; only when none is does the
        // feed wait for one (a dead origin's link may stay down for good, and a player
        // waiting on the feed must not wait on it while another origin can answer).
        let round: Vec<SocketAddr> = (next..origins.len()).map(|i| origins[(first + i) % origins.len()]).collect();
        let skip = round.iter().position(|a| ctx.upstreams.get(*a).is_live()).unwrap_or(0);
        let up = ctx.upstreams.get(round[skip]);
        next += skip + 1;
        if up.live(LINK_WAIT).await {
            let (why, answered) = feed_on(&ctx, &shared, &up).await;
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::info!(origin = %up.addr, ?why, "claims feed starts afresh");
            // An origin that answered and then failed is not a sign that all of them
            // are failing: try the next at once.
            if answered {
                pause.reset();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause.next_pause()) => {}
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Why a feed on one origin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedEnd {
    /// The link went down.
    LinkDown,
    /// A gap in `seq`: a message was lost.
    LostMessage,
    /// Nothing for [`FEED_SILENCE`]: the origin is out of touch or behind.
    Silent,
    Shutdown,
}

/// The feed on `up`'s link, until it breaks; says why, and whether the origin answered.
async fn feed_on(ctx: &EdgeContext, shared: &Shared, up: &Arc<Upstream>) -> (FeedEnd, bool) {
    let (channel, mut events) = up.open_with(None, FEED_EVENTS);
    let mut answered = false;
    let why = async {
        // Every name followed now; changes still pending are sent after them (an add
        // twice, or a remove of a name never added, changes nothing at the origin).
        let all: Vec<StreamKey> = shared.entries.keys();
        let at_least = shared.applied.load(Ordering::Acquire);
        let mut silent_from = tokio::time::Instant::now();
        if send(up, channel, all, Vec::new(), at_least).is_err() {
            return FeedEnd::LinkDown;
        }
        let mut seq = 0u64;
        loop {
            let woken = shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (add, remove) = {
                let mut changes = lock(&shared.changes);
                (changes.add.drain().collect::<Vec<_>>(), changes.remove.drain().collect::<Vec<_>>())
            };
            if (!add.is_empty() || !remove.is_empty()) && send(up, channel, add, remove, at_least).is_err() {
                return FeedEnd::LinkDown;
            }
            tokio::select! {
                _ = &mut woken => {}
                event = events.recv() => match event {
                    Some(ChannelEvent::Control(Control::Claims { seq: got, applied, claims, .. })) => {
                        if got != seq {
                            return FeedEnd::LostMessage;
                        }
                        seq += 1;
                        shared.applied.fetch_max(applied, Ordering::AcqRel);
                        store(shared, claims);
                        answered = true;
                        silent_from = tokio::time::Instant::now();
                    }
                    Some(ChannelEvent::Down(_)) | None => return FeedEnd::LinkDown,
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(silent_from + FEED_SILENCE) => return FeedEnd::Silent,
                _ = ctx.shutdown.cancelled() => return FeedEnd::Shutdown,
            }
        }
    }
    .await;
    if why != FeedEnd::LinkDown {
        // The link is still up: the origin stops feeding this channel.
        let _ = up.control(Control::UnwatchClaims { channel });
    }
    up.close(channel);
    (why, answered)
}

/// Sends additions and removals in messages of at most [`MAX_FEED_BATCH`] names
/// (removals first; at least one message, which opens the feed at the origin).
fn send(
    up: &Upstream,
    channel: crate::link::ChannelId,
    add: Vec<StreamKey>,
    remove: Vec<StreamKey>,
    at_least: u64,
) -> Result<(), crate::link::client::SendError> {
    let mut remove = remove.into_iter().peekable();
    let mut add = add.into_iter().peekable();
    loop {
        let r: Vec<StreamKey> = remove.by_ref().take(MAX_FEED_BATCH).collect();
        let a: Vec<StreamKey> = if r.is_empty() { add.by_ref().take(MAX_FEED_BATCH).collect() } else { Vec::new() };
        up.control(Control::WatchClaims { channel, add: a, remove: r, at_least })?;
        if remove.peek().is_none() && add.peek().is_none() {
            return Ok(());
        }
    }
}

/// Stores what an origin said of followed streams (others were removed meanwhile).
fn store(shared: &Shared, claims: Vec<(StreamKey, Option<FeedClaim>)>) {
    for (stream, claim) in claims {
        let Some(entry) = shared.entries.get(&stream) else { continue };
        let owner = claim.and_then(|c| Some(Owner { media: c.media?.parse().ok()?, claim: c.claim }));
        entry.tx.send_if_modified(|k| {
            let new = Known::Claim(owner);
            let changed = *k != new;
            *k = new;
            changed
        });
    }
}
