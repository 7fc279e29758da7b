//! The edge's links to origins: one per origin media address, shared by every session
//! on the edge, with channels multiplexed over it.
//!
//! A dispatcher task per link routes what the origin sends: media frames of a
//! subscribed channel go straight into that channel's [`Hub`] (no extra hop), control
//! frames and link ups and downs go to the channel's owner through a small bounded
//! queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftcast_raft::rpc::ClusterSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::link::client::{self, LinkHandle, LinkState, LinkTiming, SendError};
use crate::link::{ChannelId, Control, LinkEvent, LinkFrame, MediaFrame};
use crate::media::continuity::Continuity;
use crate::media::Hub;
use crate::tls::peer::PeerTls;

/// Control events queued for one channel's owner; a channel sees a handful in its life.
const CHANNEL_EVENTS: usize = 32;
/// Link events waiting for the dispatcher.
const LINK_EVENTS: usize = 1024;

/// What a channel's owner hears.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// A control frame for this channel (`PublishAccepted`, `Subscribed`, `Ended`, …).
    Control(Control),
    /// The link (re)connected.
    Up,
    /// The link went down: everything on the channel is gone at the origin.
    Down(String),
}

struct Channel {
    events: mpsc::Sender<ChannelEvent>,
    /// Where media arriving on the channel goes (subscriptions).
    sink: Option<Sink>,
    /// Or what collects it (a fetched HLS window).
    collect: Option<Arc<Collected>>,
}

/// The frames of a fetched HLS window (`FetchWindow`), collected as they arrive.
/// Bounded by bytes: past the bound the rest is dropped and the fetch counts as
/// failed (the edge then starts its window with what is live).
pub struct Collected {
    max_bytes: usize,
    inner: Mutex<(Vec<crate::media::Frame>, usize, bool)>,
}

impl Collected {
    fn push(&self, frame: crate::media::Frame) {
        let mut inner = lock(&self.inner);
        let (frames, bytes, over) = &mut *inner;
        if *over {
            return;
        }
        *bytes += frame.cost();
        if *bytes > self.max_bytes {
            *over = true;
            frames.clear();
        } else {
            frames.push(frame);
        }
    }

    /// What arrived, or `None` if it went over the bound.
    pub fn take(&self) -> Option<Vec<crate::media::Frame>> {
        let mut inner = lock(&self.inner);
        let (frames, _, over) = &mut *inner;
        (!*over).then(|| std::mem::take(frames))
    }
}

/// Where a subscription's media goes: through the relay's continuity filter (shared by
/// its successive subscriptions, so a replay from a new owner is not delivered twice)
/// into its hub.
#[derive(Clone)]
pub struct Sink {
    pub hub: Arc<Hub>,
    pub continuity: Arc<Mutex<Continuity>>,
    /// Set while the origin sends the HLS window ahead of the live stream
    /// (`SubscribeWindow`, until `WindowEnd`): those frames are history, for HLS
    /// readers only ([`Hub::publish_history`]).
    pub history: Arc<AtomicBool>,
}

impl Sink {
    fn deliver(&self, frame: crate::media::Frame) {
        let admitted = self.continuity.lock().unwrap_or_else(|p| p.into_inner()).admit(frame);
        if let Some(frame) = admitted {
            if self.history.load(Ordering::Relaxed) {
                self.hub.publish_history(frame);
            } else {
                self.hub.publish(frame);
            }
        }
    }
}

/// All links of this edge.
pub struct Upstreams {
    edge: String,
    secret: ClusterSecret,
    tls: Option<Arc<PeerTls>>,
    timing: LinkTiming,
    shutdown: CancellationToken,
    links: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
}

/// One link, to the origin at `addr`.
pub struct Upstream {
    pub addr: SocketAddr,
    handle: LinkHandle,
    channels: Mutex<HashMap<ChannelId, Channel>>,
    next_channel: AtomicU32,
    /// Media frames received and their payload bytes.
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Media frames sent and their payload bytes.
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstreams {
    pub fn new(
        edge: String,
        secret: ClusterSecret,
        tls: Option<Arc<PeerTls>>,
        timing: LinkTiming,
        shutdown: CancellationToken,
    ) -> Self {
        Upstreams { edge, secret, tls, timing, shutdown, links: Mutex::default() }
    }

    /// The link to `addr`, started on first use.
    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        let mut links = lock(&self.links);
        if let Some(up) = links.get(&addr) {
            return up.clone();
        }
        let (tx, rx) = mpsc::channel(LINK_EVENTS);
        let (edge, secret, tls) = (self.edge.clone(), self.secret.clone(), self.tls.clone());
        let handle = client::spawn(addr, edge, secret, tls, self.timing, tx, self.shutdown.clone());
        let up = Arc::new(Upstream {
            addr,
            handle,
            channels: Mutex::default(),
            next_channel: AtomicU32::new(1),
            frames_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        });
        tokio::spawn(dispatch(up.clone(), rx));
        links.insert(addr, up.clone());
        up
    }

    /// Every link, for status and metrics.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let mut all: Vec<_> = lock(&self.links).values().cloned().collect();
        all.sort_by_key(|u| u.addr);
        all
    }
}

impl Upstream {
    pub fn state(&self) -> LinkState {
        self.handle.state()
    }

    /// Whether the link is live now.
    pub fn is_live(&self) -> bool {
        matches!(self.state(), LinkState::Live { .. })
    }

