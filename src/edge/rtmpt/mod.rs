//! RTMPT: RTMP tunnelled through HTTP `POST`s on the edge's HTTP (and HTTPS) port, for
//! clients behind proxies that pass only HTTP (`rtmpt://`).
//!
//! A session is an in-memory pipe ([`tokio::io::duplex`], bounded each way) whose
//! far end is handed to the same connection task an RTMP client over TCP gets
//! ([`rtmp_conn::run_stream`]): publish, play, shared objects, keys, tokens, webhooks,
//! drain and failover are the RTMP code's, unchanged. This module only moves bytes:
//! `POST /open/1` creates a session (a random 128-bit id) and its task; `/send/{id}/{seq}`
//! writes the body into the pipe and answers the polling-interval byte then what the
//! server has written so far (at most [`REPLY_BYTES`]); `/idle/{id}/{seq}` the same with
//! no body (waiting up to [`IDLE_HOLD`] when nothing is ready); `/close/{id}/{seq}` ends
//! the session; `/fcs/ident2` is a 404, as on Red5 and FMS. Sequence numbers and the
//! last reply are [`exchange::Exchange`]'s (sans-IO, unit-tested).
//!
//! One task per session owns the pipe and the exchange; requests reach it through a
//! bounded channel, so a session's requests are carried out one at a time, in order.
//!
//! Caps (`docs/rtmpt.md`): a session holds an RTMP connection permit and, until its
//! RTMP handshake is done, a handshake permit (`--max-connections[-per-address]`,
//! `--max-handshakes[-per-address]`, shared with the RTMP listener), plus one of
//! `--max-rtmpt-sessions[-per-address]` (each buffers up to 2 × [`PIPE_BYTES`] and its
//! last reply); request bodies up to [`MAX_BODY`]; a session that gets no request for
//! `--rtmpt-idle-timeout-ms` closes. Behind a balancer the client address is the
//! PROXY header's, as for every HTTP request.
//!
//! Never knows RTMP: the bytes are the connection task's business.

pub(crate) mod exchange;
pub mod journal;
pub(crate) mod peers;
pub mod translate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use self::exchange::{BadPath, Command, Exchange, Kind, PollingDelay, Verdict};
use self::journal::{Journal, Outbound, Step};
use self::peers::{Full, PeerError, Peers, Update};
use self::translate::Translator;
use super::rtmp_conn::{self, ClientStream, Resume};
use super::streams::Lease;
use super::EdgeContext;
use crate::http_server::{json_error as error, too_many};
use crate::limits::{Permit, Refused};

/// Bytes each direction of a session's pipe holds. Past it the connection task's
/// writes wait (its outbox fills, then its players' hub queues skip to the next
/// keyframe, as for a slow TCP client) and a body's write waits for the session to
/// read.
pub const PIPE_BYTES: usize = 64 * 1024;
/// Server bytes one reply carries at most; the rest waits for the next request.
pub const REPLY_BYTES: usize = 64 * 1024;
/// Largest request body; larger ones get 413. ffmpeg sends ten RTMP messages per
/// `/send` while publishing (`-rtmp_flush_interval`): with a keyframe of a 1080p
/// stream at 8 Mb/s (about 500 KB) that is under 1 MB. The same bound as axum's
/// default for the edge's other request bodies. Only a request for an open session
/// has its body read.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// Requests of one session queued for its task; more get 429 (a client sends one at
/// a time).
const QUEUED_REQUESTS: usize = 2;
/// How long an idle poll that finds nothing to send waits for the server's next bytes
/// (fewer empty round trips; ffmpeg otherwise sleeps 50 ms and polls again).
pub const IDLE_HOLD: Duration = Duration::from_millis(100);
/// How long a request body may take to enter the pipe; past it the session ends.
const PIPE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for its session's task to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies are `application/x-fcs`, as Flash Player expects.
const CONTENT_TYPE: &str = "application/x-fcs";

/// The tunnel's pipe is an RTMP client's byte stream.
impl ClientStream for DuplexStream {
    type Reader = tokio::io::ReadHalf<DuplexStream>;
    type Writer = tokio::io::WriteHalf<DuplexStream>;
    const BUFFERS_WRITES: bool = false;
    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Sessions open now.
    pub open: AtomicU64,
    requests: [AtomicU64; Kind::ALL.len()],
    /// Body bytes written into sessions, reply bytes (polling bytes included) sent.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Sessions closed because no request came for `--rtmpt-idle-timeout-ms`.
    pub expired: AtomicU64,
    /// Requests for a session this edge does not have (404).
    pub unknown: AtomicU64,
    /// Requests neither next nor a repeat (400).
    pub out_of_order: AtomicU64,
    /// Sessions shared by the tier (`--rtmpt-peers`).
    pub peers: peers::PeerStats,
}

impl TunnelStats {
    pub fn requests(&self, kind: Kind) -> u64 {
        self.requests[kind as usize].load(Ordering::Relaxed)
    }
}

/// A session's request for its task.
struct Request {
    seq: u64,
    /// The body of a `/send`; empty for `/idle` and `/close`.
    body: Bytes,
    close: bool,
    answer: oneshot::Sender<Answer>,
}

enum Answer {
    Reply(Bytes),
    OutOfOrder {
        expected: u64,
    },
    /// Another edge took the session over.
    Moved,
}

