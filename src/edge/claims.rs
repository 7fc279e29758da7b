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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raftcast_raft::StreamKey;
use tokio::sync::{watch, Notify};

use super::control::{ControlError, Owner};
use super::upstream::{ChannelEvent, Upstream};
use super::EdgeContext;
use crate::backoff::Backoff;
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

struct Entry {
    tx: watch::Sender<Known>,
    holders: usize,
}

/// Additions and removals not yet sent.
#[derive(Default)]
struct Changes {
    add: HashSet<StreamKey>,
    remove: HashSet<StreamKey>,
}

#[derive(Default)]
struct Shared {
    entries: Mutex<HashMap<StreamKey, Entry>>,
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
#[derive(Default)]
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
        let mut entries = lock(&self.shared.entries);
        let entry = entries.entry(stream.clone()).or_insert_with(|| {
            let mut changes = lock(&self.shared.changes);
            changes.remove.remove(stream);
            changes.add.insert(stream.clone());
            self.shared.wake.notify_one();
            Entry { tx: watch::Sender::new(Known::Unknown), holders: 0 }
        });
        entry.holders += 1;
        ClaimWatch { shared: self.shared.clone(), stream: stream.clone(), rx: entry.tx.subscribe() }
    }

    /// (streams followed, fresh starts of the feed so far).
    pub fn stats(&self) -> (usize, u64) {
        (lock(&self.shared.entries).len(), self.shared.restarts.load(Ordering::Relaxed))
    }
}

/// A hold on one stream's claim in the feed.
pub struct ClaimWatch {
    shared: Arc<Shared>,
    stream: StreamKey,
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

impl Clone for ClaimWatch {
    fn clone(&self) -> Self {
        // Our entry lives while any watch holds it (holders counts them).
        if let Some(entry) = lock(&self.shared.entries).get_mut(&self.stream) {
            entry.holders += 1;
        }
        ClaimWatch { shared: self.shared.clone(), stream: self.stream.clone(), rx: self.rx.clone() }
    }
}

impl Drop for ClaimWatch {
    fn drop(&mut self) {
        let mut entries = lock(&self.shared.entries);
        let Some(entry) = entries.get_mut(&self.stream) else { return };
        entry.holders -= 1;
        if entry.holders == 0 {
            entries.remove(&self.stream);
            let mut changes = lock(&self.shared.changes);
            changes.add.remove(&self.stream);
            changes.remove.insert(self.stream.clone());
            self.shared.wake.notify_one();
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
        let up = ctx.upstreams.get(origins[(first + next) % origins.len()]);
        next += 1;
        if up.live(LINK_WAIT).await {
            let why = feed_on(&ctx, &shared, &up).await;
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::info!(origin = %up.addr, why, "claims feed starts afresh");
            if why == "took answers" {
                pause.reset();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause.next_pause()) => {}
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// The feed on `up`'s link, until it breaks; says why.
async fn feed_on(ctx: &EdgeContext, shared: &Shared, up: &Arc<Upstream>) -> &'static str {
    let (channel, mut events) = up.open_with(None, FEED_EVENTS);
    let why = async {
        // Afresh: every stream followed now, and nothing pending.
        let all: Vec<StreamKey> = {
            let entries = lock(&shared.entries);
            let mut changes = lock(&shared.changes);
            *changes = Changes::default();
            entries.keys().cloned().collect()
        };
        let at_least = shared.applied.load(Ordering::Acquire);
        let mut answered = false;
        let mut silent_from = tokio::time::Instant::now();
        if send(up, channel, all, Vec::new(), at_least).is_err() {
            return "link down";
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
                return "link down";
            }
            tokio::select! {
                _ = &mut woken => {}
                event = events.recv() => match event {
                    Some(ChannelEvent::Control(Control::Claims { seq: got, applied, claims, .. })) => {
                        if got != seq {
                            return "lost a message";
                        }
                        seq += 1;
                        shared.applied.fetch_max(applied, Ordering::AcqRel);
                        store(shared, claims);
                        answered = true;
                        silent_from = tokio::time::Instant::now();
                    }
                    Some(ChannelEvent::Down(_)) | None => return if answered { "took answers" } else { "link down" },
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(silent_from + FEED_SILENCE) => return "the origin went silent",
                _ = ctx.shutdown.cancelled() => return "shutdown",
            }
        }
    }
    .await;
    up.close(channel);
    why
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
    let entries = lock(&shared.entries);
    for (stream, claim) in claims {
        let Some(entry) = entries.get(&stream) else { continue };
        let owner = claim.and_then(|c| Some(Owner { media: c.media?.parse().ok()?, claim: c.claim }));
        entry.tx.send_if_modified(|k| {
            let new = Known::Claim(owner);
            let changed = *k != new;
            *k = new;
            changed
        });
    }
}
