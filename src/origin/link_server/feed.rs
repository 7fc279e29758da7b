//! The claims feed: one per link, carrying the claims of every stream its edge
//! publishes or relays (`WatchClaims` in, `Claims` out), instead of one long-poll per
//! stream.
//!
//! [`ClaimFeeds`] knows which feeds follow which stream; the link server's claim
//! follower ([`super::follow_claims`]) marks a stream changed in every feed that
//! follows it. Each [`Feed`] has a task that takes its changed streams, reads their
//! claims from the applied state, and sends them through the link's bounded send
//! queue, so a feed costs a set of names and a task, not a request per stream. A feed
//! that falls behind loses nothing: the marks are a set, and the task reads the claims
//! as they are when it sends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, StreamKey};
use raftcast_storage::StateHandle;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use raftcast_raft::network::LeaderContact;

use crate::link::protocol::{FeedClaim, MAX_FEED_BATCH};
use crate::link::{ChannelId, Control, LinkFrame};
use crate::origin::liveness::Liveness;

/// Most streams one feed follows; names beyond it are ignored (logged): an edge
/// relays at most this many streams from one origin's feed.
pub const MAX_FEED_STREAMS: usize = 65_536;

/// What one feed's task has to send.
#[derive(Default)]
struct Pending {
    /// The streams the feed follows.
    followed: HashSet<StreamKey>,
    /// Followed streams whose claims changed (or were just added) since the last send.
    changed: HashSet<StreamKey>,
}

/// The part of a feed its task and the claim follower share.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark(&self, stream: &StreamKey) {
        let mut p = self.lock();
        if p.followed.contains(stream) {
            p.changed.insert(stream.clone());
            drop(p);
            self.wake.notify_one();
        }
    }

    fn mark_all(&self) {
        let mut p = self.lock();
        let Pending { followed, changed } = &mut *p;
        changed.extend(followed.iter().cloned());
        drop(p);
        self.wake.notify_one();
    }
}

/// How often a feed says it is alive (an empty `Claims` with the applied index)
/// while this origin is in touch with the cluster.
pub const FEED_HEARTBEAT: Duration = Duration::from_millis(100);
/// In touch: a leader's AppendEntries within this long (a follower), or a quorum's
/// answers (the leader).
pub const TOUCH_WITHIN: Duration = Duration::from_millis(250);

/// Whether this origin is in touch with the cluster.
#[derive(Clone)]
struct Touch {
    liveness: Liveness,
    contact: LeaderContact,
}

/// The feeds following each stream, by link id.
type Followers = HashMap<StreamKey, HashMap<u64, Arc<Shared>>>;

/// Every feed of this origin, by the streams they follow. Cheap to clone.
#[derive(Clone, Default)]
pub struct ClaimFeeds {
    followers: Arc<Mutex<Followers>>,
    feeds: Arc<Mutex<HashMap<u64, Arc<Shared>>>>,
    /// `None`: always counted in touch (tests without a cluster around).
    touch: Option<Touch>,
}

impl ClaimFeeds {
    /// Feeds that go quiet while `liveness` and `contact` say this origin is out of
    /// touch: an origin cut off from the others (or removed from them) holds a state
    /// that no longer changes, and an edge following claims there would never learn of
    /// a move. Quiet for longer than the edge waits, the feed moves to another origin.
    pub fn with_touch(liveness: Liveness, contact: LeaderContact) -> Self {
        ClaimFeeds { touch: Some(Touch { liveness, contact }), ..Default::default() }
    }

    fn in_touch(&self, raft: &Raft) -> bool {
        let Some(t) = &self.touch else { return true };
        let m = raft.metrics().borrow().clone();
        t.liveness.in_touch(&m, t.contact.last(), std::time::Instant::now(), TOUCH_WITHIN)
    }

    /// `stream`'s claim changed: the feeds following it send it.
    pub fn changed(&self, stream: &StreamKey) {
        let followers: Vec<Arc<Shared>> = match self.followers.lock().unwrap_or_else(|p| p.into_inner()).get(stream) {
            Some(f) => f.values().cloned().collect(),
            None => return,
        };
        for f in followers {
            f.mark(stream);
        }
    }

    /// Any claim may have changed (a snapshot installed, changes missed): every feed
    /// sends every stream it follows.
    pub fn changed_all(&self) {
        let feeds: Vec<Arc<Shared>> = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for f in feeds {
            f.mark_all();
        }
    }