/// The open sessions of this edge, by id, and the tier's edges when sessions are
/// shared (`--rtmpt-peers`).
#[derive(Default)]
pub struct Tunnels {
    /// Never held across an await.
    sessions: Mutex<HashMap<String, mpsc::Sender<Request>>>,
    peers: Option<Arc<Peers>>,
}

impl Tunnels {
    pub(crate) fn new(config: &crate::edge::EdgeConfig, stats: Arc<crate::edge::EdgeStats>) -> Tunnels {
        let peers = Peers::new(
            &config.rtmpt_peers,
            config.rtmpt_self,
            config.secret.clone(),
            config.caps.rtmpt_sessions,
            stats,
        );
        let peers = peers.map(Arc::new);
        if let Some(peers) = &peers {
            // Replicas and tombstones also expire when no update comes at all.
            let peers = Arc::downgrade(peers);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(peers) = peers.upgrade() else { return };
                    peers.sweep();
                }
            });
        }
        Tunnels { sessions: Mutex::default(), peers }
    }

    /// The tier's edges, when sessions are shared.
    pub fn peers(&self) -> Option<&Arc<Peers>> {
        self.peers.as_ref()
    }

    fn insert(&self, id: String, requests: mpsc::Sender<Request>) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id, requests);
    }

    fn get(&self, id: &str) -> Option<mpsc::Sender<Request>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Answers a `POST` whose path is a tunnel command (or starts like one: `parsed`).
pub async fn handle(ctx: Arc<EdgeContext>, parsed: Result<Command, BadPath>, req: axum::extract::Request) -> Response {
    let command = match parsed {
        Ok(command) => command,
        Err(bad) => {
            if let Err(refused) = discard_body(req).await {
                return refused;
            }
            return error(StatusCode::BAD_REQUEST, "bad_request", bad.to_string());
        }
    };
    let stats = &ctx.stats.rtmpt;
    stats.requests[command.kind() as usize].fetch_add(1, Ordering::Relaxed);
    let Some(ConnectInfo(mut peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no client address");
    };
    // A request another edge forwarded: served here or refused, never forwarded again.
    let forwarded = req.headers().contains_key(peers::FORWARDED_HEADER);
    if forwarded {
        let admitted = ctx.tunnels.peers().is_some_and(|p| p.admits(req.headers()));
        if !admitted {
            let _ = discard_body(req).await;
            return error(StatusCode::UNAUTHORIZED, "unauthorized", "forwarded RTMPT requests need the cluster secret");
        }
        let client = req.headers().get(peers::CLIENT_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
        peer = client.unwrap_or(peer);
    }
    let over_tls = req.extensions().get::<crate::http_server::OverTls>().is_some();
    let unknown = |req: axum::extract::Request| async move {
        stats.unknown.fetch_add(1, Ordering::Relaxed);
        if let Err(refused) = discard_body(req).await {
            return refused;
        }
        error(StatusCode::NOT_FOUND, "unknown_session", "no such RTMPT session (closed or expired)")
    };
    let (id, seq, carries_body, close) = match command {
        Command::Ident | Command::Open => {
            if let Err(refused) = discard_body(req).await {
                return refused;
            }
            return match command {
                Command::Open => open(&ctx, peer, over_tls),
                _ => error(StatusCode::NOT_FOUND, "not_found", "no FCS identity here"),
            };
        }
        Command::Send { id, seq } => (id, seq, true, false),
        Command::Idle { id, seq } => (id, seq, false, false),
        Command::Close { id, seq } => (id, seq, false, true),
    };
    let session = match (ctx.tunnels.get(&id), ctx.tunnels.peers().cloned()) {
        (Some(session), _) => session,
        (None, None) => return unknown(req).await,
        (None, Some(peers)) => {
            // Not held here: the session's chain finds it (docs/rtmpt.md, "Sessions
            // that survive their edge"). An id no edge can have is not looked for.
            if !peers.valid_id(&id) {
                return unknown(req).await;
            }
            let path = req.uri().path().to_owned();
            let body = match read_body(req, carries_body).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            let asked = Asked { id: &id, seq, close, path: &path, client: peer, forwarded };
            match find(&ctx, &peers, &asked, body.clone()).await {
                Found::Here(session) => {
                    let body = if carries_body { body } else { Bytes::new() };
                    return ask_session(&ctx, session, seq, body, close).await;
                }
                Found::There(answer) => return answer,
                Found::Nowhere => {
                    stats.unknown.fetch_add(1, Ordering::Relaxed);
                    return if forwarded {
                        peers::not_here()
                    } else {
                        error(StatusCode::NOT_FOUND, "unknown_session", "no such RTMPT session (closed or expired)")
                    };
                }
                Found::Refused(answer) => return answer,
            }
        }
    };
    // Only a request for an open session has its body kept.
    match read_body(req, carries_body).await {
        Ok(body) => ask_session(&ctx, session, seq, body, close).await,
        Err(refused) => refused,
    }
}

/// A `/send`'s body (at most [`MAX_BODY`]); the others' bodies are read and dropped.
async fn read_body(req: axum::extract::Request, carries_body: bool) -> Result<Bytes, Response> {
    if !carries_body {
        return discard_body(req).await.map(|()| Bytes::new());
    }
    axum::body::to_bytes(req.into_body(), MAX_BODY).await.map_err(|_| too_large())
}

/// Hands a request to its session's task and answers what it says.
async fn ask_session(
    ctx: &Arc<EdgeContext>,
    session: mpsc::Sender<Request>,
    seq: u64,
    body: Bytes,
    close: bool,
) -> Response {
    let stats = &ctx.stats.rtmpt;
    let (answer, answered) = oneshot::channel();
    match session.try_send(Request { seq, body, close, answer }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Closed(_)) => {
            stats.unknown.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::NOT_FOUND, "unknown_session", "the RTMPT session ended");
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            let mut busy = error(StatusCode::TOO_MANY_REQUESTS, "busy", "this session already has requests waiting");
            busy.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return busy;
        }
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
        Ok(Ok(Answer::Reply(reply))) => fcs(reply),
        Ok(Ok(Answer::OutOfOrder { expected })) => {
            stats.out_of_order.fetch_add(1, Ordering::Relaxed);
            error(
                StatusCode::BAD_REQUEST,
                "bad_sequence",
                format!("expected request {expected} (or a repeat of the last)"),
            )
        }
        // The session's buddy took it over (this edge was thought dead): the balancer
        // retries a 503 elsewhere, and the walk finds the new holder.
        Ok(Ok(Answer::Moved)) => error(StatusCode::SERVICE_UNAVAILABLE, "moved", "the session moved to another edge"),
        // The session ended (closed, expired) while the request waited.
        Ok(Err(_)) => error(StatusCode::NOT_FOUND, "unknown_session", "the RTMPT session ended"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "timed_out", "the session did not answer in time"),
    }
}

