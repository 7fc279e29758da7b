//! The origin's side of the edge↔origin link: accepts links from edges, authenticates
//! them, takes publishers' media under their claim's epoch into a per-stream [`Hub`],
//! and fans each stream out once per subscribed edge.
//!
//! One task reads each link; one task writes it from a bounded queue; one pump task per
//! subscription moves frames from the hub's bounded reader queue (which skips to the
//! next keyframe when the edge falls behind) into the link's queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use raftcast_raft::rpc::{constant_time_eq, ClusterSecret};
use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, StreamKey};
use raftcast_storage::StateHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::link::{ChannelId, Control, FrameCodec, LinkFrame, MediaFrame, PROTOCOL_VERSION};
use crate::media::{Hub, HubLimits};

/// Most edge links an origin accepts at once; more wait in the listen backlog.
pub const MAX_LINKS: usize = 256;
/// Frames queued for one link's writer. Pumps wait when it is full; the hub's reader
/// queue behind each pump is what drops (to a keyframe) when an edge cannot keep up.
pub const LINK_SEND_QUEUE: usize = 1024;
/// An edge must say `Hello` within this long after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A link silent for this long is dead (edges ping every 100 ms).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(2);
/// How long a publish waits for this origin to apply the claim it names.
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Counters of the link server, for metrics and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub links: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub refused: AtomicU64,
}

/// A live stream on this origin.
struct Stream {
    hub: Arc<Hub>,
    /// (link id, channel, epoch) of the current publisher, if one is attached.
    publisher: Option<(u64, ChannelId, u64)>,
}

/// What every link task shares.
#[derive(Clone)]
pub struct LinkContext {
    pub id: NodeId,
    pub secret: ClusterSecret,
    pub raft: Raft,
    pub state: StateHandle,
    pub stats: Arc<LinkStats>,
    streams: Arc<Mutex<HashMap<StreamKey, Stream>>>,
    next_link: Arc<AtomicU64>,
}

