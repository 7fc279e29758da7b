//! The streams this origin serves: per stream the hub, the attached publisher, the
//! subscribed edges and the ingest counters, kept in line with the applied claims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raftcast_raft::rpc::ClusterSecret;
use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, StreamKey};
use raftcast_storage::StateHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::LinkStats;
use crate::hls::mark::Continuation;
use crate::link::{ChannelId, PublishRefusal};
use crate::media::retain::RetainLimits;
use crate::media::segments::WindowLimits;
use crate::media::{Hub, HubLimits};
use crate::origin::ingest::IngestStats;

/// One stream as its owner sees it right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStream {
    pub app: String,
    pub name: String,
    /// Epoch under which the attached publisher was accepted.
    pub epoch: Option<u64>,
    /// Edge of the attached publisher.
    pub edge: Option<String>,
    /// One edge name per link subscription, sorted.
    pub subscribers: Vec<String>,
    /// Payload bytes and frames received since this origin started the stream's hub.
    pub bytes_in: u64,
    pub frames_in: u64,
    /// Received bitrate over the last few seconds.
    pub bitrate_kbps: f64,
}

impl LiveStream {
    pub fn key(&self) -> Option<StreamKey> {
        StreamKey::new(&self.app, &self.name).ok()
    }
}

/// The publisher attached to a stream.
#[derive(Debug, Clone)]
pub(super) struct Publisher {
    pub link: u64,
    pub channel: ChannelId,
    pub epoch: u64,
    pub edge: String,
}

/// A live stream on this origin.
struct Stream {
    hub: Arc<Hub>,
    publisher: Option<Publisher>,
    /// The edge of each subscription, by (link, channel).
    subscribers: HashMap<(u64, ChannelId), String>,
    ingest: Arc<IngestStats>,
    /// Epoch of the latest accepted publisher or applied claim ([`RETIRED`] once the
    /// claim is gone from this origin). Every publishing channel checks it per frame
    /// (one relaxed load), so a publisher fenced from another link, by a newer claim
    /// or by a release learns it at its next frame.
    fence: Arc<AtomicU64>,
}

/// [`Stream::fence`] of a stream whose claim was released or moved away.
const RETIRED: u64 = u64::MAX;

/// Streams whose last mark an origin remembers after their hub is gone (the publisher
/// left): one entry per stream, the oldest forgotten first past this many. A few
/// dozen bytes each.
pub const REMEMBERED_MARKS: usize = 16_384;

/// The last HLS marks of streams that ended here, for the next session to continue
/// after ([`LinkContext::attach`]). Bounded by [`REMEMBERED_MARKS`].
#[derive(Default)]
struct Remembered {
    marks: HashMap<StreamKey, (Continuation, u64)>,
    next: u64,
}

impl Remembered {
    fn keep(&mut self, stream: &StreamKey, mark: Continuation) {
        if self.marks.len() >= REMEMBERED_MARKS && !self.marks.contains_key(stream) {
            if let Some(oldest) = self.marks.iter().min_by_key(|(_, (_, n))| *n).map(|(k, _)| k.clone()) {
                self.marks.remove(&oldest);
            }
        }
        self.next += 1;
        self.marks.insert(stream.clone(), (mark, self.next));
    }

    fn get(&self, stream: &StreamKey) -> Option<Continuation> {
        self.marks.get(stream).map(|(c, _)| *c)
    }
}

