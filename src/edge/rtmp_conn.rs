//! RTMP connections: the accept loop and one task per connection driving the sans-IO
//! [`ServerSession`].
//!
//! The connection task is the only owner of the socket and the session. Decisions that
//! need the cluster (claims, lookups) run as futures polled by the same task, so the
//! connection keeps reading (pings, acknowledgements, media) while they are pending.
//! Each play is a [`Pump`], a stream the connection task polls itself (no task of its
//! own, no channel), turning frames of the stream's local hub into chunk bytes —
//! encoded once per stream and shared ([`crate::media::frame::WireCache`]). Over plain
//! TCP the connection lends its socket to the stream's direct fan-out whenever it has
//! nothing of its own to write ([`super::direct`], [`crate::media::fanout`]): the live
//! frames are then written by a few shard tasks per stream, with no wakeup of this
//! task, and it takes the socket back before it writes anything itself. When the player reads too slowly the outbox
//! passes its high-water mark, the task stops pulling, and the hub's reader queue
//! skips to the next keyframe (counted). The publisher and other players never wait
//! for a player.
//!
//! Player writes are merged, adaptively by default: video, data and control messages
//! leave at once. While the edge is lightly loaded audio does too; from 30 % of its
//! cores busy (`agent::next_audio_hold`, `--audio-hold-above-cpu`) audio reaching an
//! idle socket waits for the next video frame (at most 50 ms) with the play's hub
//! readers gated ([`AudioGate`]) so that audio does not wake the connection meanwhile:
//! a player then costs one wakeup, one syscall and one TCP segment per video frame
//! instead of one per frame, and video is still never held. Above 60 % of its cores
//! busy (`agent::next_merge_window`),
//! media reaching an idle socket is held for a window that grows by steps, up to
//! 100 ms, until the load is back under 60 % (and shrinks under 40 %): a busy edge
//! trades latency for the writes it saves.
//! `--write-merge-ms N` instead holds all media reaching an idle socket for N ms (SRS's
//! "merged write", with a bound in milliseconds rather than its 350 ms default; 0:
//! every frame at once). Control messages are never held.
//!
//! Plays and publishes of apps that require stream tokens are checked first (the token
//! from `name?token=…`, else the connect URL's query), in the decision future:
//! `NetStream.Publish.Unauthorized` before any claim, `NetStream.Play.Failed` before
//! any relay (`docs/tokens.md`).
//!
//! RTMPS is the same loop and the same task over a TLS stream ([`ClientStream`]): the
//! TLS handshake runs in the connection's task, under the RTMP handshake's permit and
//! deadline. RTMPT is the same task over an in-memory pipe (`edge::rtmpt` feeds it from
//! HTTP requests; [`run_stream`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use raftcast_raft::token::StreamRight::{Play, Publish};
use raftcast_raft::StreamKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::config::WriteMerge;
use super::direct::{chunks, DirectSocket, SharedReader, SharedWriter};
use super::hooks::{admit_session, DoneNotice, HookCall, HookEvent};
use super::so_session::ConnObjects;
use super::streams::{Lease, Publication, Refusal};
use super::tokens::{Protocol, StreamAuthError};
use super::vod::hls::VodIndex;
use super::vod::player::{Control, Note};
use super::vod::rtmp::{VodOut, VodPlay};
use super::vod::{self, VodError, VodFile, VOD_APP};
use super::EdgeContext;
use crate::limits::{Permit, Refused, Reservation};
use crate::media::hop::HopLatency;
use crate::media::hub::{AudioGate, ResumePoint};
use crate::media::{Frame, Hub, Subscription};
use crate::rtmp::handshake::{Handshake, Progress};
use crate::rtmp::message;
use crate::rtmp::session::{PublishRejection, ServerConfig, ServerEvent, ServerSession};
use crate::vod::VodId;

/// Bytes waiting for the socket beyond which no more media is taken from the pumps
/// (their hub reader queues then fill and skip to the next keyframe).
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// Media gathered beyond this is written at once instead of waiting for the merge
/// window to close.
const MERGE_FLUSH_BYTES: usize = 64 * 1024;
/// An emptied outbox with room for more buffers (or frame arrivals) than this gives
/// the room back, keeping room for `OUTBOX_SHRINK_TO`.
const OUTBOX_SHRINK_ABOVE: usize = 16;
const OUTBOX_SHRINK_TO: usize = 4;
/// Buffers handed to one vectored write (its slices are part of the connection task's
/// state while the write waits: every player carries them).
const WRITE_SLICES: usize = 16;
/// Largest read buffer (a publisher's).
const READ_CHUNK: usize = 64 * 1024;
/// A connection's first read buffer, doubled up to `READ_CHUNK` each time a read fills
/// it: a player's commands and acknowledgements fit (each player keeps it).
const READ_FIRST: usize = 1024;
/// Decisions a connection may have pending before a `getStreamLength` of a VOD file is
/// answered 0 rather than looked up (each lookup may fetch and index a file).
const MAX_PENDING_LENGTHS: usize = 8;

/// A client's byte stream, TCP, TLS over TCP or an RTMPT tunnel's pipe, split into the halves the connection
/// task polls side by side.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: AsyncRead + Unpin + Send;
    type Writer: AsyncWrite + Unpin + Send;
    /// Whether a write may leave bytes inside the stream until it is flushed (TLS
    /// records); a plain socket's flush does nothing.
    const BUFFERS_WRITES: bool;
    fn split(self) -> (Self::Reader, Self::Writer);
    /// The socket the direct fan-out may write to for this connection (plain TCP
    /// only: see [`super::direct`]).
    fn direct(_writer: &Self::Writer) -> Option<Arc<TcpStream>> {
        None
    }
}

