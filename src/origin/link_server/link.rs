//! One authenticated link's state: the channels its edge publishes and subscribes on,
//! and the publishes waiting for their claims.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use raftcast_raft::StreamKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::feed::Feed;
use super::held::HeldFrames;
use super::numbering::{Answered, Numbering};
use super::registry::{Attached, LinkContext, Publisher};
use super::{CLAIM_WAIT, MAX_PENDING_PUBLISHES};
use crate::link::protocol::MAX_FEED_BATCH;
use crate::link::{ChannelId, Control, LinkFrame, MediaFrame, PublishRefusal};
use crate::media::{Frame, Hub, ResumePoint};
use crate::origin::ingest::IngestStats;

/// A channel this edge publishes on, accepted under `epoch`.
struct Publishing {
    stream: StreamKey,
    epoch: u64,
    hub: Arc<Hub>,
    ingest: Arc<IngestStats>,
    /// The stream's [`Stream::fence`].
    fence: Arc<AtomicU64>,
    /// When it was accepted, and what its edge was last told of the HLS window
    /// (`RetainWindow`; `None`: nothing yet, and the edge keeps it).
    accepted: Instant,
    told_window: Option<bool>,
}

/// How long after accepting a publisher an origin waits before it tells the edge the
/// HLS window is not wanted: after a failover the edges that package the stream
/// subscribe here again within a second or two, and a window let go meanwhile would
/// be missing if this owner failed in turn.
pub(super) const WINDOW_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A publish waiting for this origin to apply the claim it names (and, after a
/// restart, to confirm its state is current: see [`LinkContext::mark_current`]).
///
/// Waiting happens in a task of its own, never on the link's read loop, which serves
/// every other session of the edge. Media arriving meanwhile is held, in order and
/// bounded ([`HeldFrames`]), and goes into the hub right after the publish is
/// accepted. Holding rather than dropping matters because an edge whose link came
/// back re-publishes and re-sends its buffered GOP at once, without waiting for
/// `PublishAccepted`; dropping would throw that GOP away. The bound keeps a
/// misbehaving edge from growing memory for the [`CLAIM_WAIT`] this may take.
struct PendingPublish {
    stream: StreamKey,
    epoch: u64,
    /// Tells this wait's completion from an older one's on the same channel.
    wait: u64,
    waiter: JoinHandle<()>,
    held: HeldFrames,
}

/// A pending publish's wait for its claim is over (applied, or timed out), and for
/// the previous owner's answer when one was asked.
pub(super) struct ClaimReady {
    channel: ChannelId,
    wait: u64,
    answered: Option<Answered>,
}

/// Where a subscription starts.
enum Start {
    /// At the GOP (`Subscribe`).
    Gop,
    /// Right after what the edge has, if the history reaches back that far
    /// (`SubscribeAfter`).
    After(ResumePoint),
    /// The HLS window's earlier frames as history, then at the GOP (`SubscribeWindow`).
    Window,
}

/// The state of one authenticated link.
pub(super) struct Link {
    id: u64,
    /// The edge's name, from its `Hello`.
    edge: String,
    /// The protocol its `Hello` spoke.
    protocol: u32,
    /// Woken when a stream published on this link becomes packaged as HLS somewhere
    /// ([`LinkContext::set_packaging`]).
    nudge: Arc<tokio::sync::Notify>,
    ctx: LinkContext,
    /// Control frames: written ahead of media.
    control: mpsc::Sender<LinkFrame>,
    /// Media, and the control frames that must stay in order with it.
    tx: mpsc::Sender<LinkFrame>,
    /// Channels this edge publishes on.
    publishing: HashMap<ChannelId, Publishing>,
    /// Publishes waiting for their claims.
    pending: HashMap<ChannelId, PendingPublish>,
    /// Channels this edge subscribed to: the stream and its pump task.
    pumps: HashMap<ChannelId, (StreamKey, JoinHandle<()>)>,
    /// Where waits for claims report; the read loop takes them in turn with frames.
    applied_tx: mpsc::Sender<ClaimReady>,
    next_wait: u64,
    /// The edge's claims feed, once it asked for one.
    feed: Option<Feed>,
}

impl Link {
    /// The state of link `id` from edge `edge`, writing through `tx`; the receiver
    /// gets the ends of claim waits, for the read loop to pass to [`Link::claim_ready`].
    pub(super) fn new(
        id: u64,
        edge: String,
        protocol: u32,
        ctx: LinkContext,
        control: mpsc::Sender<LinkFrame>,
        tx: mpsc::Sender<LinkFrame>,
    ) -> (Link, mpsc::Receiver<ClaimReady>) {
        let (applied_tx, applied) = mpsc::channel(MAX_PENDING_PUBLISHES);
        let link = Link {
            id,
            edge,
            protocol,
            nudge: Arc::default(),
            ctx,
            control,
            tx,
            publishing: HashMap::new(),
            pending: HashMap::new(),
            pumps: HashMap::new(),
            applied_tx,
            next_wait: 0,
            feed: None,
        };
        (link, applied)
    }

    async fn send(&self, control: Control) {
        let _ = self.control.send(LinkFrame::Control(control)).await;
    }

    pub(super) async fn handle(&mut self, frame: LinkFrame) {
        match frame {
            LinkFrame::Media(MediaFrame { channel, frame }) => {
                if let Some(p) = self.publishing.get(&channel) {
                    if p.fence.load(Ordering::Relaxed) > p.epoch {
                        self.fenced(channel).await;
                        return;
                    }
                    p.ingest.record(frame.payload.len(), Instant::now());
                    p.hub.publish(frame);
                } else if let Some(p) = self.pending.get_mut(&channel) {
                    let dropped = p.held.hold(frame);
                    if dropped > 0 {
                        self.ctx.stats.pending_dropped.inc_by(dropped);
                    }
                }
            }
            LinkFrame::Control(Control::Ping { seq }) => self.send(Control::Pong { seq }).await,
            LinkFrame::Control(Control::Publish { channel, stream, epoch }) => {
                self.publish(channel, stream, epoch).await
            }
            LinkFrame::Control(Control::Unpublish { channel }) => self.unpublish(channel),
            LinkFrame::Control(Control::Subscribe { channel, stream }) => {
                self.subscribe(channel, stream, Start::Gop).await
            }
            LinkFrame::Control(Control::SubscribeWindow { channel, stream }) => {
                self.subscribe(channel, stream, Start::Window).await
            }
            LinkFrame::Control(Control::SubscribeAfter { channel, stream, audio_ts, video_ts }) => {
                let after = ResumePoint { audio: audio_ts, video: video_ts };
                self.subscribe(channel, stream, Start::After(after)).await
            }
            LinkFrame::Control(Control::Unsubscribe { channel }) => self.unsubscribe(channel),
            LinkFrame::Control(Control::FetchWindow { channel, stream }) => self.fetch_window(channel, stream).await,
            LinkFrame::Control(Control::WatchClaims { channel, add, remove, at_least }) => {
                self.watch_claims(channel, add, remove, at_least)
            }
            LinkFrame::Control(Control::HlsInterest { channel, packaging }) => {
                if let Some((stream, _)) = self.pumps.get(&channel) {
                    self.ctx.set_packaging(stream, self.id, channel, packaging);
                }
            }
            LinkFrame::Control(Control::UnwatchClaims { channel }) => {
                if self.feed.as_ref().is_some_and(|f| f.channel == channel) {
                    self.feed = None;
                }
            }
            LinkFrame::Control(other) => tracing::debug!(?other, "ignored control frame"),
        }
    }

    async fn publish(&mut self, channel: ChannelId, stream: StreamKey, epoch: u64) {
        if self.publishing.get(&channel).is_some_and(|p| p.stream == stream && p.epoch == epoch) {
            // A repeat: still accepted (the numbering is the one this session has).
            self.send(Control::PublishAccepted { channel }).await;
            return;
        }
        // Whatever this channel carried before ends here.
        self.unpublish(channel);
        if self.ctx.is_current() && self.ctx.state.applied_index() >= epoch && !self.ctx.must_ask(&stream, epoch) {
            self.decide(channel, stream, epoch, VecDeque::new(), None).await;
            return;
        }
        if self.pending.len() >= MAX_PENDING_PUBLISHES {
            let reason = PublishRefusal::Busy(MAX_PENDING_PUBLISHES as u32);
            self.send(Control::PublishRefused { channel, reason }).await;
            return;
        }
        // The claim's entry is not applied here yet, this origin has not confirmed its
        // state since it started, or the origin that held the claim before must say
        // where the numbering stood: wait for all that off the read loop.
        self.next_wait += 1;
        let wait = self.next_wait;
        let (ctx, ready, mut current) = (self.ctx.clone(), self.applied_tx.clone(), self.ctx.current_watch());
        let key = stream.clone();
        let waiter = tokio::spawn(
            async move {
                // Timing out is fine: `decide` then finds no matching claim and refuses.
                let applied = tokio::time::timeout(CLAIM_WAIT, async {
                    let _ = current.wait_for(|current| *current).await;
                    let _ = ctx.raft.wait(None).applied_index_at_least(Some(epoch), "claim applied").await;
                })
                .await;
                let answered = match applied {
                    Ok(()) => ctx.ask_previous_owner(&key, epoch).await,
                    Err(_) => None,
                };
                let _ = ready.send(ClaimReady { channel, wait, answered }).await;
            }
            .in_current_span(),
        );
        self.pending.insert(channel, PendingPublish { stream, epoch, wait, waiter, held: HeldFrames::default() });
    }

    /// A wait for a claim ended: decide the publish it was for, if still pending.
    pub(super) async fn claim_ready(&mut self, ready: ClaimReady) {
        if self.pending.get(&ready.channel).is_none_or(|p| p.wait != ready.wait) {
            return; // withdrawn or replaced meanwhile
        }
        if let Some(p) = self.pending.remove(&ready.channel) {
            self.decide(ready.channel, p.stream, p.epoch, p.held.into_frames(), ready.answered).await;
        }
    }

    /// Accepts or refuses a publish against the applied claim; on acceptance the
    /// frames `held` while it waited go into the hub first, in order. `answered`: what
    /// the owner of the claim before said of the numbering, if it was asked.
    async fn decide(
        &mut self,
        channel: ChannelId,
        stream: StreamKey,
        epoch: u64,
        held: VecDeque<Frame>,
        answered: Option<Answered>,
    ) {
        let nudge = self.nudge.clone();
        let publisher = Publisher { link: self.id, channel, epoch, edge: self.edge.clone(), nudge };
        let accepted = self.ctx.attach(&stream, publisher, answered);
        let Attached { hub, ingest, fence, numbering } = match accepted {
            Ok(attached) => attached,
            Err(reason) => {
                tracing::info!(%stream, epoch, %reason, "publish refused");
                if !held.is_empty() {
                    self.ctx.stats.pending_dropped.inc_by(held.len() as u64);
                }
                self.send(Control::PublishRefused { channel, reason }).await;
                return;
            }
        };
        tracing::info!(%stream, epoch, ?channel, held = held.len(), %numbering, "publishing");
        let now = Instant::now();
        for frame in held {
            ingest.record(frame.payload.len(), now);
            hub.publish(frame);
        }
        let publishing = Publishing { stream, epoch, hub, ingest, fence, accepted: now, told_window: None };
        self.publishing.insert(channel, publishing);
        // The session before this one left marks, here or on the origin that held its
        // claim: the new one continues after them. (An edge following its own session
        // here after a failover ignores it.)
        match numbering {
            Numbering::After(mark) => {
                self.send(Control::PublishAcceptedAt { channel, continue_after: Some(mark) }).await
            }
            Numbering::SameSession | Numbering::WallClock(_) => self.send(Control::PublishAccepted { channel }).await,
        }
        self.retain_windows().await;
    }

    /// Woken when a stream published here becomes packaged as HLS somewhere.
    pub(super) fn nudge(&self) -> Arc<tokio::sync::Notify> {
        self.nudge.clone()
    }

    /// Tells the edge, for each stream it publishes here, whether to keep the HLS
    /// window's frames for a new owner (`RetainWindow`), where that changed: kept while
    /// [`LinkContext::wants_window`], let go once it is not and [`WINDOW_GRACE`] has
    /// passed since the publisher was accepted. Protocol-4 edges only: older ones keep
    /// the window always and could not decode the message.
    pub(super) async fn retain_windows(&mut self) {
        if self.protocol < 4 {
            return;
        }
        let now = Instant::now();
        let mut tell = Vec::new();
        for (channel, p) in &mut self.publishing {
            let keep = self.ctx.wants_window(&p.stream);
            let due = keep || now.saturating_duration_since(p.accepted) >= WINDOW_GRACE;
            if due && p.told_window != Some(keep) {
                p.told_window = Some(keep);
                tracing::debug!(stream = %p.stream, ?channel, keep, "telling the edge about the HLS window");
                tell.push(Control::RetainWindow { channel: *channel, keep });
            }
        }
        for control in tell {
            self.send(control).await;
        }
    }

    /// A newer publisher took the stream, or its claim was released: stop taking this
    /// channel's media and tell the edge.
    async fn fenced(&mut self, channel: ChannelId) {
        if let Some(p) = self.publishing.remove(&channel) {
            tracing::info!(stream = %p.stream, epoch = p.epoch, ?channel, "publisher fenced");
        }
        self.send(Control::PublishRefused { channel, reason: PublishRefusal::Fenced }).await;
    }

    /// Ends what `channel` publishes (or withdraws its waiting publish).
    fn unpublish(&mut self, channel: ChannelId) {
        if let Some(p) = self.pending.remove(&channel) {
            p.waiter.abort();
            if !p.held.is_empty() {
                self.ctx.stats.pending_dropped.inc_by(p.held.len() as u64);
            }
        }
        if let Some(p) = self.publishing.remove(&channel) {
            self.ctx.detach(&p.stream, self.id, channel);
        }
    }

    /// Subscribes `channel` to `stream`: from the GOP, or right after `after` (an edge
    /// that followed the stream here from another owner) when the hub's history reaches
    /// back that far.
    async fn subscribe(&mut self, channel: ChannelId, stream: StreamKey, start: Start) {
        // A channel carries one subscription: a new one replaces the old.
        self.unsubscribe(channel);
        // An edge older than protocol 4 never says whether HLS is packaged from this
        // subscription: count it as packaged (its publishing edges keep the window).
        let packaging = self.protocol < 4 || matches!(start, Start::Window);
        let Some(hub) = self.ctx.subscribe(&stream, self.id, channel, &self.edge, packaging) else {
            self.send(Control::NotFound { channel }).await;
            return;
        };
        // Frames that came before the subscription (the GOP, a resume's history) are
        // replays, not waits: the hop latency counts frames that arrive after it.
        let since = std::time::Instant::now();
        let (subscription, history) = match start {
            Start::Gop => (hub.subscribe(), None),
            Start::After(after) => {
                let (subscription, resumed) = hub.subscribe_after(Some(after));
                tracing::debug!(%stream, ?after, resumed, "subscription following the stream here");
                (subscription, None)
            }
            Start::Window => {
                let (history, subscription) = hub.subscribe_with_window();
                (subscription, Some(history))
            }
        };
        let tx = self.tx.clone();
        self.send(Control::Subscribed { channel }).await;
        let stats = self.ctx.stats.clone();
        let pump = tokio::spawn(async move {
            // The window's frames before the live start, then its end: the edge keeps
            // them for HLS and gives its players the live stream only.
            if let Some(history) = history {
                for frame in history {
                    if tx.send(LinkFrame::Media(MediaFrame { channel, frame })).await.is_err() {
                        return;
                    }
                }
                if tx.send(LinkFrame::Control(Control::WindowEnd { channel })).await.is_err() {
                    return;
                }
            }
            while let Some(frame) = subscription.recv().await {
                let arrived = frame.arrived.0;
                if tx.send(LinkFrame::Media(MediaFrame { channel, frame })).await.is_err() {
                    return;
                }
                if arrived >= since {
                    stats.hop.observe_since(arrived);
                }
            }
            let _ = tx.send(LinkFrame::Control(Control::Ended { channel })).await;
        });
        self.pumps.insert(channel, (stream, pump));
    }

    /// Sends `stream`'s HLS window on `channel`, then `WindowEnd` (`FetchWindow`). Off
    /// the read loop: the frames go through the link's bounded send queue like a
    /// pump's. The window is bounded (`--hls-window-*`), so is what this sends.
    async fn fetch_window(&mut self, channel: ChannelId, stream: StreamKey) {
        let Some(hub) = self.ctx.hub(&stream) else {
            self.send(Control::NotFound { channel }).await;
            return;
        };
        let frames = hub.window_frames();
        tracing::debug!(%stream, ?channel, frames = frames.len(), "sending the HLS window");
        let tx = self.tx.clone();
        tokio::spawn(async move {
            for frame in frames {
                if tx.send(LinkFrame::Media(MediaFrame { channel, frame })).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(LinkFrame::Control(Control::WindowEnd { channel })).await;
        });
    }

    /// `WatchClaims`: the feed on `channel` (a new one if the edge started afresh on
    /// another channel) follows `add` and no longer `remove`.
    fn watch_claims(&mut self, channel: ChannelId, add: Vec<StreamKey>, remove: Vec<StreamKey>, at_least: u64) {
        if add.len() > MAX_FEED_BATCH || remove.len() > MAX_FEED_BATCH {
            tracing::warn!(edge = %self.edge, add = add.len(), remove = remove.len(), "oversized WatchClaims ignored");
            return;
        }
        if self.feed.as_ref().is_none_or(|f| f.channel != channel) {
            self.feed = None; // unregisters the old one first
            let (state, raft) = (self.ctx.state.clone(), self.ctx.raft.clone());
            self.feed = Some(self.ctx.feeds.open(self.id, channel, state, raft, self.control.clone()));
        }
        let over = self.feed.as_ref().map_or(0, |f| f.update(add, remove, at_least));
        if over > 0 {
            tracing::warn!(edge = %self.edge, over, "claims feed full; streams not followed");
        }
    }

    fn unsubscribe(&mut self, channel: ChannelId) {
        if let Some((stream, pump)) = self.pumps.remove(&channel) {
            pump.abort();
            self.ctx.unsubscribe(&stream, self.id, channel);
        }
    }

    /// The link is gone: stop its pumps and waits, and end the streams it published.
    pub(super) fn close(&mut self) {
        self.feed = None;
        for channel in self.pumps.keys().copied().collect::<Vec<_>>() {
            self.unsubscribe(channel);
        }
        let channels: Vec<ChannelId> = self.publishing.keys().chain(self.pending.keys()).copied().collect();
        for channel in channels {
            self.unpublish(channel);
        }
    }
}