impl LinkContext {
    pub fn new(id: NodeId, secret: ClusterSecret, raft: Raft, state: StateHandle) -> Self {
        LinkContext {
            id,
            secret,
            raft,
            state,
            stats: Arc::default(),
            streams: Arc::default(),
            next_link: Arc::default(),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Stream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hub of `stream`, created if this origin owns it.
    fn hub(&self, stream: &StreamKey) -> Option<Arc<Hub>> {
        let owned = self.state.read(|sm| sm.streams.get(stream).is_some_and(|c| c.owner == self.id));
        let mut streams = self.streams();
        if let Some(s) = streams.get(stream) {
            return Some(s.hub.clone());
        }
        if !owned {
            return None;
        }
        let hub = Hub::new(HubLimits::default());
        streams.insert(stream.clone(), Stream { hub: hub.clone(), publisher: None });
        Some(hub)
    }
}

/// Accepts links until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: LinkContext, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_LINKS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
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
        let _ = socket.set_nodelay(true);
        let link = ctx.next_link.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("link", link, peer = %peer);
        tokio::spawn(
            async move {
                match run_link(socket, link, &ctx, shutdown).await {
                    Ok(()) => tracing::info!("link closed"),
                    Err(e) => tracing::warn!(error = %e, "link closed"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Reads one frame, waiting at most `limit`.
async fn read_frame(
    socket: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    stats: &LinkStats,
    limit: Duration,
) -> Result<LinkFrame, String> {
    loop {
        if let Some(frame) = FrameCodec::decode(buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let n = tokio::time::timeout(limit, socket.read_buf(buf))
            .await
            .map_err(|_| format!("silent for {limit:?}"))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the edge".into());
        }
        stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn run_link(socket: TcpStream, link: u64, ctx: &LinkContext, shutdown: CancellationToken) -> Result<(), String> {
    let (mut reader, mut writer) = socket.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Authenticate before anything else; only a small control frame is accepted here.
    let edge = match read_frame(&mut reader, &mut buf, &ctx.stats, HELLO_TIMEOUT).await? {
        LinkFrame::Control(Control::Hello { protocol, edge, secret })
            if protocol == PROTOCOL_VERSION && constant_time_eq(secret.as_bytes(), ctx.secret.as_str().as_bytes()) =>
        {
            edge
        }
        other => {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            let reason = match other {
                LinkFrame::Control(Control::Hello { protocol, .. }) if protocol != PROTOCOL_VERSION => {
                    format!("protocol {protocol} is not {PROTOCOL_VERSION}")
                }
                LinkFrame::Control(Control::Hello { .. }) => "wrong cluster secret".to_owned(),
                _ => "the first frame must be Hello".to_owned(),
            };
            let mut out = BytesMut::new();
            FrameCodec::encode(&LinkFrame::Control(Control::Refused { reason: reason.clone() }), &mut out);
            let _ = writer.write_all(&out).await;
            return Err(reason);
        }
    };
    tracing::info!(edge, "link up");
    ctx.stats.links.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<LinkFrame>(LINK_SEND_QUEUE);
    let writer_task = tokio::spawn(write_link(writer, rx, ctx.stats.clone()));
    let _ = tx.send(LinkFrame::Control(Control::Welcome { protocol: PROTOCOL_VERSION, origin: ctx.id })).await;
    let mut link = Link { id: link, ctx: ctx.clone(), tx, publishing: HashMap::new(), pumps: HashMap::new() };
    let result = loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, &mut buf, &ctx.stats, SILENCE_LIMIT) => frame,
            _ = shutdown.cancelled() => break Ok(()),
        };
        match frame {
            Ok(frame) => link.handle(frame).await,
            Err(e) => break Err(e),
        }
    };
    link.close();
    drop(link);
    let _ = writer_task.await;
    ctx.stats.links.fetch_sub(1, Ordering::Relaxed);
    result
}

async fn write_link(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<LinkFrame>,
    stats: Arc<LinkStats>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut frames = Vec::with_capacity(64);
    while rx.recv_many(&mut frames, 64).await > 0 {
        for frame in frames.drain(..) {
            FrameCodec::encode(&frame, &mut out);
        }
        let n = out.len();
        if writer.write_all(&out).await.is_err() {
            return;
        }
        stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        out.clear();
    }
}

/// The state of one authenticated link.
struct Link {
    id: u64,
    ctx: LinkContext,
    tx: mpsc::Sender<LinkFrame>,
    /// Channels this edge publishes on.
    publishing: HashMap<ChannelId, (StreamKey, Arc<Hub>)>,
    /// Channels this edge subscribed to, with their pump tasks.
    pumps: HashMap<ChannelId, JoinHandle<()>>,
}

impl Link {
    async fn send(&self, control: Control) {
        let _ = self.tx.send(LinkFrame::Control(control)).await;
    }

    async fn handle(&mut self, frame: LinkFrame) {
        match frame {
            LinkFrame::Media(MediaFrame { channel, frame }) => {
                if let Some((_, hub)) = self.publishing.get(&channel) {
                    hub.publish(frame);
                }
            }
            LinkFrame::Control(Control::Ping { seq }) => self.send(Control::Pong { seq }).await,
            LinkFrame::Control(Control::Publish { channel, stream, epoch }) => {
                self.publish(channel, stream, epoch).await
            }
            LinkFrame::Control(Control::Unpublish { channel }) => self.unpublish(channel),
            LinkFrame::Control(Control::Subscribe { channel, stream }) => self.subscribe(channel, stream).await,
            LinkFrame::Control(Control::Unsubscribe { channel }) => {
                if let Some(pump) = self.pumps.remove(&channel) {
                    pump.abort();
                }
            }
            LinkFrame::Control(other) => tracing::debug!(?other, "ignored control frame"),
        }
    }

    async fn publish(&mut self, channel: ChannelId, stream: StreamKey, epoch: u64) {
        // The claim's entry may not be applied here yet: wait for it, briefly.
        let _ = self.ctx.raft.wait(Some(CLAIM_WAIT)).applied_index_at_least(Some(epoch), "claim applied").await;
        let claim = self.ctx.state.read(|sm| sm.streams.get(&stream).cloned());
        let refusal = match &claim {
            None => Some("the stream has no claim".to_owned()),
            Some(c) if c.epoch != epoch => Some(format!("stale epoch {epoch}; the current epoch is {}", c.epoch)),
            Some(c) if c.owner != self.ctx.id => Some(format!("origin {} owns this stream", c.owner)),
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            tracing::info!(%stream, epoch, reason, "publish refused");
            self.send(Control::PublishRefused { channel, reason }).await;
            return;
        }
        let Some(hub) = self.ctx.hub(&stream) else { return };
        // A newer epoch fences whoever published before (the guard is released before
        // any await).
        let fenced = {
            let mut streams = self.ctx.streams();
            match streams.get_mut(&stream) {
                Some(s) if s.publisher.is_some_and(|(_, _, old)| old > epoch) => true,
                Some(s) => {
                    s.publisher = Some((self.id, channel, epoch));
                    false
                }
                None => false,
            }
        };
        if fenced {
            self.send(Control::PublishRefused { channel, reason: "a newer epoch publishes".into() }).await;
            return;
        }
        tracing::info!(%stream, epoch, ?channel, "publishing");
        self.publishing.insert(channel, (stream, hub));
        self.send(Control::PublishAccepted { channel }).await;
    }

    fn unpublish(&mut self, channel: ChannelId) {
        if let Some((stream, hub)) = self.publishing.remove(&channel) {
            let mut streams = self.ctx.streams();
            if streams.get(&stream).is_some_and(|s| s.publisher.is_some_and(|(l, c, _)| l == self.id && c == channel)) {
                hub.end();
                streams.remove(&stream);
            }
        }
    }

    async fn subscribe(&mut self, channel: ChannelId, stream: StreamKey) {
        let Some(hub) = self.ctx.hub(&stream) else {
            self.send(Control::NotFound { channel }).await;
            return;
        };
        let subscription = hub.subscribe();
        let tx = self.tx.clone();
        self.send(Control::Subscribed { channel }).await;
        let pump = tokio::spawn(async move {
            while let Some(frame) = subscription.recv().await {
                if tx.send(LinkFrame::Media(MediaFrame { channel, frame })).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(LinkFrame::Control(Control::Ended { channel })).await;
        });
        if let Some(old) = self.pumps.insert(channel, pump) {
            old.abort();
        }
    }

    /// The link is gone: stop its pumps and end the streams it published.
    fn close(&mut self) {
        for (_, pump) in self.pumps.drain() {
            pump.abort();
        }
        for channel in self.publishing.keys().copied().collect::<Vec<_>>() {
            self.unpublish(channel);
        }
    }
}