impl ClientStream for TcpStream {
    type Reader = SharedReader;
    type Writer = SharedWriter;
    const BUFFERS_WRITES: bool = false;
    fn split(self) -> (Self::Reader, Self::Writer) {
        let socket = Arc::new(self);
        (SharedReader(socket.clone()), SharedWriter(socket))
    }
    fn direct(writer: &Self::Writer) -> Option<Arc<TcpStream>> {
        Some(writer.0.clone())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for tokio_rustls::server::TlsStream<S> {
    type Reader = tokio::io::ReadHalf<Self>;
    type Writer = tokio::io::WriteHalf<Self>;
    const BUFFERS_WRITES: bool = true;
    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// Accepts RTMP connections until `shutdown`; with `tls`, RTMPS (each connection's TLS
/// handshake then its RTMP handshake). Caps, each refused at once (closed,
/// counted in `edge_limit_refused_total`) rather than left waiting in the backlog:
///
/// - connections: `--max-connections` in all, `--max-connections-per-address`;
/// - handshakes in progress: `--max-handshakes[-per-address]`, each finished within
///   `--handshake-timeout-ms` in all (not per read; for RTMPS the TLS and RTMP
///   handshakes together, on one permit);
/// - sessions that have not published, played or used a shared object:
///   `--max-unstarted[-per-address]`, closed `--start-timeout-ms` after the handshake;
/// - publishes: `--max-publishes-per-address` (refused with `NetStream.Publish.Failed`);
/// - partially received messages: `--max-partial-bytes-before-connect`, then
///   `--max-partial-bytes-per-connection`, and `--max-partial-bytes` over all
///   connections; going over closes that connection;
/// - progress: a connection that completes no message for `--idle-timeout-ms`, and
///   plays nothing, is closed (bytes that never make a message do not count);
/// - behind a load balancer (`--proxy-protocol-from`): a connection from a trusted
///   balancer must open with a PROXY protocol header within 5 s (or it is closed), at
///   most [`crate::proxy_protocol::MAX_PENDING_HEADERS`] being read at once; every cap
///   above then counts the client the header names, not the balancer;
/// - bans: a client address refused at accept more than `--ban-refusals-per-second`
///   is banned below accept ([`crate::bans`]); its connections are reset, not closed.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<EdgeContext>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let what = if tls.is_some() { "rtmps" } else { "rtmp" };
    let mut gate = crate::bans::Gate::new(what, ctx.limits.bans, ctx.limits.rtmp_bans.clone());
    loop {
        let accepted = tokio::select! {
            accepted = gate.accept(&listener) => accepted,
            _ = shutdown.cancelled() => return,
            // A draining edge takes no new RTMP client: the listener closes, so a
            // connection attempt is refused and a balancer redispatches it to another
            // edge (HAProxy's `retries` and `option redispatch`). Accepting it would
            // only ask it to reconnect again: players bounced about 85 times each
            // between a draining edge and the other one before HAProxy's health checks
            // took the drained edge out (`scripts/moves-under-load.sh`, "edges").
            _ = ctx.draining.cancelled() => {
                tracing::info!("draining: the {what} listener closes; clients connected stay");
                return;
            }
        };
        let (socket, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(ctx.config.tcp_nodelay);
        let next = ctx.stats.connection_ids.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(proxy) = ctx.limits.proxy.as_ref().filter(|p| p.trusts(peer.ip())) {
            // Behind a trusted balancer the client is known once its PROXY header is
            // read: off the accept loop, in one of the bounded slots for headers.
            let Some(pending) = proxy.pending(peer.ip()) else {
                ctx.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "RTMP connection refused: too many PROXY headers pending");
                continue;
            };
            let (ctx, tls, shutdown) = (ctx.clone(), tls.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut socket = socket;
                let read = tokio::select! {
                    read = crate::proxy_protocol::read_header(&mut socket, crate::proxy_protocol::HEADER_DEADLINE) => read,
                    _ = shutdown.cancelled() => return,
                };
                drop(pending);
                match read {
                    Ok((header, rest)) => {
                        let client = header.client(peer);
                        let Ok(permits) = admit(&ctx, client) else { return };
                        match tls {
                            None => run(socket, client, rest.to_vec(), next, ctx, permits, shutdown).await,
                            Some(tls) => {
                                let socket = crate::proxy_protocol::Prefixed::new(rest, socket);
                                run_tls(socket, tls, client, next, ctx, permits, shutdown).await
                            }
                        }
                    }
                    Err(e) => tracing::info!(conn = next, balancer = %peer, error = %e, "closed"),
                }
            });
            continue;
        }
        if !gate.admit(&socket, peer.ip()) {
            ctx.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(permits) = admit(&ctx, peer) else {
            gate.refused(&listener, &socket, peer.ip());
            continue;
        };
        match &tls {
            None => tokio::spawn(run(socket, peer, Vec::new(), next, ctx.clone(), permits, shutdown.clone())),
            Some(tls) => tokio::spawn(run_tls(socket, tls.clone(), peer, next, ctx.clone(), permits, shutdown.clone())),
        };
    }
}

/// An RTMPS connection: the TLS handshake, then [`run`] over the TLS stream with
/// what is left of the handshake deadline.
async fn run_tls<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    socket: S,
    tls: TlsAcceptor,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<EdgeContext>,
    permits: (Permit, Permit),
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    let accepted = tokio::select! {
        accepted = tokio::time::timeout_at(deadline, tls.accept(socket)) => accepted,
        _ = shutdown.cancelled() => return,
    };
    match ctx.stats.tls_rtmps.record(accepted) {
        Ok(stream) => {
            run_until(stream, "rtmps", peer, Vec::new(), id, ctx, permits, deadline, shutdown, Resume::default()).await
        }
        Err(why) => tracing::debug!(conn = id, %peer, why, "TLS handshake failed"),
    }
}

/// Takes the connection and handshake permits for the client at `peer`, or counts the
/// refusal (the caller closes the socket, or refuses the RTMPT session).
pub(super) fn admit(ctx: &EdgeContext, peer: SocketAddr) -> Result<(Permit, Permit), Refused> {
    let permits = ctx
        .limits
        .rtmp_connections
        .try_acquire(peer.ip())
        .and_then(|conn| Ok((conn, ctx.limits.handshakes.try_acquire(peer.ip())?)));
    if let Err(refused) = &permits {
        ctx.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
        // Counted per class in /metrics; a flood must not flood the log too.
        tracing::debug!(%peer, %refused, "RTMP connection refused");
    }
    permits
}

/// One connection's task: `peer` is the client (the address a PROXY header carried,
/// when a balancer relays it), `early` the bytes that came with that header.
async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    early: Vec<u8>,
    id: u64,
    ctx: Arc<EdgeContext>,
    permits: (Permit, Permit),
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    run_until(socket, "rtmp", peer, early, id, ctx, permits, deadline, shutdown, Resume::default()).await
}

/// What a connection of an RTMPT session keeps across edges (see `edge::rtmpt`'s
/// takeover). Empty for every other connection.
#[derive(Debug, Default)]
pub(super) struct Resume {
    /// Where the plays of a connection that takes a session over resume, by message
    /// stream id: each starts after its point rather than at the GOP.
    pub plays: HashMap<u32, ResumePoint>,
    /// The name of the connection's sessions in claims and webhooks, in place of this
    /// edge's `{start}-{connection}`: an RTMPT session's is the same on every edge
    /// that holds it, so a publish taken over continues the same publishing session
    /// (relays drop what they already had, rather than joining a new timeline).
    pub session: Option<String>,
}

/// A connection over a stream no listener accepted (an RTMPT session's pipe), with
/// the permits [`admit`] gave: the same task as a TCP client's. `protocol` is what
/// webhooks call it (`rtmpt`, `rtmpts`); `resume`, where its plays resume.
pub(super) async fn run_stream<S: ClientStream>(
    stream: S,
    protocol: &'static str,
    peer: SocketAddr,
    ctx: Arc<EdgeContext>,
    permits: (Permit, Permit),
    shutdown: CancellationToken,
    resume: Resume,
) {
    let id = ctx.stats.connection_ids.fetch_add(1, Ordering::Relaxed) + 1;
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    run_until(stream, protocol, peer, Vec::new(), id, ctx, permits, deadline, shutdown, resume).await
}

/// [`run`] over any client stream, the RTMP handshake due by `handshake_deadline`;
/// `protocol` (`rtmp`, `rtmps`, `rtmpt` or `rtmpts`) is what webhooks call it.
#[allow(clippy::too_many_arguments)]
async fn run_until<S: ClientStream>(
    socket: S,
    protocol: &'static str,
    peer: SocketAddr,
    early: Vec<u8>,
    id: u64,
    ctx: Arc<EdgeContext>,
    (permit, handshake_permit): (Permit, Permit),
    handshake_deadline: Instant,
    shutdown: CancellationToken,
    resume: Resume,
) {
    // A debug span: an enabled span is entered and left on every wakeup of the
    // task, which costs more than the rest of a player's wakeup; the info lines
    // below carry the connection and peer themselves.
    let span = tracing::debug_span!("rtmp", conn = id, %peer);
    async move {
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let handshake = (handshake_permit, handshake_deadline);
        match connection(socket, protocol, peer, early, id, &ctx, handshake, shutdown, resume).await {
            Ok(()) => tracing::debug!("closed"),
            Err(e) => tracing::info!(conn = id, %peer, error = %e, "closed"),
        }
        ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }
    .instrument(span)
    .await
}

