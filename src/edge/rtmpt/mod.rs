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
pub(crate) mod journal;
pub(crate) mod translate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use self::exchange::{BadPath, Command, Exchange, Kind, PollingDelay, Verdict};
use super::rtmp_conn::{self, ClientStream};
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
    OutOfOrder { expected: u64 },
}

/// The open sessions of this edge, by id.
#[derive(Debug, Default)]
pub struct Tunnels {
    /// Never held across an await.
    sessions: Mutex<HashMap<String, mpsc::Sender<Request>>>,
}

impl Tunnels {
    fn insert(&self, id: String, requests: mpsc::Sender<Request>) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id, requests);
    }

    fn get(&self, id: &str) -> Option<mpsc::Sender<Request>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
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
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no client address");
    };
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
    // Only a request for an open session has its body kept.
    let Some(session) = ctx.tunnels.get(&id) else { return unknown(req).await };
    let body = if carries_body {
        match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
            Ok(body) => body,
            Err(_) => return too_large(),
        }
    } else {
        match discard_body(req).await {
            Ok(()) => Bytes::new(),
            Err(refused) => return refused,
        }
    };
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
        // The session ended (closed, expired) while the request waited.
        Ok(Err(_)) => error(StatusCode::NOT_FOUND, "unknown_session", "the RTMPT session ended"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "timed_out", "the session did not answer in time"),
    }
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

/// A `200` with the tunnel's content type.
fn fcs(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE), (header::CACHE_CONTROL, "no-cache")], Body::from(body)).into_response()
}

/// `POST /open/1`: takes the permits, starts the session's task and its RTMP
/// connection task, answers the id.
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
    let id = session_id();
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    let (requests, queue) = mpsc::channel(QUEUED_REQUESTS);
    ctx.tunnels.insert(id.clone(), requests);
    ctx.stats.rtmpt.open.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, session = id, "RTMPT session opened");
    tokio::spawn(session(id.clone(), near, queue, ctx.clone(), session_permit));
    let protocol = if over_tls { "rtmpts" } else { "rtmpt" };
    tokio::spawn(rtmp_conn::run_stream(far, protocol, peer, ctx.clone(), permits, ctx.shutdown.clone()));
    let mut reply = fcs(Bytes::from(format!("{id}\n")));
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        reply.headers_mut().insert(SESSION_HEADER, value);
    }
    reply
}

/// The `/open` reply names the new session in this header too, for a load balancer to
/// send the session's later requests (`/send/{id}/…`) to this edge: `RAFTCAST_LB=1`'s
/// HAProxy keeps it in a stick table (docs/rtmpt.md, "Through the load balancer").
pub const SESSION_HEADER: &str = "x-rtmpt-session";

/// 128 random bits in hex: unguessable, so the id is the session's credential.
fn session_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// One session's task: carries out its requests in order until it is closed, its RTMP
/// connection has ended and said so, or no request came for the idle timeout.
async fn session(
    id: String,
    mut pipe: DuplexStream,
    mut queue: mpsc::Receiver<Request>,
    ctx: Arc<EdgeContext>,
    _permit: Permit,
) {
    let stats = &ctx.stats.rtmpt;
    let idle_timeout = ctx.config.caps.rtmpt_idle_timeout;
    let mut exchange = Exchange::default();
    // The connection task has closed its end: what it wrote last is still delivered.
    let mut closed = false;
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
            // Whatever its number: the id is the credential, and a client that closes
            // wants nothing more.
            let _ = answer.send(Answer::Reply(Bytes::from_static(&[PollingDelay::CLOSED])));
            break "closed by the client";
        }
        let reply = match exchange.check(seq) {
            Verdict::OutOfOrder { expected } => {
                let _ = answer.send(Answer::OutOfOrder { expected });
                continue;
            }
            Verdict::Repeat(reply) => reply,
            Verdict::Fresh => {
                let sent = !body.is_empty();
                if sent && !closed {
                    stats.bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
                    match tokio::time::timeout(PIPE_WRITE_TIMEOUT, pipe.write_all(&body)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => closed = true,
                        Err(_) => break "the connection took no input",
                    }
                }
                let data = gather(&mut pipe, !sent, &mut closed).await;
                exchange.answer(seq, sent, &data, closed)
            }
        };
        stats.bytes_out.fetch_add(reply.len() as u64, Ordering::Relaxed);
        let finished = reply.first() == Some(&PollingDelay::CLOSED);
        let _ = answer.send(Answer::Reply(reply));
        if finished {
            break "the RTMP session ended";
        }
    };
    ctx.tunnels.remove(&id);
    stats.open.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(session = id, why, "RTMPT session closed");
}

/// What the server has written so far, up to [`REPLY_BYTES`]; with `hold`, when
/// nothing is ready, waits up to [`IDLE_HOLD`] for the first bytes. Sets `closed` once
/// the connection task has closed its end.
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
