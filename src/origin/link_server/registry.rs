//! The streams this origin serves: per stream the hub, the attached publisher, the
//! subscribed edges and the ingest counters, kept in line with the applied claims.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftcast_raft::command::StreamClaim;
use raftcast_raft::rpc::ClusterSecret;
use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, StreamKey};
use raftcast_storage::StateHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::history::{Before, ClaimHistory};
use super::numbering::{self, Answered, Ask, AskPrevious, NotFinal, Numbering, Remembered};
use super::{LinkStats, PREVIOUS_OWNER_WAIT};
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
    /// Wakes the publisher's link to tell it the window is wanted
    /// ([`LinkContext::set_packaging`]).
    pub nudge: Arc<tokio::sync::Notify>,
}

/// A live stream on this origin.
struct Stream {
    hub: Arc<Hub>,
    publisher: Option<Publisher>,
    /// The edge of each subscription, by (link, channel).
    subscribers: HashMap<(u64, ChannelId), String>,
    /// The subscriptions that feed an HLS packager on their edge (all of a protocol-2
    /// or 3 edge's): while there is one, the publishing edge keeps the window.
    packaging: HashSet<(u64, ChannelId)>,
    ingest: Arc<IngestStats>,
    /// Epoch of the latest accepted publisher or applied claim ([`RETIRED`] once the
    /// claim is gone from this origin). Every publishing channel checks it per frame
    /// (one relaxed load), so a publisher fenced from another link, by a newer claim
    /// or by a release learns it at its next frame.
    fence: Arc<AtomicU64>,
    /// Epoch of the last publisher attached to the hub: the claim its marks were
    /// stamped under (a hub kept across a takeover here holds the older session's
    /// last mark until the new one's first; nothing was numbered past it meanwhile).
    marked_under: Option<u64>,
    /// The claim moved to another origin with the same publishing session: until this
    /// time the publisher may go on publishing here while it attaches there
    /// ([`LinkContext::reconcile`]).
    handover_until: Option<Instant>,
}

/// [`Stream::fence`] of a stream whose claim was released or moved away.
const RETIRED: u64 = u64::MAX;

/// How long an origin keeps taking a moved stream's frames from its publisher, who is
/// attaching to the new owner meanwhile (milliseconds, normally): a publishing edge
/// that never heard of the move (cut off from every claims feed) learns it from the
/// refusal at the end, as it did at once before make-before-break moves.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(2);

impl Stream {
    /// Marks the subscription `sub` as feeding HLS or not; the first one wakes the
    /// publisher's link.
    fn set_packaging(&mut self, sub: (u64, ChannelId), packaging: bool) {
        if !packaging {
            self.packaging.remove(&sub);
        } else if self.packaging.insert(sub) && self.packaging.len() == 1 {
            if let Some(p) = &self.publisher {
                p.nudge.notify_one();
            }
        }
    }

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
            packaging: HashSet::new(),
            ingest: Arc::new(IngestStats::new(Instant::now())),
            fence: Arc::new(AtomicU64::new(0)),
            marked_under: None,
            handover_until: None,
        }
    }
}

/// What a publisher accepted by [`LinkContext::attach`] publishes into.
pub(super) struct Attached {
    pub hub: Arc<Hub>,
    pub ingest: Arc<IngestStats>,
    /// The stream's fence: a value above the publisher's epoch means it was fenced.
    pub fence: Arc<AtomicU64>,
    /// How the new publisher's session is numbered.
    pub numbering: Numbering,
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
    /// Each stream's last claims as applied here: what came before a new claim.
    claims_seen: Arc<Mutex<ClaimHistory>>,
    /// [`ClaimHistory::followed_through`], for waits on it.
    followed: Arc<watch::Sender<u64>>,
    /// Asks another origin for its last mark of a stream (the peer route); none in
    /// tests that run no HTTP.
    ask_previous: Option<AskPrevious>,
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
            claims_seen: Arc::default(),
            followed: Arc::new(watch::Sender::new(0)),
            ask_previous: None,
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