/// What the play pumps yield to their connection.
enum Out {
    /// Chunk bytes for the socket, when a live frame reached the edge (`None` for
    /// the frames a play starts with, which came before it), whether the frame is
    /// a codec header or metadata, and whether the adaptive merge may hold it for the
    /// next video frame (live audio; a VOD play's media, paced ahead of its player).
    Media(Bytes, Option<std::time::Instant>, bool, bool),
    /// The stream (re)appeared: `NetStream.Play.PublishNotify`.
    Published(u32),
    /// The publisher left: `NetStream.Play.UnpublishNotify`.
    Unpublished(u32),
    /// A VOD play's note for its session (`edge::vod::rtmp`), and the file's duration.
    Vod(u32, Note, Duration),
    /// A VOD play's file could not be read: the play ends.
    VodFailed(u32, String),
}

/// The answer to a decision the cluster (or an app's webhook) had to help with.
enum Decision {
    /// The app's `on_connect` hook answered (`Err`: why the connect is rejected).
    Connect(Result<(), String>),
    Publish {
        stream_id: u32,
        result: Result<(Publication, DoneNotice), Refusal>,
    },
    Play {
        stream_id: u32,
        name: String,
        lease: Option<Lease>,
        done: DoneNotice,
    },
    /// The play token does not allow the play (`NetStream.Play.Failed`, `why`).
    PlayRefused {
        stream_id: u32,
        why: String,
    },
    /// A play of app `vod` (`rtmp://EDGE/vod/{id}`): the file and its index, or `None`
    /// when there is no such file (`NetStream.Play.StreamNotFound`).
    VodPlay {
        stream_id: u32,
        name: String,
        /// Where to start and how long to play, ms (`None`: from the start, to the end).
        span: (Option<u64>, Option<u64>),
        found: Option<(VodFile, Arc<VodIndex>)>,
        done: DoneNotice,
    },
    /// The answer to a `getStreamLength`, in seconds.
    StreamLength {
        transaction_id: f64,
        secs: f64,
    },
}

struct Conn {
    ctx: Arc<EdgeContext>,
    id: u64,
    session: ServerSession,
    app: Option<String>,
    connect_query: Option<String>,
    publishing: HashMap<u32, Publication>,
    /// `rtmp` or `rtmps`.
    protocol: &'static str,
    /// Per publish or play admitted by the app's hooks: sends its `_done` notice when
    /// the stream closes or the connection ends.
    done: HashMap<u32, DoneNotice>,
    /// One pump per play, polled by this task; a pump never ends by itself.
    playing: StreamMap<u32, BoxStream<'static, Out>>,
    /// The controls (`seek`, `pause`, buffer length) of each VOD play.
    vod_controls: HashMap<u32, mpsc::Sender<Control>>,
    /// Streams with a decision pending; a stream closed meanwhile is dropped from here.
    pending_ids: HashSet<u32>,
    decisions: FuturesUnordered<BoxFuture<'static, Decision>>,
    /// Cancelled when a newer claim fences one of this connection's publications.
    fenced: CancellationToken,
    /// The shared objects this client uses.
    objects: ConnObjects,
    /// Lets the pumps' hub readers sleep through audio while the adaptive merge holds
    /// it for the next video frame (`None` with a fixed window).
    gate: Option<Arc<AudioGate>>,
    /// The socket as the direct fan-out writes to it, when it may (plain TCP,
    /// `--direct-writes`): lent while this task has nothing of its own to write.
    direct: Option<Arc<DirectSocket>>,
    /// A play just started: its first media is written without a merge window.
    started_play: bool,
    /// Media other than headers went out since the play started: only then is the play
    /// past its first frames (a relay's headers can come well before its first GOP).
    wrote_media: bool,
    peer: SocketAddr,
    /// Held until the session publishes, plays or uses a shared object.
    unstarted: Option<Permit>,
    /// One per publish, from the request until the stream closes.
    publish_permits: HashMap<u32, Permit>,
    /// This connection's share of the edge's budget for partial messages.
    partial: Reservation,
    /// Resume points of the plays of a connection that took over an RTMPT session.
    resume: Resume,
}