    /// Feeds open now.
    pub fn count(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Opens link `link`'s feed on `channel`, sending through `tx`. Must run inside the
    /// runtime (it starts the feed's task).
    pub fn open(
        &self,
        link: u64,
        channel: ChannelId,
        state: StateHandle,
        raft: Raft,
        tx: mpsc::Sender<LinkFrame>,
    ) -> Feed {
        let shared = Arc::new(Shared::default());
        self.feeds.lock().unwrap_or_else(|p| p.into_inner()).insert(link, shared.clone());
        let (at_least, at_least_rx) = watch::channel(0);
        let task = tokio::spawn(tracing::Instrument::in_current_span(send_claims(
            self.clone(),
            shared.clone(),
            channel,
            state,
            raft,
            at_least_rx,
            tx,
        )));
        Feed { feeds: self.clone(), link, channel, shared, at_least, task }
    }
}

/// One link's feed; unregisters and stops its task when dropped.
pub struct Feed {
    feeds: ClaimFeeds,
    link: u64,
    pub channel: ChannelId,
    shared: Arc<Shared>,
    at_least: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Feed {
    /// Applies a `WatchClaims`: stops following `remove`, follows `add` (each sent at
    /// once, as it is now), and sends nothing before the applied index reaches
    /// `at_least`. Returns how many added names were over [`MAX_FEED_STREAMS`].
    pub fn update(&self, add: Vec<StreamKey>, remove: Vec<StreamKey>, at_least: u64) -> usize {
        let mut over = 0;
        {
            let mut followers = self.feeds.followers.lock().unwrap_or_else(|p| p.into_inner());
            let mut p = self.shared.lock();
            for stream in remove {
                p.changed.remove(&stream);
                if p.followed.remove(&stream) {
                    if let Some(f) = followers.get_mut(&stream) {
                        f.remove(&self.link);
                        if f.is_empty() {
                            followers.remove(&stream);
                        }
                    }
                }
            }
            for stream in add {
                if !p.followed.contains(&stream) && p.followed.len() >= MAX_FEED_STREAMS {
                    over += 1;
                    continue;
                }
                p.followed.insert(stream.clone());
                followers.entry(stream.clone()).or_default().insert(self.link, self.shared.clone());
                p.changed.insert(stream);
            }
        }
        self.at_least.send_if_modified(|v| {
            let raised = at_least > *v;
            *v = (*v).max(at_least);
            raised
        });
        self.shared.wake.notify_one();
        over
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
        let followed = std::mem::take(&mut self.shared.lock().followed);
        let mut followers = self.feeds.followers.lock().unwrap_or_else(|p| p.into_inner());
        for stream in followed {
            if let Some(f) = followers.get_mut(&stream) {
                f.remove(&self.link);
                if f.is_empty() {
                    followers.remove(&stream);
                }
            }
        }
        drop(followers);
        let mut feeds = self.feeds.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if feeds.get(&self.link).is_some_and(|s| Arc::ptr_eq(s, &self.shared)) {
            feeds.remove(&self.link);
        }
    }
}

/// The feed's task: whenever streams are marked, waits for the applied state to reach
/// what the edge asked for, reads their claims and sends them in batches.
async fn send_claims(
    feeds: ClaimFeeds,
    shared: Arc<Shared>,
    channel: ChannelId,
    state: StateHandle,
    raft: Raft,
    mut at_least: watch::Receiver<u64>,
    tx: mpsc::Sender<LinkFrame>,
) {
    let mut seq = 0u64;
    let mut heartbeat = tokio::time::interval(FEED_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if !feeds.in_touch(&raft) {
            // Out of touch: say nothing (the edge moves its feed elsewhere), and look
            // again at the next beat.
            heartbeat.tick().await;
            continue;
        }
        let want = *at_least.borrow_and_update();
        if state.applied_index() < want {
            // Behind what the edge saw elsewhere: send nothing until caught up.
            let wait = raft.wait(Some(Duration::from_secs(1)));
            let waited = wait.applied_index_at_least(Some(want), "claims feed");
            tokio::select! {
                _ = waited => {}
                _ = at_least.changed() => {}
            }
            continue;
        }
        let names: Vec<StreamKey> = shared.lock().changed.drain().collect();
        if names.is_empty() {
            tokio::select! {
                _ = &mut woken => {}
                changed = at_least.changed() => if changed.is_err() { return },
                _ = heartbeat.tick() => {
                    // Alive and in touch: the applied index, no claims.
                    let beat = Control::Claims { channel, seq, applied: state.applied_index(), claims: Vec::new() };
                    if tx.send(LinkFrame::Control(beat)).await.is_err() {
                        return;
                    }
                    seq += 1;
                }
            }
            continue;
        }
        // The claims first, the index after: the index then covers every claim read,
        // so an edge that waits for it elsewhere never sees one of them go back.
        let claims: Vec<(StreamKey, Option<raftcast_raft::command::StreamClaim>)> = state.read(|sm| {
            names
                .into_iter()
                .map(|n| {
                    let c = sm.streams.get(&n).cloned();
                    (n, c)
                })
                .collect()
        });
        let applied = state.applied_index();
        let media = media_addresses(&raft);
        for batch in claims.chunks(MAX_FEED_BATCH) {
            let claims = batch
                .iter()
                .map(|(stream, claim)| {
                    let claim = claim.clone().map(|claim| FeedClaim { media: media.get(&claim.owner).cloned(), claim });
                    (stream.clone(), claim)
                })
                .collect();
            let message = Control::Claims { channel, seq, applied, claims };
            if tx.send(LinkFrame::Control(message)).await.is_err() {
                return;
            }
            seq += 1;
        }
    }
}

/// Every member's media address, as this origin's membership says.
fn media_addresses(raft: &Raft) -> HashMap<NodeId, String> {
    let metrics = raft.metrics().borrow().membership_config.clone();
    metrics.membership().nodes().map(|(id, n)| (*id, n.media.clone())).collect()
}