/// Where the walk down a session's chain found it.
enum Found {
    /// Taken over here: this edge holds it now.
    Here(mpsc::Sender<Request>),
    /// A peer answered (the holder, or a buddy that took it over).
    There(Response),
    /// No edge has it.
    Nowhere,
    /// It could not be taken over here (caps, a bad sequence number).
    Refused(Response),
}

/// A tunnel request for a session this edge does not hold.
struct Asked<'a> {
    id: &'a str,
    seq: u64,
    close: bool,
    path: &'a str,
    client: SocketAddr,
    /// Another edge sent it on.
    forwarded: bool,
}

/// Finds the session of `asked`: down its chain, forwarding the request to each peer
/// in turn, or taking it over from the replica here. A request another edge forwarded
/// is not forwarded again, except to the holder a replica here names, which is tried
/// first: the session is taken over only if nothing listens there any more (or it
/// answers that it lacks the session). A holder that does not answer in time may be
/// alive: the request gets `503`, which the balancer replays.
async fn find(ctx: &Arc<EdgeContext>, peers: &Arc<Peers>, asked: &Asked<'_>, body: Bytes) -> Found {
    let Asked { id, path, client, .. } = *asked;
    let chain = if asked.forwarded { vec![peers.me()] } else { peers.live_chain(id) };
    for member in chain {
        if member != peers.me() {
            match peers.forward(member, path, body.clone(), client).await {
                Ok(answer) => return Found::There(answer),
                Err(e) => tracing::debug!(session = id, peer = member, error = %e, "RTMPT peer did not serve"),
            }
            continue;
        }
        let Some(holder) = peers.replica_holder(id) else { continue };
        match peers.forward(holder, path, body.clone(), client).await {
            Ok(answer) => return Found::There(answer),
            Err(PeerError::Down(e)) => tracing::info!(session = id, holder, error = e, "RTMPT holder down"),
            Err(PeerError::Status(StatusCode::MISDIRECTED_REQUEST, _)) => {
                tracing::info!(session = id, holder, "RTMPT holder lost the session")
            }
            Err(e) => {
                tracing::info!(session = id, holder, error = %e, "RTMPT holder did not answer; not taking over yet");
                let unsure =
                    error(StatusCode::SERVICE_UNAVAILABLE, "holder_unsure", "the session's edge did not answer");
                return Found::Refused(unsure);
            }
        }
        if asked.close {
            // Nothing to take over for a client that leaves.
            peers.drop_replica(id);
            return Found::There(fcs(Bytes::from_static(&[PollingDelay::CLOSED])));
        }
        match takeover(ctx, peers, id, asked.seq) {
            Ok(session) => return Found::Here(session),
            // A copy behind the client (its holder moved on to another buddy): the
            // walk goes on to the edges after this one.
            Err(refused) if refused.status() == StatusCode::BAD_REQUEST => peers.drop_replica(id),
            Err(refused) => return Found::Refused(*refused),
        }
    }
    Found::Nowhere
}