    /// Waits until the link is live, at most `limit`; a link pausing between reconnects
    /// tries again at once ([`client::LinkHandle::want`]).
    pub async fn live(&self, limit: Duration) -> bool {
        self.handle.want();
        let mut watch = self.handle.watch();
        let ready = tokio::time::timeout(limit, watch.wait_for(|s| matches!(s, LinkState::Live { .. }))).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Opens a channel; its events arrive on the returned receiver, and media on it goes
    /// to `sink` when given. Close it with [`close`](Self::close).
    pub fn open(&self, sink: Option<Sink>) -> (ChannelId, mpsc::Receiver<ChannelEvent>) {
        self.open_with(sink, CHANNEL_EVENTS)
    }

    /// [`open`](Self::open) with room for `events` queued events (the claims feed's
    /// channel sees many more than a stream's).
    pub fn open_with(&self, sink: Option<Sink>, events: usize) -> (ChannelId, mpsc::Receiver<ChannelEvent>) {
        let (tx, rx) = mpsc::channel(events);
        let id = ChannelId(self.next_channel.fetch_add(1, Ordering::Relaxed));
        lock(&self.channels).insert(id, Channel { events: tx, sink, collect: None });
        (id, rx)
    }

    /// Opens a channel whose media is collected, up to `max_bytes` (`FetchWindow`).
    pub fn open_collect(&self, max_bytes: usize) -> (ChannelId, mpsc::Receiver<ChannelEvent>, Arc<Collected>) {
        let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
        let id = ChannelId(self.next_channel.fetch_add(1, Ordering::Relaxed));
        let collect = Arc::new(Collected { max_bytes, inner: Mutex::default() });
        lock(&self.channels).insert(id, Channel { events: tx, sink: None, collect: Some(collect.clone()) });
        (id, rx, collect)
    }

    /// Forgets a channel: nothing more is routed to it.
    pub fn close(&self, channel: ChannelId) {
        lock(&self.channels).remove(&channel);
    }

    /// Sends a control frame if the link is live.
    pub fn control(&self, control: Control) -> Result<(), SendError> {
        self.handle.send(LinkFrame::Control(control))
    }

    /// Queues a control frame behind the media already queued (the control lane
    /// would overtake them), waiting up to `limit` for room: `Unpublish` must reach
    /// the origin after the publication's last frames.
    pub async fn control_after_media(&self, control: Control, limit: Duration) -> Result<(), SendError> {
        self.handle.send_wait(LinkFrame::Control(control), limit).await
    }

    /// Queues a media frame, waiting up to `limit` for room in the link's send queue.
    pub async fn media(&self, frame: MediaFrame, limit: Duration) -> Result<(), SendError> {
        let bytes = frame.frame.payload.len() as u64;
        self.handle.send_wait(LinkFrame::Media(frame), limit).await?;
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    pub fn channel_count(&self) -> usize {
        lock(&self.channels).len()
    }
}

/// Routes one link's events to its channels until the link task ends.
async fn dispatch(up: Arc<Upstream>, mut events: mpsc::Receiver<LinkEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            LinkEvent::Frame(LinkFrame::Media(MediaFrame { channel, frame })) => {
                up.frames_in.fetch_add(1, Ordering::Relaxed);
                up.bytes_in.fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                let (sink, collect) = match lock(&up.channels).get(&channel) {
                    Some(c) => (c.sink.clone(), c.collect.clone()),
                    None => (None, None),
                };
                if let Some(sink) = sink {
                    sink.deliver(frame);
                } else if let Some(collect) = collect {
                    collect.push(frame);
                }
            }
            LinkEvent::Frame(LinkFrame::Control(control)) => {
                let Some(channel) = channel_of(&control) else {
                    tracing::debug!(?control, "control frame for no channel");
                    continue;
                };
                if let Control::WindowEnd { .. } = control {
                    // In order with the media: what follows on the channel is live.
                    if let Some(sink) = lock(&up.channels).get(&channel).and_then(|c| c.sink.as_ref()) {
                        sink.history.store(false, Ordering::Relaxed);
                        sink.hub.end_history();
                    }
                }
                let tx = lock(&up.channels).get(&channel).map(|c| c.events.clone());
                if let Some(tx) = tx {
                    if tx.try_send(ChannelEvent::Control(control)).is_err() {
                        tracing::warn!(?channel, "a channel's owner is not reading its events");
                    }
                }
            }
            LinkEvent::Up { .. } => broadcast(&up, ChannelEvent::Up),
            LinkEvent::Down { reason } => broadcast(&up, ChannelEvent::Down(reason)),
        }
    }
}

fn broadcast(up: &Upstream, event: ChannelEvent) {
    for channel in lock(&up.channels).values() {
        let _ = channel.events.try_send(event.clone());
    }
}

/// The channel a control frame from the origin is about.
fn channel_of(control: &Control) -> Option<ChannelId> {
    match control {
        Control::PublishAccepted { channel }
        | Control::PublishAcceptedAt { channel, .. }
        | Control::WindowEnd { channel }
        | Control::PublishRefused { channel, .. }
        | Control::Subscribed { channel }
        | Control::NotFound { channel }
        | Control::Ended { channel }
        | Control::RetainWindow { channel, .. }
        | Control::Claims { channel, .. } => Some(*channel),
        _ => None,
    }
}