    /// A new owner asks the previous one for its last mark of a stream with `ask`.
    pub fn with_previous_owner(mut self, ask: AskPrevious) -> Self {
        self.ask_previous = Some(ask);
        self
    }

    /// Ends a departing stream's hub and remembers where its numbering stood, under
    /// the epoch it was stamped under. The hub is ended first: a frame that raced past
    /// its publisher's fence is either in the mark or never delivered.
    fn end_and_remember(&self, stream: &StreamKey, s: &Stream) {
        s.hub.end();
        if let (Some(mark), Some(epoch)) = (s.hub.last_mark(), s.marked_under) {
            self.remembered().keep(stream, mark, epoch);
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claims_seen(&self) -> std::sync::MutexGuard<'_, ClaimHistory> {
        self.claims_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This origin's own last mark of `stream` stamped under `epoch`: its hub's, or
    /// remembered.
    fn own_mark(&self, stream: &StreamKey, s: Option<&Stream>, epoch: u64) -> Option<Continuation> {
        let live = s.filter(|s| s.marked_under == Some(epoch)).and_then(|s| s.hub.last_mark());
        live.or_else(|| self.remembered().get(stream, epoch))
    }

    /// The claims follower applied `stream`'s change to `claim` (`None`: released).
    pub(super) fn claim_changed(&self, stream: &StreamKey, claim: Option<&StreamClaim>) {
        self.claims_seen().applied(stream, claim);
    }

    /// The claims follower handled every change up to `index`.
    pub(super) fn claims_followed(&self, index: u64) {
        let through = {
            let mut seen = self.claims_seen();
            seen.followed(index);
            seen.followed_through()
        };
        self.followed.send_replace(through);
    }

    /// The claims follower may have missed changes (it started, lagged, or the state
    /// was replaced): no claim known so far tells what came before a later one.
    pub(super) fn claims_resync(&self) {
        let through = {
            let mut seen = self.claims_seen();
            seen.resync(self.state.applied_index());
            seen.followed_through()
        };
        self.followed.send_replace(through);
    }

    /// Whether a publish under `epoch` (its claim applied here) needs another origin's
    /// answer before [`LinkContext::attach`], or the claim's change is not followed yet.
    pub(super) fn must_ask(&self, stream: &StreamKey, epoch: u64) -> bool {
        match self.claims_seen().before(stream, epoch) {
            Before::NotYet => true,
            Before::Claim(prev) => prev.owner != self.id && self.ask_previous.is_some(),
            Before::Unknown | Before::SameSession => false,
        }
    }

    /// For a publish under `epoch`, whose claim is applied here: when the claim before
    /// it was another origin's, asks that origin for its last mark under that claim.
    /// Within [`PREVIOUS_OWNER_WAIT`] in all; `None` when nobody was asked.
    pub(super) async fn ask_previous_owner(&self, stream: &StreamKey, epoch: u64) -> Option<Answered> {
        let started = Instant::now();
        let mut followed = self.followed.subscribe();
        // The claim's change is usually followed by now; if not, it is within moments.
        let prev = tokio::time::timeout(PREVIOUS_OWNER_WAIT, async {
            let _ = followed.wait_for(|through| *through >= epoch).await;
            match self.claims_seen().before(stream, epoch) {
                Before::Claim(prev) if prev.owner != self.id => Some(prev),
                _ => None,
            }
        })
        .await
        .ok()
        .flatten()?;
        let ask = self.ask_previous.clone()?;
        let question = Ask { owner: prev.owner, stream: stream.clone(), epoch: prev.epoch, after: epoch };
        let left = PREVIOUS_OWNER_WAIT.saturating_sub(started.elapsed());
        let mark = match tokio::time::timeout(left, ask(question)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {PREVIOUS_OWNER_WAIT:?}")),
        };
        tracing::info!(
            %stream, epoch, previous.owner = prev.owner, previous.epoch = prev.epoch, ?mark,
            waited_ms = started.elapsed().as_millis() as u64, "asked the previous owner for the stream's last mark"
        );
        Some(Answered { from: prev, mark })
    }

    /// This origin's last mark of `stream` stamped under `epoch`, once it is final: this
    /// origin applied `after` (a later claim of the stream), so no publisher is attached
    /// under `epoch` here or can be again. What the previous owner answers a new one.
    pub async fn handed_over_mark(
        &self,
        stream: &StreamKey,
        epoch: u64,
        after: u64,
        wait: Duration,
    ) -> Result<Option<Continuation>, NotFinal> {
        if epoch >= after {
            return Err(NotFinal::Order { epoch, after });
        }
        let applied = self.raft.wait(Some(wait)).applied_index_at_least(Some(after), "a later claim applied").await;
        if applied.is_err() || self.state.applied_index() < after {
            return Err(NotFinal::Behind { after, wait });
        }
        // The follower of the claims may not have reached `after` yet: end what the
        // claim under `epoch` served here now, as it would.
        self.reconcile(stream);
        let streams = self.streams();
        let s = streams.get(stream);
        if s.and_then(|s| s.publisher.as_ref()).is_some_and(|p| p.epoch <= epoch) {
            return Err(NotFinal::Attached { epoch });
        }
        Ok(self.own_mark(stream, s, epoch))
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
    /// `packaging`: it feeds an HLS packager on its edge ([`LinkContext::set_packaging`]).
    pub(super) fn subscribe(
        &self,
        stream: &StreamKey,
        link: u64,
        channel: ChannelId,
        edge: &str,
        packaging: bool,
    ) -> Option<Arc<Hub>> {
        let mut streams = self.streams();
        if !streams.contains_key(stream) && self.claim(stream).is_none_or(|(owner, _)| owner != self.id) {
            return None;
        }
        let s = streams.entry(stream.clone()).or_insert_with(|| Stream::new(self.window));
        s.subscribers.insert((link, channel), edge.to_owned());
        s.packaging.remove(&(link, channel));
        s.set_packaging((link, channel), packaging);
        Some(s.hub.clone())
    }

    /// Whether the subscription on (`link`, `channel`) feeds an HLS packager on its
    /// edge (`HlsInterest`); a first one wakes the publisher's link, which tells its
    /// edge to keep the window ([`LinkContext::wants_window`]).
    pub(super) fn set_packaging(&self, stream: &StreamKey, link: u64, channel: ChannelId, packaging: bool) {
        let mut streams = self.streams();
        if let Some(s) = streams.get_mut(stream).filter(|s| s.subscribers.contains_key(&(link, channel))) {
            s.set_packaging((link, channel), packaging);
        }
    }

    /// Whether a new owner of `stream` will need the HLS window's frames from its
    /// publishing edge: some edge packages it as HLS, or it is recorded here (a
    /// recorder that fell behind is covered further back).
    pub(super) fn wants_window(&self, stream: &StreamKey) -> bool {
        let packaged = self.streams().get(stream).is_some_and(|s| !s.packaging.is_empty());
        packaged || self.state.read(|sm| sm.recordings.wanted(stream))
    }

    /// The hub of `stream` if this origin has one now (nothing is created or
    /// registered: `FetchWindow` only reads its window).
    pub(super) fn hub(&self, stream: &StreamKey) -> Option<Arc<Hub>> {
        self.streams().get(stream).map(|s| s.hub.clone())
    }

    /// Attaches `publisher` to `stream` if the applied claim is exactly the one it
    /// names and this origin owns it; whoever published before is fenced. Otherwise
    /// says why not.
    ///
    /// The new session is numbered after the last mark stamped under the claim right
    /// before its own ([`numbering::decide`]): this origin's own, or what that claim's
    /// owner `answered` ([`LinkContext::ask_previous_owner`], asked beforehand: this
    /// runs under the streams' lock and never waits).
    pub(super) fn attach(
        &self,
        stream: &StreamKey,
        publisher: Publisher,
        answered: Option<Answered>,
    ) -> Result<Attached, PublishRefusal> {
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
                let before = self.claims_seen().before(stream, epoch);
                let numbering =
                    numbering::decide(self.id, before, |e| self.own_mark(stream, streams.get(stream), e), answered);
                let s = streams.entry(stream.clone()).or_insert_with(|| Stream::new(self.window));
                s.publisher = Some(publisher);
                s.handover_until = None;
                s.fence.store(epoch, Ordering::Relaxed);
                s.marked_under = Some(epoch);
                if let Some(hook) = self.on_attach.get() {
                    hook(stream, epoch, &s.hub);
                }
                Ok(Attached { hub: s.hub.clone(), ingest: s.ingest.clone(), fence: s.fence.clone(), numbering })
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
                if s.handover_until.is_some() {
                    tracing::info!(%stream, "the publisher left for the new owner; the stream ends here");
                    self.stats.handovers_completed.inc();
                }
                self.end_and_remember(stream, &s);
            }
        }
    }

    /// Forgets a subscription; a stream left with neither publisher nor subscribers is
    /// dropped (it is recreated on demand).
    pub(super) fn unsubscribe(&self, stream: &StreamKey, link: u64, channel: ChannelId) {
        let mut streams = self.streams();
        let Some(s) = streams.get_mut(stream) else { return };
        s.subscribers.remove(&(link, channel));
        s.packaging.remove(&(link, channel));
        if s.publisher.is_none() && s.subscribers.is_empty() {
            if let Some(s) = streams.remove(stream) {
                self.end_and_remember(stream, &s);
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
        let Some(s) = streams.get_mut(stream) else { return };
        match self.claim(stream) {
            Some((owner, epoch)) if owner == self.id => {
                if s.publisher.as_ref().is_some_and(|p| p.epoch < epoch) {
                    tracing::info!(%stream, epoch, "a newer claim fences the attached publisher");
                    s.fence.fetch_max(epoch, Ordering::Relaxed);
                    s.publisher = None;
                }
            }
            Some((owner, epoch)) if self.hands_over(stream, s, epoch) => {
                // Make-before-break: the same session's publisher goes on feeding this
                // hub, and its subscribers, until it has attached to the new owner and
                // closes its channel here (or the grace ends, or it is lost).
                if s.handover_until.is_none() {
                    tracing::info!(
                        %stream, epoch, owner, grace = ?HANDOVER_GRACE,
                        "the claim moved on with its publisher; taking its frames until it leaves"
                    );
                    s.handover_until = Some(Instant::now() + HANDOVER_GRACE);
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let (ctx, stream) = (self.clone(), stream.clone());
                        runtime.spawn(async move {
                            tokio::time::sleep(HANDOVER_GRACE).await;
                            ctx.reconcile(&stream);
                        });
                    }
                }
            }
            claim => {
                if let Some(s) = streams.remove(stream) {
                    if s.handover_until.is_some() {
                        tracing::warn!(%stream, "the publisher did not leave within the handover grace");
                        self.stats.handovers_expired.inc();
                    }
                    tracing::info!(%stream, owner = ?claim.map(|c| c.0), "the claim left this origin; the stream ends here");
                    // Remembered under its epoch, whoever numbers next: it is only ever
                    // continued after by the claim right after that epoch's.
                    s.fence.store(RETIRED, Ordering::Relaxed);
                    self.end_and_remember(stream, &s);
                }
            }
        }
    }

    /// Whether `s`, whose claim moved on to another origin at `epoch`, is handed over
    /// make-before-break: its publisher is attached here under the claim right before,
    /// which the same session held, and the grace has not run out.
    fn hands_over(&self, stream: &StreamKey, s: &Stream, epoch: u64) -> bool {
        let Some(publisher) = &s.publisher else { return false };
        if s.handover_until.is_some_and(|until| Instant::now() >= until) {
            return false;
        }
        let Some(latest) = self.state.read(|sm| sm.streams.get(stream).cloned()) else { return false };
        let seen = self.claims_seen();
        seen.replaced(stream, epoch).is_some_and(|before| {
            before.owner == self.id && before.epoch == publisher.epoch && before.same_session(&latest)
        })
    }

    /// [`LinkContext::reconcile`] for every stream this origin serves.
    pub fn reconcile_all(&self) {
        let keys: Vec<StreamKey> = self.streams().keys().cloned().collect();
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