/// Makes this edge the holder of session `id` from its replica here, for request
/// `seq`: a new RTMP connection driven through the translator from the journal.
fn takeover(
    ctx: &Arc<EdgeContext>,
    peers: &Arc<Peers>,
    id: &str,
    seq: u64,
) -> Result<mpsc::Sender<Request>, Box<Response>> {
    let _one_at_a_time = peers.takeovers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(session) = ctx.tunnels.get(id) {
        return Ok(session); // another request of the session took it over meanwhile
    }
    let Some(standby) = peers.take(id) else {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "unknown_session", "no such RTMPT session")));
    };
    let failed = |why: String, standby: Box<peers::Standby>, answer: Response| {
        peers.stats().takeovers_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(session = id, why, "RTMPT takeover refused");
        peers.put_back(id, standby);
        Err(Box::new(answer))
    };
    let Some(resume) = standby.journal.resume_from(seq).cloned() else {
        let expected = standby.journal.last_seq().map_or(0, |s| s + 1);
        let why = format!("expected request {expected} (or a repeat of the last)");
        return failed(why.clone(), standby, error(StatusCode::BAD_REQUEST, "bad_sequence", why));
    };
    let client = standby.client;
    let session_permit = match ctx.limits.rtmpt_sessions.try_acquire(client.ip()) {
        Ok(permit) => permit,
        Err(e) => {
            return failed(e.to_string(), standby, error(StatusCode::SERVICE_UNAVAILABLE, "server_full", e.to_string()))
        }
    };
    let permits = match rtmp_conn::admit(ctx, client) {
        Ok(permits) => permits,
        Err(e) => {
            return failed(e.to_string(), standby, error(StatusCode::SERVICE_UNAVAILABLE, "server_full", e.to_string()))
        }
    };
    let (translator, hello) = match Translator::start(&standby.journal, &resume) {
        Ok(started) => started,
        Err(e) => {
            let answer = error(StatusCode::NOT_FOUND, "unknown_session", format!("the session cannot be resumed: {e}"));
            return failed(e.to_string(), standby, answer);
        }
    };
    let outbound = match Outbound::resumed(resume.clone()) {
        Ok(outbound) => outbound,
        Err(e) => {
            let answer = error(StatusCode::NOT_FOUND, "unknown_session", format!("the session cannot be resumed: {e}"));
            return failed(e.to_string(), standby, answer);
        }
    };
    let standby = *standby;
    let last = standby.journal.last_seq().unwrap_or(0);
    // The warm relays stay until the replay has played on them (a relay whose last
    // lease goes stops, and a new one would start without the history to resume from).
    let warm: Vec<_> = standby.leases.into_values().collect();
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    let (requests, queue) = mpsc::channel(QUEUED_REQUESTS);
    ctx.tunnels.insert(id.to_owned(), requests.clone());
    ctx.stats.rtmpt.open.fetch_add(1, Ordering::Relaxed);
    peers.stats().takeovers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session = id, seq, last, %client, "RTMPT session taken over");
    let protocol = if standby.tls { "rtmpts" } else { "rtmpt" };
    let shared = Shared::new(peers.clone(), standby.journal, outbound, client, standby.tls);
    let state = Session {
        exchange: Exchange::resumed(last),
        translator: Some(translator),
        regenerate: Some(last),
        warm,
        ..Session::new(id.to_owned(), near, Some(shared))
    };
    tokio::spawn(state.run(queue, ctx.clone(), session_permit, Some(hello)));
    tokio::spawn(rtmp_conn::run_stream(
        far,
        protocol,
        client,
        ctx.clone(),
        permits,
        ctx.shutdown.clone(),
        Resume { plays: resume.resume_points(), session: Some(public_name(id)) },
    ));
    Ok(requests)
}

/// Reads a body nobody needs (`/open`, `/idle`, `/close`, where ffmpeg sends one zero
/// byte; requests answered with an error) and drops it as it comes, up to
/// [`MAX_BODY`]: a body left unread makes hyper close the connection, and the
/// client's next keep-alive request fails with it.
async fn discard_body(req: axum::extract::Request) -> Result<(), Response> {
    use futures::StreamExt;
    let mut frames = req.into_body().into_data_stream();
    let mut read = 0;
    while let Some(frame) = frames.next().await {
        read += frame.map_err(|_| too_large())?.len();
        if read > MAX_BODY {
            return Err(too_large());
        }
    }
    Ok(())
}

fn too_large() -> Response {
    let why = format!("an RTMPT request body is at most {MAX_BODY} bytes (or it came too slowly)");
    error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", why)
}

fn fcs(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE), (header::CACHE_CONTROL, "no-cache")], Body::from(body)).into_response()
}

fn open(ctx: &Arc<EdgeContext>, peer: SocketAddr, over_tls: bool) -> Response {
    if ctx.shutdown.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the edge is shutting down");
    }
    let refused = |refused: Refused| match refused {
        Refused::PerAddress { .. } => too_many(&refused),
        Refused::Global { .. } => error(StatusCode::SERVICE_UNAVAILABLE, "server_full", refused.to_string()),
    };
    let session_permit = match ctx.limits.rtmpt_sessions.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(e) => return refused(e),
    };
    let permits = match rtmp_conn::admit(ctx, peer) {
        Ok(permits) => permits,
        Err(e) => return refused(e),
    };
    let peers = ctx.tunnels.peers().cloned();
    let id = peers.as_ref().map_or_else(session_id, |p| p.new_id());
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    let (requests, queue) = mpsc::channel(QUEUED_REQUESTS);
    ctx.tunnels.insert(id.clone(), requests);
    ctx.stats.rtmpt.open.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, session = id, "RTMPT session opened");
    let shared = peers.map(|peers| Shared::new(peers, Journal::new(), Outbound::new(), peer, over_tls));
    let state = Session::new(id.clone(), near, shared);
    tokio::spawn(state.run(queue, ctx.clone(), session_permit, None));
    let protocol = if over_tls { "rtmpts" } else { "rtmpt" };
    // A shared session's sessions are named by its id on every edge (Resume::session).
    let resume = Resume { session: ctx.tunnels.peers().map(|_| public_name(&id)), ..Resume::default() };
    tokio::spawn(rtmp_conn::run_stream(far, protocol, peer, ctx.clone(), permits, ctx.shutdown.clone(), resume));
    let mut reply = fcs(Bytes::from(format!("{id}\n")));
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        reply.headers_mut().insert(SESSION_HEADER, value);
    }
    reply
}