impl Stream {
    fn new(window: WindowLimits) -> Self {
        Stream {
            // History lets an edge that followed the stream here resume exactly where its
            // players are (`SubscribeAfter`), whatever keyframes came meanwhile; the HLS
            // window lets an edge that starts the stream build the same playlist as the
            // others (`SubscribeWindow`).
            hub: Hub::new(HubLimits {
                history: Some(RetainLimits::default_history()),
                window: Some(window),
                ..HubLimits::default()
            }),
            publisher: None,
            subscribers: HashMap::new(),
            ingest: Arc::new(IngestStats::new(Instant::now())),
            fence: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// What a publisher accepted by [`LinkContext::attach`] publishes into.
pub(super) struct Attached {
    pub hub: Arc<Hub>,
    pub ingest: Arc<IngestStats>,
    /// The stream's fence: a value above the publisher's epoch means it was fenced.
    pub fence: Arc<AtomicU64>,
    /// Where the HLS numbering of the stream stands here: the new publisher's
    /// session continues after it.
    pub continue_after: Option<Continuation>,
}

/// Called with (stream, epoch, hub) when a publisher is accepted, before any of its
/// frames goes into the hub; it must not block (it runs under the streams' lock).
pub type AttachHook = Arc<dyn Fn(&StreamKey, u64, &Arc<Hub>) + Send + Sync>;

/// What every link task shares.
#[derive(Clone)]
pub struct LinkContext {
    pub id: NodeId,
    pub secret: ClusterSecret,
    pub raft: Raft,
    pub state: StateHandle,
    pub stats: Arc<LinkStats>,
    streams: Arc<Mutex<HashMap<StreamKey, Stream>>>,
    pub(super) next_link: Arc<AtomicU64>,
    /// Whether this origin's applied state was confirmed current (a read barrier
    /// succeeded) since it started. Until then its claims may be ones it merely
    /// remembers from before a crash, moved elsewhere while it was away: no publisher
    /// is accepted on their strength.
    current: Arc<watch::Sender<bool>>,
    /// Bounds of each stream's HLS window (`--hls-window-*`).
    window: WindowLimits,
    /// Told of every publisher accepted here, before its first frame (the recorder).
    on_attach: Arc<std::sync::OnceLock<AttachHook>>,
    remembered: Arc<Mutex<Remembered>>,
    /// The links' claims feeds.
    pub feeds: super::feed::ClaimFeeds,
}

impl LinkContext {
    pub fn new(id: NodeId, secret: ClusterSecret, raft: Raft, state: StateHandle, stats: Arc<LinkStats>) -> Self {
        LinkContext {
            id,
            secret,
            raft,
            state,
            stats,
            streams: Arc::default(),
            next_link: Arc::default(),
            current: Arc::new(watch::Sender::new(false)),
            window: WindowLimits::default(),
            remembered: Arc::default(),
            feeds: Default::default(),
            on_attach: Arc::default(),
        }
    }

    /// Sets what is told of every accepted publisher (once; later calls are ignored).
    pub fn set_attach_hook(&self, hook: AttachHook) {
        let _ = self.on_attach.set(hook);
    }

    /// Every stream with a publisher attached here: (stream, its epoch, its hub).
    pub fn attached_hubs(&self) -> Vec<(StreamKey, u64, Arc<Hub>)> {
        self.streams()
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), s.publisher.as_ref()?.epoch, s.hub.clone())))
            .collect()
    }

    /// Claims feeds go quiet while this origin is out of touch with the cluster
    /// ([`crate::origin::liveness::Liveness::in_touch`]), so edges move theirs.
    pub fn with_touch(
        mut self,
        liveness: crate::origin::liveness::Liveness,
        contact: raftcast_raft::network::LeaderContact,
    ) -> Self {
        self.feeds = super::feed::ClaimFeeds::with_touch(liveness, contact);
        self
    }

    /// Each stream's HLS window is kept within `window`.
    pub fn with_hls_window(mut self, window: WindowLimits) -> Self {
        self.window = window;
        self
    }

    /// Remembers where a departing stream's numbering stood.
    fn remember(&self, stream: &StreamKey, s: &Stream) {
        if let Some(mark) = s.hub.last_mark() {
            self.remembered.lock().unwrap_or_else(|p| p.into_inner()).keep(stream, mark);
        }
    }

    /// The last mark this origin knows of `stream` (its hub's, or remembered).
    pub fn last_mark(&self, stream: &StreamKey) -> Option<Continuation> {
        let live = self.streams().get(stream).and_then(|s| s.hub.last_mark());
        live.or_else(|| self.remembered.lock().unwrap_or_else(|p| p.into_inner()).get(stream))
    }

    /// This origin has confirmed with the cluster that its applied state is current;
    /// publishes waiting for that go ahead.
    pub fn mark_current(&self) {
        self.current.send_replace(true);
    }

    /// Whether [`LinkContext::mark_current`] happened.
    pub fn is_current(&self) -> bool {
        *self.current.borrow()
    }

    /// Follows [`LinkContext::is_current`].
    pub(super) fn current_watch(&self) -> watch::Receiver<bool> {
        self.current.subscribe()
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Stream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The applied claim of `stream`: (owner, epoch).
    ///
    /// Whoever changes the streams map on the strength of a claim reads the claim
    /// while holding the map's lock (the lock order is: streams map, then state), so
    /// that [`LinkContext::reconcile`], which runs after every claim change, never
    /// works from an older claim than what it undoes.
    fn claim(&self, stream: &StreamKey) -> Option<(NodeId, u64)> {
        self.state.read(|sm| sm.streams.get(stream).map(|c| (c.owner, c.epoch)))
    }

    /// Registers a subscription and returns the stream's hub, created if this origin
    /// owns the stream.
    pub(super) fn subscribe(&self, stream: &StreamKey, link: u64, channel: ChannelId, edge: &str) -> Option<Arc<Hub>> {
        let mut streams = self.streams();
        if !streams.contains_key(stream) && self.claim(stream).is_none_or(|(owner, _)| owner != self.id) {
            return None;
        }
        let s = streams.entry(stream.clone()).or_insert_with(|| Stream::new(self.window));
        s.subscribers.insert((link, channel), edge.to_owned());
        Some(s.hub.clone())
    }

    /// The hub of `stream` if this origin has one now (nothing is created or
    /// registered: `FetchWindow` only reads its window).
    pub(super) fn hub(&self, stream: &StreamKey) -> Option<Arc<Hub>> {
        self.streams().get(stream).map(|s| s.hub.clone())
    }

    /// Attaches `publisher` to `stream` if the applied claim is exactly the one it
    /// names and this origin owns it; whoever published before is fenced. Otherwise
    /// says why not.
    pub(super) fn attach(&self, stream: &StreamKey, publisher: Publisher) -> Result<Attached, PublishRefusal> {
        if !self.is_current() {
            return Err(PublishRefusal::NotConfirmed);
        }
        let mut streams = self.streams();
        let epoch = publisher.epoch;
        match self.claim(stream) {
            None => Err(PublishRefusal::NoClaim),
            Some((_, current)) if current != epoch => Err(PublishRefusal::StaleEpoch { epoch, current }),
            Some((owner, _)) if owner != self.id => Err(PublishRefusal::NotOwner { owner }),
            Some(_) => {
                let s = streams.entry(stream.clone()).or_insert_with(|| Stream::new(self.window));
                s.publisher = Some(publisher);
                s.fence.store(epoch, Ordering::Relaxed);
                if let Some(hook) = self.on_attach.get() {
                    hook(stream, epoch, &s.hub);
                }
                let continue_after =
                    s.hub.last_mark().or_else(|| self.remembered.lock().unwrap_or_else(|p| p.into_inner()).get(stream));
                Ok(Attached { hub: s.hub.clone(), ingest: s.ingest.clone(), fence: s.fence.clone(), continue_after })
            }
        }
    }

    /// The publisher on (`link`, `channel`) left: the stream ends (subscribers hear
    /// `Ended`), unless someone else publishes it by now.
    pub(super) fn detach(&self, stream: &StreamKey, link: u64, channel: ChannelId) {
        let mut streams = self.streams();
        let ours = |s: &Stream| s.publisher.as_ref().is_some_and(|p| p.link == link && p.channel == channel);
        if streams.get(stream).is_some_and(ours) {
            if let Some(s) = streams.remove(stream) {
                self.remember(stream, &s);
                s.hub.end();
            }
        }
    }

    /// Forgets a subscription; a stream left with neither publisher nor subscribers is
    /// dropped (it is recreated on demand).
    pub(super) fn unsubscribe(&self, stream: &StreamKey, link: u64, channel: ChannelId) {
        let mut streams = self.streams();
        let Some(s) = streams.get_mut(stream) else { return };
        s.subscribers.remove(&(link, channel));
        if s.publisher.is_none() && s.subscribers.is_empty() {
            if let Some(s) = streams.remove(stream) {
                self.remember(stream, &s);
                s.hub.end();
            }
        }
    }

    /// Epoch of the publisher attached to each stream that has one.
    pub fn attached_publishers(&self) -> HashMap<StreamKey, u64> {
        self.streams().iter().filter_map(|(k, s)| Some((k.clone(), s.publisher.as_ref()?.epoch))).collect()
    }

    /// Brings this origin's view of `stream` in line with its current applied claim
    /// (run after every change of it). Released, or owned by another origin now: the
    /// stream ends here (subscribers hear `Ended`, the publisher is refused at its next
    /// frame). A newer claim owned here: the older publisher is fenced, and the stream
    /// waits for the new claim's publisher with its hub and subscribers kept.
    pub fn reconcile(&self, stream: &StreamKey) {
        let mut streams = self.streams();
        if self.claim(stream).is_some_and(|(owner, _)| owner != self.id) {
            // Another origin numbers the stream's sessions from now on: what this one
            // remembers is older than what that one may hand out, and must never be
            // continued after (it would reuse numbers).
            self.remembered.lock().unwrap_or_else(|p| p.into_inner()).marks.remove(stream);
        }
        let Some(s) = streams.get_mut(stream) else { return };
        match self.claim(stream) {
            Some((owner, epoch)) if owner == self.id => {
                if s.publisher.as_ref().is_some_and(|p| p.epoch < epoch) {
                    tracing::info!(%stream, epoch, "a newer claim fences the attached publisher");
                    s.fence.fetch_max(epoch, Ordering::Relaxed);
                    s.publisher = None;
                }
            }
            claim => {
                if let Some(s) = streams.remove(stream) {
                    tracing::info!(%stream, owner = ?claim.map(|c| c.0), "the claim left this origin; the stream ends here");
                    if claim.is_none() {
                        self.remember(stream, &s);
                    }
                    s.fence.store(RETIRED, Ordering::Relaxed);
                    s.hub.end();
                }
            }
        }
    }

    /// [`LinkContext::reconcile`] for every stream this origin serves.
    pub fn reconcile_all(&self) {
        let mut keys: Vec<StreamKey> = self.streams().keys().cloned().collect();
        keys.extend(self.remembered.lock().unwrap_or_else(|p| p.into_inner()).marks.keys().cloned());
        for stream in &keys {
            self.reconcile(stream);
        }
    }

    /// The live facts of every stream this origin serves.
    pub fn live_streams(&self, now: Instant) -> Vec<LiveStream> {
        let streams = self.streams();
        let mut live: Vec<LiveStream> = streams
            .iter()
            .map(|(key, s)| {
                let mut subscribers: Vec<String> = s.subscribers.values().cloned().collect();
                subscribers.sort();
                let (bytes_in, frames_in) = s.ingest.totals();
                LiveStream {
                    app: key.app.clone(),
                    name: key.name.clone(),
                    epoch: s.publisher.as_ref().map(|p| p.epoch),
                    edge: s.publisher.as_ref().map(|p| p.edge.clone()),
                    subscribers,
                    bytes_in,
                    frames_in,
                    bitrate_kbps: s.ingest.bitrate_kbps(now),
                }
            })
            .collect();
        live.sort_by(|a, b| (&a.app, &a.name).cmp(&(&b.app, &b.name)));
        live
    }

    /// (streams with a publisher attached, link subscriptions), for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let streams = self.streams();
        let publishing = streams.values().filter(|s| s.publisher.is_some()).count();
        (publishing, streams.values().map(|s| s.subscribers.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_marks_are_bounded_and_forget_the_oldest() {
        let mut r = Remembered::default();
        let mark = |msn| Continuation { msn, discontinuity: 0, time_ms: 0 };
        for i in 0..(REMEMBERED_MARKS as u64 + 10) {
            r.keep(&StreamKey::new("live", &format!("s{i}")).unwrap(), mark(i));
        }
        assert_eq!(r.marks.len(), REMEMBERED_MARKS);
        assert_eq!(r.get(&StreamKey::new("live", "s0").unwrap()), None, "the oldest went first");
        let newest = StreamKey::new("live", &format!("s{}", REMEMBERED_MARKS + 9)).unwrap();
        assert_eq!(r.get(&newest), Some(mark(REMEMBERED_MARKS as u64 + 9)));
    }
}