/// The server side of the handshake, due by `deadline`; `early` is what arrived before
/// it was started (bytes that followed a PROXY header).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut S,
    early: Vec<u8>,
    deadline: Instant,
    ctx: &EdgeContext,
) -> Result<Vec<u8>, String> {
    let mut hs = Handshake::server();
    let mut buf = vec![0u8; 4096];
    let work = async {
        if !early.is_empty() {
            match hs.feed(&early).map_err(|e| e.to_string())? {
                Progress::InProgress { send } => send_all(socket, &send).await?,
                Progress::Done { send, leftover } => {
                    send_all(socket, &send).await?;
                    return Ok(leftover);
                }
            }
        }
        loop {
            let n = socket.read(&mut buf).await.map_err(|e| format!("handshake read: {e}"))?;
            if n == 0 {
                return Err("closed during the handshake".to_owned());
            }
            ctx.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            match hs.feed(&buf[..n]).map_err(|e| e.to_string())? {
                Progress::InProgress { send } => send_all(socket, &send).await?,
                Progress::Done { send, leftover } => {
                    send_all(socket, &send).await?;
                    return Ok(leftover);
                }
            }
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| format!("no handshake within {:?}", ctx.config.handshake_timeout))?
}

/// Writes and flushes (a TLS stream holds its last record until flushed).
async fn send_all<S: AsyncWrite + Unpin>(socket: &mut S, bytes: &[u8]) -> Result<(), String> {
    socket.write_all(bytes).await.map_err(|e| e.to_string())?;
    socket.flush().await.map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
async fn connection<S: ClientStream>(
    mut socket: S,
    protocol: &'static str,
    peer: SocketAddr,
    early: Vec<u8>,
    id: u64,
    ctx: &Arc<EdgeContext>,
    (handshake_permit, handshake_deadline): (Permit, Instant),
    shutdown: CancellationToken,
    resume: Resume,
) -> Result<(), String> {
    // Boxed: its state (the handshake's buffers) would otherwise size this future, and
    // so every connection's task, for the connection's whole life (1.5 KiB of 4.8).
    let leftover = Box::pin(handshake(&mut socket, early, handshake_deadline, ctx)).await?;
    drop(handshake_permit);
    tracing::debug!(%peer, "handshake done");
    let unstarted = ctx.limits.unstarted.try_acquire(peer.ip()).map_err(|e| format!("refused: {e}"))?;
    let start_deadline = Instant::now() + ctx.config.caps.start_timeout;
    let (mut reader, mut writer) = socket.split();
    // Bytes a TLS stream took but may still hold (see `ClientStream::BUFFERS_WRITES`).
    let mut unflushed = false;
    let mut conn = Conn {
        ctx: ctx.clone(),
        id,
        // Made in place: a local moved in would keep its own slot in this future.
        session: {
            let config = ServerConfig { chunk_size: ctx.config.chunk_size, ..ServerConfig::default() };
            let mut session = ServerSession::new(config);
            session.set_max_buffered(ctx.config.caps.partial_bytes_before_connect);
            session
        },
        app: None,
        connect_query: None,
        publishing: HashMap::new(),
        protocol,
        done: HashMap::new(),
        playing: StreamMap::new(),
        vod_controls: HashMap::new(),
        pending_ids: HashSet::new(),
        decisions: FuturesUnordered::new(),
        fenced: CancellationToken::new(),
        objects: ConnObjects::new(ctx.objects.clone()),
        gate: matches!(ctx.config.write_merge, WriteMerge::Adaptive { .. }).then(Default::default),
        direct: S::direct(&writer)
            .filter(|_| ctx.config.direct_writes)
            .map(|socket| Arc::new(DirectSocket::new(socket, ctx.clone(), ctx.config.chunk_size))),
        started_play: false,
        wrote_media: false,
        peer,
        unstarted: Some(unstarted),
        publish_permits: HashMap::new(),
        partial: ctx.limits.partial.reservation(),
        resume,
    };
    let mut pending = Outbox::default();
    let mut read_size = READ_FIRST;
    let mut inbuf = BytesMut::with_capacity(read_size);
    // Useful progress: a whole message received, or bytes a player took.
    let mut last_progress = Instant::now();
    let mut last_write = Instant::now();
    let check_every = (ctx.config.idle_timeout.min(ctx.config.write_timeout) / 4).max(Duration::from_millis(50));
    // Armed until the session starts; a play or publish still being decided at the
    // deadline gets its answer first.
    let start_timer = tokio::time::sleep_until(start_deadline);
    tokio::pin!(start_timer);
    let mut housekeeping = tokio::time::interval(check_every);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Merged writes (`WriteMerge`). Adaptive, the default: video, data and headers
    // are released at once with whatever preceded them; audio that finds the socket
    // idle is held until the next video frame, at most `audio_hold`, with the gate
    // keeping the pumps asleep meanwhile (audio queues in the hub readers without a
    // wakeup; video wakes them, and the gate opens when the hold ends). A fixed
    // window: media that finds the socket idle opens a window during which the pumps
    // are not polled at all; when it closes, everything ready is released for one
    // vectored write. Either way a window opens on a frame rather than on a clock (a
    // fixed 20 ms tick measured 25 % more edge CPU per GB at 500 players than a 20 ms
    // window, for half the added latency), with bytes still unwritten none opens (the
    // socket is the bottleneck: the next write takes whatever gathers meanwhile), and
    // control output is released at once, with whatever media precedes it.
    let merge = ctx.config.write_merge;
    let merge_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(merge_timer);
    let mut hold = Hold::None;
    // Created once: a cancellation future made anew on every wakeup registers and
    // deregisters itself each time.
    let fenced = conn.fenced.clone();
    let fenced = fenced.cancelled();
    tokio::pin!(fenced);
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    // While the edge drains, a client that can reconnect is asked to, once.
    let draining = ctx.draining.cancelled();
    tokio::pin!(draining);
    let mut asked_to_reconnect = false;
    // The direct fan-out (`super::direct`): the socket is lent to it while this task
    // has nothing of its own to write, and taken back before this task writes.
    let direct = conn.direct.clone();
    let mut lent = false;
    let result = async {
        conn.input(&leftover)?;
        loop {
            let control = conn.session.take_output();
            // A play's first frames (its cached GOP) are written by this task, never
            // held by a merge window.
            if !control.is_empty() || conn.started_play {
                take_back(direct.as_deref(), &mut lent, &mut pending);
                pending.push(control);
                pending.release(&ctx.stats.hop_delivery);
            }
            tokio::select! {
                read = reader.read_buf(&mut inbuf) => {
                    match read {
                        Ok(0) => return Err("closed by the client".to_owned()),
                        Ok(n) => {
                            ctx.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            // A read that filled the buffer asks for a larger one next
                            // time: a publisher's reads grow to READ_CHUNK, a player's
                            // (commands, acknowledgements) stay small.
                            if n >= inbuf.capacity() {
                                read_size = (read_size * 2).min(READ_CHUNK);
                            }
                            let bytes = inbuf.split();
                            if conn.input(&bytes)? > 0 {
                                last_progress = Instant::now();
                            }
                            if inbuf.capacity() < read_size / 4 {
                                inbuf.reserve(read_size);
                            }
                        }
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
                Some(decision) = conn.decisions.next(), if !conn.decisions.is_empty() => conn.decided(decision),
                Some(delivery) = conn.objects.next_delivery(), if conn.objects.active() => {
                    for (body, amf3) in conn.objects.delivery(delivery) {
                        conn.session.send_shared_object(body.into(), amf3);
                    }
                }
                () = spilled(direct.as_deref()), if lent => {
                    take_back(direct.as_deref(), &mut lent, &mut pending);
                    pending.release(&ctx.stats.hop_delivery);
                }
                Some((_, out)) = conn.playing.next(), if hold != Hold::Window && pending.len() < WRITE_HIGH_WATER && !conn.playing.is_empty() => {
                    // A pump gives media while the socket is lent only once a fan-out
                    // write spilled: what the socket did not take goes first.
                    if lent {
                        take_back(direct.as_deref(), &mut lent, &mut pending);
                        pending.release(&ctx.stats.hop_delivery);
                    }
                    let busy = pending.ready() > 0;
                    conn.out(out, &mut pending);
                    conn.pull_ready(&mut pending);
                    // What a hold opened now would be: under load the adaptive merge
                    // holds all media for the load's window, like a fixed one.
                    let (kind, length) = match ctx.stats.load.merge(merge) {
                        m if m.window.is_zero() => (Hold::Audio, m.audio_hold),
                        m => (Hold::Window, m.window),
                    };
                    // A play's first frames (the cached GOP) are not held: the time to
                    // first frame stays what it was. Video ends an audio hold (this
                    // branch is off during a window).
                    let holding = if hold == Hold::None { kind } else { hold };
                    let now = length.is_zero() || busy || conn.started_play || pending.len() >= MERGE_FLUSH_BYTES
                        || (pending.urgent && holding == Hold::Audio);
                    if now {
                        if conn.wrote_media {
                            conn.started_play = false;
                        }
                        if hold != Hold::None {
                            // Another play's audio queued quietly behind the gate goes
                            // in the same write.
                            conn.open_gate();
                            conn.pull_ready(&mut pending);
                        }
                        pending.release(&ctx.stats.hop_delivery);
                        hold = Hold::None;
                    } else if hold == Hold::None && pending.len() > pending.ready() {
                        // Only media waits (a note such as `Published` queues nothing).
                        hold = kind;
                        merge_timer.as_mut().reset(Instant::now() + length);
                        if let Some(gate) = &conn.gate {
                            gate.hold();
                        }
                    }
                }
                _ = &mut merge_timer, if hold != Hold::None => {
                    // Opened first, so the pumps give what their readers queued quietly.
                    conn.open_gate();
                    conn.pull_ready(&mut pending);
                    pending.release(&ctx.stats.hop_delivery);
                    hold = Hold::None;
                }
                written = pending.write_or_flush(&mut writer), if pending.ready() > 0 || unflushed => {
                    match written {
                        // Only once the outbox is written out: each write already sends
                        // what the socket takes, the flush pushes out the rest.
                        Ok(None) => unflushed = false,
                        Ok(Some(0)) => return Err("write: closed".to_owned()),
                        Ok(Some(n)) => {
                            ctx.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                            pending.advance(n);
                            last_write = Instant::now();
                            last_progress = last_write;
                            unflushed = S::BUFFERS_WRITES;
                        }
                        Err(e) => return Err(format!("write: {e}")),
                    }
                }
                // One periodic check instead of two timers re-armed on every wake.
                _ = housekeeping.tick() => {
                    // A player waiting for its stream to come back, or a quiet
                    // shared-object client, makes no progress and is not idle.
                    let idle = conn.playing.is_empty() && conn.pending_ids.is_empty() && conn.objects.is_empty();
                    if idle && last_progress.elapsed() >= ctx.config.idle_timeout {
                        return Err(format!("no complete message for {:?}", ctx.config.idle_timeout));
                    }
                    if (pending.ready() > 0 || unflushed) && last_write.elapsed() >= ctx.config.write_timeout {
                        return Err(format!("the client read nothing for {:?}", ctx.config.write_timeout));
                    }
                }
                _ = &mut start_timer, if conn.unstarted.is_some() && conn.pending_ids.is_empty() => {
                    return Err(format!(
                        "neither published, played nor used a shared object within {:?}",
                        ctx.config.caps.start_timeout
                    ));
                }
                _ = &mut draining, if !asked_to_reconnect && conn.session.is_connected() => {
                    asked_to_reconnect = true;
                    if conn.session.request_reconnect("This edge is draining: reconnect to go on.", None) {
                        ctx.stats.reconnect_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(conn = id, %peer, "asked to reconnect: the edge drains");
                    }
                }
                _ = &mut fenced => return Err("a newer publisher took the stream over".to_owned()),
                _ = &mut stopping => return Ok(()),
            }
            if pending.ready() == 0 && !unflushed {
                last_write = Instant::now();
            }
            if let Some(direct) = &direct {
                let idle = pending.is_empty() && hold == Hold::None && !unflushed && !conn.started_play;
                if !lent && idle && !conn.playing.is_empty() {
                    direct.lend();
                    lent = true;
                }
            }
        }
    }
    .await;
    take_back(direct.as_deref(), &mut lent, &mut pending);
    pending.release(&ctx.stats.hop_delivery);
    // Players hear that the stream ended; what is queued gets a short drain.
    let ids: Vec<u32> = conn.playing.keys().copied().collect();
    for stream_id in ids {
        conn.session.end_of_stream(stream_id);
    }
    conn.close();
    pending.push(conn.session.take_output());
    pending.release(&ctx.stats.hop_delivery);
    if !pending.is_empty() && result.is_ok() {
        let drain = async {
            while !pending.is_empty() {
                match pending.write_to(&mut writer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.advance(n),
                }
            }
        };
        let _ = tokio::time::timeout(ctx.config.drain, drain).await;
    }
    let _ = writer.shutdown().await;
    result
}

impl Conn {
    /// Feeds received bytes to the session; returns how many whole messages they
    /// completed (events), the progress the idle timeout counts.
    fn input(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let events = self.session.handle_input(bytes).map_err(|e| format!("protocol error: {e}"))?;
        let held = self.session.buffered_input();
        if self.partial.set(held).is_err() {
            tracing::warn!(
                conn = self.id, peer = %self.peer, held, budget = self.ctx.limits.partial.limit(),
                "partial RTMP messages over the edge's byte budget; closing this connection"
            );
            return Err(format!("partial messages over the edge's budget ({} bytes)", self.ctx.limits.partial.limit()));
        }
        let n = events.len();
        for event in events {
            self.event(event)?;
        }
        Ok(n)
    }

    /// The session did something useful: it no longer counts as not started.
    fn started(&mut self) {
        self.unstarted = None;
    }

    fn event(&mut self, event: ServerEvent) -> Result<(), String> {
        match event {
            ServerEvent::Connect { app, query, tc_url, .. } => {
                tracing::debug!(app, ?tc_url, "connect");
                self.app = Some(app.clone());
                self.objects.set_token(crate::edge::tokens::query_param(query.as_deref(), "token"));
                self.connect_query = query.clone();
                let ctx = self.ctx.clone();
                let call = self.hook_call(&app, None, query);
                self.decisions.push(Box::pin(async move {
                    let admitted =
                        admit_session(&ctx.tokens, &ctx.hooks, HookEvent::Connect, HookEvent::Connect, call).await;
                    // No `on_connect_done`: the guard's notice names no URL.
                    Decision::Connect(admitted.map(|guard| guard.disarm()).map_err(|e| e.to_string()))
                }));
            }
            ServerEvent::CreateStream { .. } => {}
            ServerEvent::Publish { stream_id, name, query, .. } => self.publish(stream_id, name, query),
            ServerEvent::Play { stream_id, name, query, start, length } => {
                if self.app.as_deref() == Some(VOD_APP) {
                    // `-2` and `-1` (live first, live only) mean from the start here;
                    // a negative length, to the end.
                    let start_ms = start.filter(|s| *s >= 0.0).map(|s| s as u64);
                    let length_ms = length.filter(|l| *l >= 0.0).map(|l| l as u64);
                    self.play_vod(stream_id, name, query, start_ms, length_ms);
                } else {
                    self.play(stream_id, name, query);
                }
            }
            ServerEvent::Seek { stream_id, ms } => self.vod_control(stream_id, Control::Seek(ms.max(0.0) as u64)),
            ServerEvent::Pause { stream_id, pause, .. } => self.vod_control(stream_id, Control::Pause(pause)),
            ServerEvent::BufferLength { stream_id, ms } => {
                self.vod_control(stream_id, Control::Buffer(Duration::from_millis(u64::from(ms))));
            }
            ServerEvent::StreamLength { transaction_id, name } => self.stream_length(transaction_id, name),
            ServerEvent::Audio { stream_id, timestamp, payload } => {
                self.media(stream_id, || Frame::audio(timestamp, payload));
            }
            ServerEvent::Video { stream_id, timestamp, payload } => {
                self.media(stream_id, || Frame::video(timestamp, payload));
            }
            ServerEvent::Data { stream_id, timestamp, payload } => {
                self.media(stream_id, || {
                    if message::data_name(&payload).as_deref() == Some("onMetaData") {
                        Frame::metadata(timestamp, payload)
                    } else {
                        Frame::data(timestamp, payload)
                    }
                });
            }
            ServerEvent::SharedObject { payload, amf3 } => {
                self.started();
                for (body, amf3) in self.objects.handle(&payload, amf3)? {
                    self.session.send_shared_object(body.into(), amf3);
                }
            }
            ServerEvent::StreamClosed { stream_id } => self.stream_closed(stream_id),
        }
        Ok(())
    }

    /// What the app's webhooks are told of this client and `stream`.
    fn hook_call(&self, app: &str, stream: Option<&str>, query: Option<String>) -> HookCall {
        let session = self.session_base();
        HookCall::new(&self.ctx.config.id, self.peer, self.protocol, app, stream, query, session)
    }

    /// What claims and webhooks call this connection's sessions (see [`Resume::session`]).
    fn session_base(&self) -> String {
        match &self.resume.session {
            Some(session) => session.clone(),
            None => format!("{}-{}", self.ctx.started_ms, self.id),
        }
    }

    fn stream_key(&self, name: &str) -> Option<StreamKey> {
        StreamKey::new(self.app.as_deref()?, name).ok()
    }

    fn publish(&mut self, stream_id: u32, name: String, query: Option<String>) {
        let Some(stream) = self.stream_key(&name) else {
            let why = format!("{name:?} is not a valid stream name (letters, digits, '.', '_', '-')");
            self.session.reject_publish(stream_id, PublishRejection::BadName, &why);
            return;
        };
        let permit = match self.ctx.limits.publishes.try_acquire(self.peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                tracing::info!(conn = self.id, peer = %self.peer, %refused, "publish refused");
                self.session.reject_publish(stream_id, PublishRejection::Failed, &refused.to_string());
                return;
            }
        };
        self.publish_permits.insert(stream_id, permit);
        let key = self.credential(query.as_deref(), "key");
        let token = self.credential(query.as_deref(), "token");
        let ctx = self.ctx.clone();
        let session = format!("{}-{stream_id}", self.session_base());
        let mut call = self.hook_call(&stream.app, Some(&stream.name), query);
        call.session = session.clone();
        let fenced = self.fenced.clone();
        self.pending_ids.insert(stream_id);
        self.decisions.push(Box::pin(async move {
            // The token first, then the app's hook: a refused publisher never claims
            // the stream. A static key, if the app has one, is checked by the origin
            // on the claim.
            let authorized = ctx.tokens.authorize_stream(token.as_deref(), &stream.app, &stream.name, Publish).await;
            let result = match authorized {
                Ok(claims) => {
                    call.token = claims;
                    match admit_session(&ctx.tokens, &ctx.hooks, HookEvent::Publish, HookEvent::PublishDone, call).await
                    {
                        Ok(done) => Publication::start(&ctx, stream, session, key, fenced).await.map(|p| (p, done)),
                        Err(refused) => Err((PublishRejection::Unauthorized, refused.to_string())),
                    }
                }
                Err(e) => {
                    let e = ctx.stats.auth_refused.count(Protocol::Rtmp, e);
                    let code = match e {
                        // No origin answered for the rules: worth a retry, not a
                        // credentials problem.
                        StreamAuthError::Unavailable => PublishRejection::Failed,
                        _ => PublishRejection::Unauthorized,
                    };
                    Err((code, e.to_string()))
                }
            };
            Decision::Publish { stream_id, result }
        }));
    }

    /// The value of `name` in the stream name's query (`name?token=…`), else in the
    /// connect query (`rtmp://host/app?token=…`).
    fn credential(&self, query: Option<&str>, name: &str) -> Option<String> {
        query_param(query, name).or_else(|| query_param(self.connect_query.as_deref(), name))
    }

    fn play(&mut self, stream_id: u32, name: String, query: Option<String>) {
        let Some(stream) = self.stream_key(&name) else {
            self.session.play_not_found(stream_id, &name);
            return;
        };
        let token = self.credential(query.as_deref(), "token");
        let ctx = self.ctx.clone();
        let mut call = self.hook_call(&stream.app, Some(&stream.name), query);
        call.session = format!("{}-{stream_id}", self.session_base());
        self.pending_ids.insert(stream_id);
        self.decisions.push(Box::pin(async move {
            // Checked before the relay is joined: a refused player costs no upstream.
            let done = match admit_play(&ctx, token, &stream.app, &stream.name, call).await {
                Ok(done) => done,
                Err(why) => return Decision::PlayRefused { stream_id, why },
            };
            let lease = ctx.relays.join(&ctx, &stream);
            let mut hub = lease.relay().hub();
            let found = tokio::time::timeout(ctx.config.play_wait, hub.wait_for(Option::is_some)).await;
            let lease = matches!(found, Ok(Ok(_))).then_some(lease);
            Decision::Play { stream_id, name, lease, done }
        }));
    }

    /// A play of app `vod`: `name` is a VOD id (`docs/vod.md`). The app's token rule
    /// and webhooks apply as to a live play; then the file is opened through the
    /// edge's cache (fetched first on a miss) and indexed.
    fn play_vod(
        &mut self,
        stream_id: u32,
        name: String,
        query: Option<String>,
        start_ms: Option<u64>,
        length_ms: Option<u64>,
    ) {
        let Ok(id) = VodId::parse(&name) else {
            self.session.play_not_found(stream_id, &name);
            return;
        };
        let token = self.credential(query.as_deref(), "token");
        let ctx = self.ctx.clone();
        let mut call = self.hook_call(VOD_APP, Some(&name), query);
        call.session = format!("{}-{stream_id}", self.session_base());
        self.pending_ids.insert(stream_id);
        self.decisions.push(Box::pin(async move {
            // Checked before the cache is asked: a refused player costs no fetch. The
            // rules of the app `vod`, the id as the stream name (`vod::authorize_play`).
            let done = match admit_play(&ctx, token, VOD_APP, &id.to_string(), call).await {
                Ok(done) => done,
                Err(why) => return Decision::PlayRefused { stream_id, why },
            };
            let vod = match vod::open(ctx.vod.as_ref(), &id).await {
                Ok(vod) => vod,
                Err(VodError::Off | VodError::NotFound) => {
                    return Decision::VodPlay { stream_id, name, span: (start_ms, length_ms), found: None, done }
                }
                Err(e) => return Decision::PlayRefused { stream_id, why: e.to_string() },
            };
            match vod::hls_http::index(&ctx, &vod).await {
                Ok(index) => {
                    Decision::VodPlay { stream_id, name, span: (start_ms, length_ms), found: Some((vod, index)), done }
                }
                Err(e) => Decision::PlayRefused { stream_id, why: format!("{id} cannot be played: {e}") },
            }
        }));
    }

    /// Hands a client's control to its VOD play; a live play has none to take.
    fn vod_control(&mut self, stream_id: u32, control: Control) {
        if let Some(controls) = self.vod_controls.get(&stream_id) {
            if controls.try_send(control).is_err() {
                tracing::debug!(conn = self.id, stream_id, ?control, "VOD control ignored: too many in flight");
            }
        }
    }

    /// `getStreamLength`: a VOD file's duration (opened and indexed as a play would);
    /// 0 for anything else.
    fn stream_length(&mut self, transaction_id: f64, name: String) {
        let id = VodId::parse(crate::rtmp::session::split_query(&name).0);
        // Bounded like everything a client can start: past the limit, the length is 0.
        let (Some(VOD_APP), Ok(id), true) = (self.app.as_deref(), id, self.decisions.len() < MAX_PENDING_LENGTHS)
        else {
            self.session.answer_stream_length(transaction_id, 0.0);
            return;
        };
        let ctx = self.ctx.clone();
        self.decisions.push(Box::pin(async move {
            let secs = match vod::open(ctx.vod.as_ref(), &id).await {
                Ok(vod) => vod::hls_http::index(&ctx, &vod).await.map_or(0.0, |index| index.duration().as_secs_f64()),
                Err(_) => 0.0,
            };
            Decision::StreamLength { transaction_id, secs }
        }));
    }

    fn decided(&mut self, decision: Decision) {
        match decision {
            Decision::Connect(Ok(())) => {
                self.session.set_max_buffered(self.ctx.config.caps.partial_bytes_per_connection);
                self.session.accept_connect();
            }
            Decision::Connect(Err(why)) => {
                tracing::info!(conn = self.id, peer = %self.peer, why, "connect refused");
                self.session.reject_connect(&why);
            }
            Decision::Publish { stream_id, result } => {
                if !self.pending_ids.remove(&stream_id) {
                    // Closed meanwhile: dropping the publication unpublishes and releases.
                    return;
                }
                match result {
                    Ok((publication, done)) => {
                        self.session.accept_publish(stream_id);
                        self.publishing.insert(stream_id, publication);
                        self.keep_done(stream_id, done);
                        self.started();
                    }
                    Err((code, why)) => {
                        self.publish_permits.remove(&stream_id);
                        tracing::info!(conn = self.id, code = code.code(), why, "publish refused");
                        self.session.reject_publish(stream_id, code, &why);
                    }
                }
            }
            Decision::PlayRefused { stream_id, why } => {
                if self.pending_ids.remove(&stream_id) {
                    tracing::info!(conn = self.id, why, "play refused");
                    self.session.reject_play(stream_id, &why);
                }
            }
            Decision::StreamLength { transaction_id, secs } => self.session.answer_stream_length(transaction_id, secs),
            Decision::VodPlay { stream_id, name, span, found, done } => {
                if !self.pending_ids.remove(&stream_id) {
                    return;
                }
                let Some((vod, index)) = found else {
                    self.session.play_not_found(stream_id, &name);
                    return;
                };
                tracing::info!(conn = self.id, vod.id = %vod.id, start_ms = ?span.0, length_ms = ?span.1, "VOD play");
                self.session.accept_play(stream_id);
                self.keep_done(stream_id, done);
                self.started_play = true;
                self.wrote_media = false;
                self.started();
                let chunk_size = self.session.outgoing_chunk_size();
                let (play, controls) = VodPlay::new(stream_id, chunk_size, vod, index, span);
                if let Some(ms) = self.session.buffer_length(stream_id) {
                    let _ = controls.try_send(Control::Buffer(Duration::from_millis(u64::from(ms))));
                }
                let pump = play
                    .into_stream()
                    .map(move |out| match out {
                        VodOut::Media(bytes) => Out::Media(bytes, None, false, true),
                        VodOut::Note(note, duration) => Out::Vod(stream_id, note, duration),
                        VodOut::Failed(why) => Out::VodFailed(stream_id, why),
                    })
                    .chain(futures::stream::pending())
                    .boxed();
                self.vod_controls.insert(stream_id, controls);
                self.ctx.stats.players_rtmp.fetch_add(1, Ordering::Relaxed);
                if self.playing.insert(stream_id, pump).is_some() {
                    self.ctx.stats.players_rtmp.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Decision::Play { stream_id, name, lease, done } => {
                if !self.pending_ids.remove(&stream_id) {
                    return;
                }
                let Some(lease) = lease else {
                    self.session.play_not_found(stream_id, &name);
                    return;
                };
                self.session.accept_play(stream_id);
                self.keep_done(stream_id, done);
                self.started_play = true;
                self.wrote_media = false;
                self.started();
                let resume = self.resume.plays.remove(&stream_id);
                let chunk_size = self.session.outgoing_chunk_size();
                let direct = self.direct.clone().filter(|d| d.chunk_size() == chunk_size);
                let pump = Pump::new(stream_id, chunk_size, lease, resume, self.gate.clone(), direct);
                self.ctx.stats.players_rtmp.fetch_add(1, Ordering::Relaxed);
                if self.playing.insert(stream_id, pump.into_stream()).is_some() {
                    self.ctx.stats.players_rtmp.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn media(&mut self, stream_id: u32, frame: impl FnOnce() -> Frame) {
        if let Some(publication) = self.publishing.get(&stream_id) {
            self.ctx.stats.frames_published.fetch_add(1, Ordering::Relaxed);
            publication.push(frame());
        }
    }

    /// Holds `stream_id`'s `_done` guard until the stream closes; one with nothing to
    /// send is dropped now (a map entry holds a whole hook call, 4 slots when first used).
    fn keep_done(&mut self, stream_id: u32, done: DoneNotice) {
        if done.is_armed() {
            self.done.insert(stream_id, done);
        } else {
            self.done.remove(&stream_id);
        }
    }

    fn stream_closed(&mut self, stream_id: u32) {
        self.pending_ids.remove(&stream_id);
        self.done.remove(&stream_id);
        self.publish_permits.remove(&stream_id);
        if let Some(publication) = self.publishing.remove(&stream_id) {
            self.ctx.stats.publisher_drops.fetch_add(publication.dropped(), Ordering::Relaxed);
        }
        self.stop_playing(stream_id);
    }

    /// Drops a play's pump (and a VOD play's controls), counted out of the players.
    fn stop_playing(&mut self, stream_id: u32) {
        self.vod_controls.remove(&stream_id);
        if self.playing.remove(&stream_id).is_some() {
            self.ctx.stats.players_rtmp.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Audio wakes the pumps again (the adaptive merge's hold is over).
    fn open_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.open();
        }
    }

    /// Takes whatever the pumps have ready, without waiting, up to the high-water mark.
    fn pull_ready(&mut self, pending: &mut Outbox) {
        while pending.len() < WRITE_HIGH_WATER {
            match self.playing.next().now_or_never() {
                Some(Some((_, out))) => self.out(out, pending),
                _ => break,
            }
        }
    }

    fn out(&mut self, out: Out, pending: &mut Outbox) {
        match out {
            Out::Media(bytes, arrived, header, holdable) => {
                self.wrote_media |= !header;
                // Whatever the session queued goes first; the shared chunks follow
                // without a copy.
                pending.push(self.session.take_output());
                if self.session.prechunked_by_driver() {
                    pending.push_frame(bytes, arrived);
                    pending.urgent |= !holdable;
                }
            }
            Out::Published(stream_id) => self.session.publish_notify(stream_id),
            Out::Unpublished(stream_id) => self.session.end_of_stream(stream_id),
            Out::Vod(stream_id, note, duration) => {
                let secs = duration.as_secs_f64();
                if let Some(stats) = self.ctx.vod.as_ref().map(|vod| vod.stats()) {
                    let counter = match note {
                        Note::Metadata => Some(&stats.rtmp_plays),
                        Note::Seeked(_) => Some(&stats.rtmp_seeks),
                        Note::Paused(true, _) => Some(&stats.rtmp_pauses),
                        _ => None,
                    };
                    if let Some(counter) = counter {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match note {
                    Note::Metadata => self.session.send_metadata(stream_id, secs),
                    Note::Seeked(at) => self.session.seek_notify(stream_id, at),
                    Note::Paused(paused, at) => self.session.pause_notify(stream_id, paused, at),
                    Note::Complete => self.session.play_complete(stream_id, secs),
                    Note::BufferEmpty => self.session.buffer_empty(stream_id),
                }
            }
            Out::VodFailed(stream_id, why) => {
                tracing::warn!(conn = self.id, stream_id, why, "VOD play failed");
                self.stop_playing(stream_id);
                self.session.play_complete(stream_id, 0.0);
            }
        }
    }

    /// Ends every publication and play of the connection.
    fn close(&mut self) {
        self.publishing.clear();
        self.publish_permits.clear();
        let ids: Vec<u32> = self.playing.keys().copied().collect();
        for stream_id in ids {
            self.stop_playing(stream_id);
        }
    }
}

/// A play's token rule, then its app's `on_play` hook (a refused player costs nothing
/// behind them): the `_done` notice to hold while it plays, or why it is refused.
async fn admit_play(
    ctx: &EdgeContext,
    token: Option<String>,
    app: &str,
    name: &str,
    mut call: HookCall,
) -> Result<DoneNotice, String> {
    match ctx.tokens.authorize_stream(token.as_deref(), app, name, Play).await {
        Ok(claims) => call.token = claims,
        Err(e) => return Err(ctx.stats.auth_refused.count(Protocol::Rtmp, e).to_string()),
    }
    admit_session(&ctx.tokens, &ctx.hooks, HookEvent::Play, HookEvent::PlayDone, call).await.map_err(|e| e.to_string())
}

/// Takes the socket back from the direct fan-out if it is lent: what a fan-out write
/// left unwritten goes first in the outbox.
fn take_back(direct: Option<&DirectSocket>, lent: &mut bool, pending: &mut Outbox) {
    if std::mem::take(lent) {
        for bytes in direct.map(DirectSocket::take_back).unwrap_or_default() {
            pending.push(bytes);
        }
    }
}

/// Resolves when a fan-out write spilled (never without a direct socket).
async fn spilled(direct: Option<&DirectSocket>) {
    match direct {
        Some(direct) => direct.spilled().await,
        None => std::future::pending().await,
    }
}

/// What a player's connection is holding its media for (`WriteMerge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    None,
    /// Audio, until the next video frame or the hold's bound: the pumps are polled (the
    /// gate keeps audio from waking them) and video ends the hold.
    Audio,
    /// Everything, until the window closes: the pumps are not polled meanwhile.
    Window,
}

/// Bytes waiting for the socket, as the shared buffers they came in (media chunks are
/// shared by every player of a stream: queued here by reference, never copied). Only
/// the released front part is written; media gathered in a merge window is not yet
/// released.
#[derive(Default)]
struct Outbox {
    bufs: VecDeque<Bytes>,
    len: usize,
    /// The first `ready` bytes may be written (always whole buffers).
    ready: usize,
    /// When the live frames queued since the last release reached the edge.
    arrivals: Vec<std::time::Instant>,
    /// A frame the adaptive merge does not hold (video, data, a header) was queued
    /// since the last release.
    urgent: bool,
}

impl Outbox {
    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.bufs.push_back(bytes);
        }
    }

    /// Queues a frame's chunks; `arrived` (a live frame's arrival) is counted in the
    /// delivery hop when the chunks are released.
    fn push_frame(&mut self, bytes: Bytes, arrived: Option<std::time::Instant>) {
        self.push(bytes);
        self.arrivals.extend(arrived);
    }

    /// Everything queued may be written; the frames' waits so far go to `hop`.
    fn release(&mut self, hop: &HopLatency) {
        self.ready = self.len;
        self.urgent = false;
        let now = std::time::Instant::now();
        for arrived in self.arrivals.drain(..) {
            hop.observe(now.saturating_duration_since(arrived));
        }
        if self.arrivals.capacity() > OUTBOX_SHRINK_ABOVE {
            self.arrivals.shrink_to(OUTBOX_SHRINK_TO);
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn ready(&self) -> usize {
        self.ready
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first released buffers, for one vectored write (no allocation per write).
    fn slices(&self) -> ([IoSlice<'_>; WRITE_SLICES], usize) {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let (mut n, mut taken) = (0, 0);
        for (slot, b) in slices.iter_mut().zip(&self.bufs) {
            if taken >= self.ready {
                break;
            }
            *slot = IoSlice::new(b);
            taken += b.len();
            n += 1;
        }
        (slices, n)
    }

    /// One vectored write of the first released buffers; the caller advances by what
    /// was written.
    /// Writes released bytes (`Some(written)`), or with none released flushes the
    /// stream (`None`).
    async fn write_or_flush<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> std::io::Result<Option<usize>> {
        if self.ready() == 0 {
            return writer.flush().await.map(|()| None);
        }
        self.write_to(writer).await.map(Some)
    }

    async fn write_to<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> std::io::Result<usize> {
        let (slices, n) = self.slices();
        writer.write_vectored(&slices[..n]).await
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        self.ready = self.ready.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.bufs.front_mut() else { return };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.bufs.pop_front();
        }
        // The play's first burst (its cached GOP) leaves room for hundreds of buffers
        // that a player then never needs again.
        if self.bufs.is_empty() && self.bufs.capacity() > OUTBOX_SHRINK_ABOVE {
            self.bufs.shrink_to(OUTBOX_SHRINK_TO);
        }
    }
}

/// The value of `name` in a URL query string (`key=abc&x=1`).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

/// One play's frames, from whichever publishing generation of the stream's hub is
/// current, as chunk bytes for its connection.
struct Pump {
    stream_id: u32,
    chunk_size: u32,
    hubs: watch::Receiver<Option<Arc<Hub>>>,
    state: PumpState,
    /// Where the first generation's reading starts when this play takes over an RTMPT
    /// session: after what its client already has.
    resume: Option<ResumePoint>,
    /// The connection's [`AudioGate`], put on every hub reader of the play.
    gate: Option<Arc<AudioGate>>,
    /// The connection's socket, lent by every hub reader of the play to the fan-out.
    direct: Option<Arc<DirectSocket>>,
    /// Keeps the relay (the upstream subscription) alive while the play lasts.
    _lease: Lease,
}

enum PumpState {
    /// Waiting for a publishing generation; `first` says no generation was played yet.
    Waiting { first: bool },
    /// Reading a generation's hub, subscribed at the instant given: frames that reached
    /// the edge before it are replays (the GOP the play starts with), not waits.
    Reading(Subscription, Arc<Hub>, std::time::Instant),
    /// That generation ended; waiting for the next.
    Ended(Arc<Hub>),
    /// The relay is gone: nothing more will come.
    Done,
}

impl Pump {
    fn new(
        stream_id: u32,
        chunk_size: u32,
        lease: Lease,
        resume: Option<ResumePoint>,
        gate: Option<Arc<AudioGate>>,
        direct: Option<Arc<DirectSocket>>,
    ) -> Pump {
        let hubs = lease.relay().hub();
        let state = PumpState::Waiting { first: true };
        Pump { stream_id, chunk_size, hubs, state, resume, gate, direct, _lease: lease }
    }

    /// The pump as a stream that never ends (the connection decides when a play ends).
    fn into_stream(self) -> BoxStream<'static, Out> {
        futures::stream::unfold(self, |mut pump| async move { pump.next().await.map(|out| (out, pump)) })
            .chain(futures::stream::pending())
            .boxed()
    }

    /// What goes to the connection next.
    async fn next(&mut self) -> Option<Out> {
        loop {
            match &mut self.state {
                PumpState::Waiting { first } => {
                    let first = *first;
                    let hub = match self.hubs.wait_for(Option::is_some).await {
                        Ok(hub) => hub.clone(),
                        Err(_) => None,
                    };
                    let Some(hub) = hub else {
                        self.state = PumpState::Done;
                        return None;
                    };
                    // A play that takes over a session starts after what its client has.
                    let subscription = match self.resume.take() {
                        Some(point) => {
                            let (subscription, resumed) = hub.subscribe_after(Some(point));
                            tracing::info!(?point, resumed, "play resumed after a takeover");
                            subscription
                        }
                        None => hub.subscribe(),
                    };
                    if let Some(gate) = &self.gate {
                        subscription.set_gate(gate.clone());
                    }
                    if let Some(direct) = &self.direct {
                        subscription.lend(direct.clone(), self.stream_id);
                    }
                    self.state = PumpState::Reading(subscription, hub, std::time::Instant::now());
                    if !first {
                        return Some(Out::Published(self.stream_id));
                    }
                }
                PumpState::Reading(subscription, hub, since) => match subscription.recv().await {
                    Some(frame) => {
                        if let Some(bytes) = chunks(&frame, self.chunk_size, self.stream_id) {
                            let live = (frame.arrived.0 >= *since).then_some(frame.arrived.0);
                            return Some(Out::Media(bytes, live, frame.header, frame.is_plain_audio()));
                        }
                    }
                    None => {
                        self.state = PumpState::Ended(hub.clone());
                        return Some(Out::Unpublished(self.stream_id));
                    }
                },
                PumpState::Ended(ended) => {
                    let ended = ended.clone();
                    let next = self.hubs.wait_for(|h| h.as_ref().is_none_or(|h| !Arc::ptr_eq(h, &ended))).await;
                    self.state = if next.is_ok() { PumpState::Waiting { first: false } } else { PumpState::Done };
                }
                PumpState::Done => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{query_param, HopLatency, Outbox};
    use bytes::Bytes;

    #[test]
    fn the_outbox_advances_across_buffers() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"abc"));
        o.push(Bytes::new());
        o.push(Bytes::from_static(b"defg"));
        o.release(&HopLatency::default());
        assert_eq!((o.len(), o.slices().1), (7, 2));
        o.advance(4);
        assert_eq!(o.len(), 3);
        assert_eq!(&*o.slices().0[0], b"efg");
        o.advance(3);
        assert!(o.is_empty() && o.slices().1 == 0);
    }

    #[test]
    fn only_released_bytes_are_written() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"abc"));
        o.release(&HopLatency::default());
        o.push(Bytes::from_static(b"gathered"));
        assert_eq!((o.len(), o.ready(), o.slices().1), (11, 3, 1));
        o.advance(2);
        assert_eq!((o.ready(), &*o.slices().0[0]), (1, &b"c"[..]));
        o.advance(1);
        assert_eq!((o.len(), o.ready(), o.slices().1), (8, 0, 0));
        o.release(&HopLatency::default());
        assert_eq!((o.ready(), o.slices().1), (8, 1));
    }

    #[test]
    fn keys_come_from_the_query() {
        assert_eq!(query_param(Some("key=abc&x=1"), "key").as_deref(), Some("abc"));
        assert_eq!(query_param(Some("x=1&key=abc"), "key").as_deref(), Some("abc"));
        assert_eq!(query_param(Some("key="), "key"), None);
        assert_eq!(query_param(Some("keys=abc"), "key"), None);
        assert_eq!(query_param(None, "key"), None);
    }
}