pub const SESSION_HEADER: &str = "x-rtmpt-session";

/// What claims and webhooks call a shared session's RTMP sessions on every edge
/// (`rtmp_conn::Resume::session`): derived from its id, the same wherever it is held,
/// but not the id itself, which is the session's only credential (claims are listed
/// by the admin API, webhooks go to the apps' servers).
fn public_name(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("rtmpt-{hex}")
}

fn session_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// A session's task for an edge that does not share sessions (and its unit tests).
#[cfg(test)]
async fn session(
    id: String,
    pipe: DuplexStream,
    queue: mpsc::Receiver<Request>,
    ctx: Arc<EdgeContext>,
    permit: Permit,
) {
    Session::new(id, pipe, None).run(queue, ctx, permit, None).await
}

/// What a session of a tier that shares sessions keeps beyond the tunnel.
struct Shared {
    peers: Arc<Peers>,
    /// The client's side of the session, as the buddy holds it.
    journal: Journal,
    /// Cuts replies at message boundaries and says where delivery stands.
    outbound: Outbound,
    client: SocketAddr,
    tls: bool,
    /// The peer holding the replica, once one took a full copy.
    buddy: Option<usize>,
    /// With no buddy, when to look for one again.
    retry_buddy_at: Instant,
    /// False once the journal could not follow the session (a bound, bad bytes): it is
    /// served on, unprotected.
    resumable: bool,
    /// The journal's bytes charged to the holder's budget.
    charged: usize,
    /// When the last step or full copy went to a buddy (for its lease).
    last_step: Instant,
}

/// One session's state, owned by its task.
struct Session {
    id: String,
    pipe: DuplexStream,
    exchange: Exchange,
    /// The connection behind the pipe has ended.
    closed: bool,
    shared: Option<Shared>,
    /// After a takeover: between the client's RTMP bytes and the new connection's.
    translator: Option<Translator>,
    /// After a takeover, the last request the journal had: a repeat of it is answered
    /// afresh (its reply died with the old holder), without its body.
    regenerate: Option<u64>,
    /// After a takeover, what the new connection had for the client by the end of
    /// the replay: the first reply's start.
    early: BytesMut,
    /// After a takeover, the buddy's warm relays, until the replay is done.
    warm: Vec<Lease>,
}

/// How long a takeover may take to replay the session to its new connection.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

impl Session {
    /// A session opened here: a fresh exchange, no takeover state.
    fn new(id: String, pipe: DuplexStream, shared: Option<Shared>) -> Session {
        Session {
            id,
            pipe,
            exchange: Exchange::default(),
            closed: false,
            shared,
            translator: None,
            regenerate: None,
            early: BytesMut::new(),
            warm: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Request>,
        ctx: Arc<EdgeContext>,
        _permit: Permit,
        hello: Option<Bytes>,
    ) {
        let stats = &ctx.stats.rtmpt;
        let idle_timeout = ctx.config.caps.rtmpt_idle_timeout;
        if let Some(hello) = hello {
            if let Err(why) = self.replay(hello).await {
                tracing::warn!(session = self.id, why, "RTMPT takeover failed");
                self.closed = true;
            }
            self.warm.clear();
        }
        let why = loop {
            let request = tokio::select! {
                request = queue.recv() => match request {
                    Some(request) => request,
                    None => break "gone",
                },
                _ = tokio::time::sleep(idle_timeout) => {
                    stats.expired.fetch_add(1, Ordering::Relaxed);
                    break "expired";
                }
            };
            let Request { seq, body, close, answer } = request;
            if close {
                let _ = answer.send(Answer::Reply(Bytes::from_static(&[PollingDelay::CLOSED])));
                break "closed by the client";
            }
            let regenerate = self.regenerate == Some(seq);
            let verdict = if regenerate { Verdict::Fresh } else { self.exchange.check(seq) };
            let reply = match verdict {
                Verdict::OutOfOrder { expected } => {
                    let _ = answer.send(Answer::OutOfOrder { expected });
                    continue;
                }
                Verdict::Repeat(reply) => reply,
                Verdict::Fresh => {
                    self.regenerate = None;
                    // A regenerated reply's body was applied by the old holder.
                    let body = if regenerate { Bytes::new() } else { body };
                    match self.fresh(&ctx, seq, body).await {
                        Ok(reply) => reply,
                        Err(Fenced) => {
                            let _ = answer.send(Answer::Moved);
                            break "taken over by another edge";
                        }
                    }
                }
            };
            stats.bytes_out.fetch_add(reply.len() as u64, Ordering::Relaxed);
            let finished = reply.first() == Some(&PollingDelay::CLOSED);
            let _ = answer.send(Answer::Reply(reply));
            if finished {
                break "the RTMP session ended";
            }
        };
        if let Some(shared) = &mut self.shared {
            if let (Some(buddy), true) = (shared.buddy, why != "taken over by another edge") {
                let _ = shared.peers.send_update(buddy, &self.id, &Update::Drop).await;
            }
            shared.release();
        }
        ctx.tunnels.remove(&self.id);
        stats.open.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(session = self.id, why, "RTMPT session closed");
    }

    /// Carries out a fresh request: its body into the connection, what the connection
    /// has for the client back, the step to the buddy, then the reply.
    async fn fresh(&mut self, ctx: &Arc<EdgeContext>, seq: u64, body: Bytes) -> Result<Bytes, Fenced> {
        let stats = &ctx.stats.rtmpt;
        let sent = !body.is_empty();
        if sent && !self.closed {
            stats.bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
            let to_server = match &mut self.translator {
                Some(translator) => match translator.from_client(&body) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::info!(session = self.id, error = %e, "RTMPT client bytes do not translate");
                        self.closed = true;
                        Bytes::new()
                    }
                },
                None => body.clone(),
            };
            if !to_server.is_empty() {
                match tokio::time::timeout(PIPE_WRITE_TIMEOUT, self.pipe.write_all(&to_server)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => self.closed = true,
                }
            }
        }
        let data = self.reply_data(!sent).await;
        if let Some(shared) = &mut self.shared {
            shared.step(&self.id, seq, body, self.closed).await?;
        }
        Ok(self.exchange.answer(seq, sent, &data, self.closed))
    }

    /// What goes to the client in this reply: for a plain session what the connection
    /// wrote; for a shared one, whole messages only (the rest waits for the next
    /// reply), translated after a takeover.
    async fn reply_data(&mut self, hold: bool) -> Bytes {
        if self.shared.is_none() {
            return gather(&mut self.pipe, hold, &mut self.closed).await.freeze();
        }
        let deadline = tokio::time::Instant::now() + IDLE_HOLD;
        let mut reply = std::mem::take(&mut self.early);
        // Complete messages held back from the last reply first.
        self.take(&[], &mut reply);
        loop {
            let waiting = reply.is_empty() && (hold || self.pending() > 0);
            if self.closed || reply.len() >= REPLY_BYTES {
                break;
            }
            let raw = read_some(&mut self.pipe, waiting.then_some(deadline), &mut self.closed).await;
            let Some(raw) = raw else { break };
            let for_client = match self.translate_server(&raw).await {
                Ok(bytes) => bytes,
                Err(why) => {
                    tracing::info!(session = self.id, why, "RTMPT server bytes do not translate");
                    self.closed = true;
                    break;
                }
            };
            self.take(&for_client, &mut reply);
        }
        reply.freeze()
    }

    fn pending(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.outbound.pending())
    }

    /// Feeds bytes for the client to the outbound cutter, appending what ends at a
    /// message boundary to `reply`.
    fn take(&mut self, for_client: &[u8], reply: &mut BytesMut) {
        let Some(shared) = &mut self.shared else { return };
        let room = REPLY_BYTES.saturating_sub(reply.len()).max(1);
        match shared.outbound.take_reply(for_client, room) {
            Ok(part) => reply.extend_from_slice(&part),
            Err(e) => {
                tracing::info!(session = self.id, error = %e, "RTMPT server bytes do not parse");
                self.closed = true;
            }
        }
    }

    /// Server bytes through the translator after a takeover (writing what it has for
    /// the connection back into the pipe), as they are otherwise.
    async fn translate_server(&mut self, raw: &[u8]) -> Result<Bytes, String> {
        let Some(translator) = &mut self.translator else { return Ok(Bytes::copy_from_slice(raw)) };
        let (to_server, to_client) = translator.from_server(raw).map_err(|e| e.to_string())?;
        if !to_server.is_empty() {
            match tokio::time::timeout(PIPE_WRITE_TIMEOUT, self.pipe.write_all(&to_server)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("the connection took no input".into()),
            }
        }
        Ok(to_client)
    }

    /// Drives a takeover's new connection through the handshake and the replay of the
    /// session's commands, before the first request is answered.
    async fn replay(&mut self, hello: Bytes) -> Result<(), String> {
        self.pipe.write_all(&hello).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
        while !self.translator.as_ref().is_some_and(Translator::replayed) {
            let raw = read_some(&mut self.pipe, Some(deadline), &mut self.closed).await;
            let Some(raw) = raw else {
                return Err(if self.closed { "the connection closed" } else { "the replay timed out" }.into());
            };
            let for_client = self.translate_server(&raw).await?;
            // What passes the replay (media after the resume point) waits for the reply.
            let mut early = std::mem::take(&mut self.early);
            self.take(&for_client, &mut early);
            self.early = early;
        }
        Ok(())
    }
}

/// The buddy took the session over: this edge must not answer for it any more.
struct Fenced;

impl Shared {
    fn new(peers: Arc<Peers>, journal: Journal, outbound: Outbound, client: SocketAddr, tls: bool) -> Shared {
        let now = Instant::now();
        Shared {
            peers,
            journal,
            outbound,
            client,
            tls,
            buddy: None,
            retry_buddy_at: now,
            resumable: true,
            charged: 0,
            last_step: now,
        }
    }

    /// Records request `seq` in the journal and has the buddy hold it too, before the
    /// reply goes out.
    async fn step(&mut self, id: &str, seq: u64, body: Bytes, closed: bool) -> Result<(), Fenced> {
        if !self.resumable || closed {
            return Ok(());
        }
        let step = Step { seq, body, after: self.outbound.positions().clone() };
        let applied = self.journal.apply(&step).map_err(|e| e.to_string());
        let fits = applied.is_ok() && self.peers.charge(self.client.ip(), self.charged, self.journal.bytes());
        if !fits {
            let why = applied.err().unwrap_or_else(|| "over the journal budget".into());
            tracing::info!(session = id, why, "RTMPT session no longer resumable");
            self.unprotect(id).await;
            return Ok(());
        }
        self.charged = self.journal.bytes();
        if let Some(buddy) = self.buddy {
            self.last_step = Instant::now();
            match self.peers.send_update(buddy, id, &Update::Step(step)).await {
                Ok(()) => return Ok(()),
                Err(PeerError::Status(StatusCode::CONFLICT, _)) => {
                    self.peers.stats().fenced.fetch_add(1, Ordering::Relaxed);
                    return Err(Fenced);
                }
                Err(e) => {
                    tracing::info!(session = id, buddy, error = %e, "RTMPT buddy lost; a full copy goes elsewhere");
                    self.leave(id, buddy, &e).await;
                }
            }
        }
        self.find_buddy(id).await
    }

    /// Stops protecting the session: its journal goes, and its buddy's copy.
    async fn unprotect(&mut self, id: &str) {
        self.resumable = false;
        self.release();
        self.journal = Journal::new();
        if let Some(buddy) = self.buddy.take() {
            let error = match self.peers.send_update(buddy, id, &Update::Drop).await {
                Ok(()) => return,
                Err(e) => e,
            };
            self.leave(id, buddy, &error).await;
        }
    }

    /// Gives the journal's bytes back to the holder's budget.
    fn release(&mut self) {
        self.peers.charge(self.client.ip(), self.charged, 0);
        self.charged = 0;
    }

    /// Makes sure the copy on `buddy`, which failed with `error`, can take nothing
    /// over once this edge goes on without it: gone with its process (`Down`), dropped
    /// on request, or past its lease, which is waited out (the reply waits: a client
    /// answered by two edges would be worse).
    async fn leave(&mut self, id: &str, buddy: usize, error: &PeerError) {
        self.buddy = None;
        if matches!(error, PeerError::Down(_)) {
            return;
        }
        match self.peers.send_update(buddy, id, &Update::Drop).await {
            Ok(()) | Err(PeerError::Down(_)) => {}
            Err(e) => {
                let until = self.last_step + peers::REPLICA_LEASE;
                tracing::warn!(session = id, buddy, error = %e, "RTMPT buddy unsure; waiting out its lease");
                tokio::time::sleep_until(until.into()).await;
            }
        }
    }

    /// Gives a full copy of the journal to the first peer of the chain that takes it.
    async fn find_buddy(&mut self, id: &str) -> Result<(), Fenced> {
        if Instant::now() < self.retry_buddy_at {
            self.peers.stats().unprotected.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let full = Update::Full(Box::new(Full {
            holder: self.peers.me(),
            client: self.client,
            tls: self.tls,
            journal: self.journal.snapshot(),
        }));
        for member in self.peers.live_chain(id) {
            if member == self.peers.me() {
                continue;
            }
            self.last_step = Instant::now();
            match self.peers.send_update(member, id, &full).await {
                Ok(()) => {
                    self.buddy = Some(member);
                    return Ok(());
                }
                Err(e) => {
                    // A 409 here is a tombstone of an earlier takeover by that edge,
                    // for another holder: not this one's fence.
                    tracing::debug!(session = id, peer = member, error = %e, "RTMPT peer refused a replica");
                    if !matches!(e, PeerError::Down(_) | PeerError::Status(..)) {
                        self.leave(id, member, &e).await;
                    }
                }
            }
        }
        self.retry_buddy_at = Instant::now() + Duration::from_secs(1);
        self.peers.stats().unprotected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Reads what the pipe has now, or, with a deadline, waits for the first bytes until
/// it; `None` when nothing came. Sets `closed` at the connection's end.
async fn read_some(
    pipe: &mut DuplexStream,
    until: Option<tokio::time::Instant>,
    closed: &mut bool,
) -> Option<BytesMut> {
    let mut data = BytesMut::with_capacity(16 * 1024);
    let read = pipe.read_buf(&mut data);
    let read = match until {
        Some(deadline) => tokio::time::timeout_at(deadline, read).await.ok(),
        None => read.now_or_never(),
    };
    match read {
        None => None,
        Some(Ok(0)) | Some(Err(_)) => {
            *closed = true;
            None
        }
        Some(Ok(_)) => Some(data),
    }
}

async fn gather(pipe: &mut DuplexStream, hold: bool, closed: &mut bool) -> BytesMut {
    let mut data = BytesMut::new();
    while !*closed && data.len() < REPLY_BYTES {
        let room = REPLY_BYTES - data.len();
        let wait = hold && data.is_empty();
        data.reserve(room.min(16 * 1024));
        let read = {
            let mut into = (&mut data).limit(room);
            let read = pipe.read_buf(&mut into);
            if wait {
                tokio::time::timeout(IDLE_HOLD, read).await.ok()
            } else {
                read.now_or_never()
            }
        };
        match read {
            None => break,
            Some(Ok(0)) | Some(Err(_)) => *closed = true,
            Some(Ok(_)) => {}
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sessions_are_named_after_their_id_without_giving_it_away() {
        let id = "01aabbccddeeff00112233445566778899";
        let name = public_name(id);
        assert_eq!(name, public_name(id), "the same on every edge");
        assert!(name.starts_with("rtmpt-") && !name.contains(&id[2..10]), "{name}");
        assert_ne!(name, public_name("01aabbccddeeff00112233445566778898"));
    }

    fn context() -> Arc<EdgeContext> {
        let args = crate::edge::EdgeArgs {
            id: Some("edge-1".into()),
            origins: Some(vec!["127.0.0.1:8101".parse().unwrap()]),
            rtmpt_idle_timeout_ms: Some(1000),
            ..Default::default()
        };
        let env = |k: &str| (k == "RAFTCAST_CLUSTER_SECRET").then(|| "x".repeat(20));
        crate::edge::tests::context(crate::edge::EdgeConfig::from_args(args, env).unwrap())
    }

    /// Sends one request to a session task and waits for its answer.
    async fn ask(queue: &mpsc::Sender<Request>, seq: u64, body: &[u8], close: bool) -> Bytes {
        let (answer, answered) = oneshot::channel();
        let body = Bytes::copy_from_slice(body);
        queue.send(Request { seq, body, close, answer }).await.unwrap();
        match answered.await.unwrap() {
            Answer::Reply(reply) => reply,
            Answer::OutOfOrder { expected } => panic!("out of order, expected {expected}"),
            Answer::Moved => panic!("moved"),
        }
    }

    #[tokio::test]
    async fn bodies_go_into_the_pipe_replies_carry_what_came_out_and_the_end_is_the_closed_byte() {
        let ctx = context();
        let (near, mut far) = tokio::io::duplex(PIPE_BYTES);
        let (queue, requests) = mpsc::channel(QUEUED_REQUESTS);
        ctx.tunnels.insert("s".into(), queue.clone());
        let permit = ctx.limits.rtmpt_sessions.try_acquire([127, 0, 0, 1].into()).unwrap();
        let task = tokio::spawn(session("s".into(), near, requests, ctx.clone(), permit));

        assert_eq!(&ask(&queue, 0, b"C0C1", false).await[..], b"\x01");
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"C0C1");
        far.write_all(b"S0S1").await.unwrap();
        assert_eq!(&ask(&queue, 1, b"", false).await[..], b"\x01S0S1");
        // An idle poll waits for the server's next bytes, up to the hold.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(IDLE_HOLD / 2).await;
            far.write_all(b"late").await.unwrap();
            far
        });
        let started = tokio::time::Instant::now();
        assert_eq!(&ask(&queue, 2, b"", false).await[..], b"\x01late");
        let waited = started.elapsed();
        assert!(waited >= IDLE_HOLD / 2 && waited < IDLE_HOLD, "answered after {waited:?}");
        let far = writer.await.unwrap();
        // Nothing at all: the hold runs out and the reply is the polling byte alone.
        let started = tokio::time::Instant::now();
        assert_eq!(&ask(&queue, 3, b"", false).await[..], b"\x01");
        assert!(started.elapsed() >= IDLE_HOLD, "answered after {:?}", started.elapsed());
        // A /send is answered at once, with nothing to wait for.
        let started = tokio::time::Instant::now();
        assert_eq!(&ask(&queue, 4, b"x", false).await[..], b"\x01");
        assert!(started.elapsed() < IDLE_HOLD / 2, "a send waited {:?}", started.elapsed());

        // The connection ends: its end of the pipe closes, the next reply says so, and
        // the session is gone.
        drop(far);
        assert_eq!(&ask(&queue, 5, b"", false).await[..], &[PollingDelay::CLOSED]);
        task.await.unwrap();
        assert!(ctx.tunnels.is_empty());
        assert_eq!(ctx.limits.rtmpt_sessions.in_use(), 0, "the permit is released");
    }

    #[tokio::test]
    async fn a_session_without_requests_expires_and_close_ends_one_at_any_number() {
        let ctx = context();
        let (near, _far) = tokio::io::duplex(PIPE_BYTES);
        let (_queue, requests) = mpsc::channel(QUEUED_REQUESTS);
        let permit = ctx.limits.rtmpt_sessions.try_acquire([127, 0, 0, 1].into()).unwrap();
        session("idle".into(), near, requests, ctx.clone(), permit).await;
        assert_eq!(ctx.stats.rtmpt.expired.load(Ordering::Relaxed), 1);

        let (near, _far) = tokio::io::duplex(PIPE_BYTES);
        let (queue, requests) = mpsc::channel(QUEUED_REQUESTS);
        let permit = ctx.limits.rtmpt_sessions.try_acquire([127, 0, 0, 1].into()).unwrap();
        let task = tokio::spawn(session("closed".into(), near, requests, ctx.clone(), permit));
        assert_eq!(&ask(&queue, 0, b"", false).await[..], b"\x01");
        assert_eq!(&ask(&queue, 7, b"", true).await[..], &[PollingDelay::CLOSED]);
        task.await.unwrap();
        assert_eq!(ctx.stats.rtmpt.expired.load(Ordering::Relaxed), 1, "closed, not expired");
    }
}
