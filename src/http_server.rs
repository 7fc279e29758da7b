//! The HTTP server loop shared by edges and origins: hyper's HTTP/1 connection driver
//! (or, over TLS, hyper-util's HTTP/1 + HTTP/2 driver chosen by ALPN) around an axum
//! [`Router`], with the caps every listener states (STYLE: "every
//! listener states its caps beside its accept loop").
//!
//! - a global and a per-address cap on open connections ([`crate::limits::Limit`]):
//!   a connection over either is closed at accept, counted, never served;
//! - a header-read timeout: from the moment a connection waits for a request (its
//!   first, or the next one on a kept-alive connection) until the whole head has
//!   arrived; it is also what closes idle keep-alive connections (hyper starts the
//!   same timer while waiting for the next request);
//! - a request-body deadline: the whole body must arrive within it, counted from the
//!   first poll of the body (a drip that resets a per-read timer does not help);
//! - a reserve of the global cap for trusted addresses (an origin's fellow members):
//!   a flood from elsewhere fills the rest and is refused, Raft RPC still connects;
//! - graceful shutdown: stop accepting, let each connection finish the request in
//!   flight, then wait for every connection task;
//! - behind a load balancer (`HttpLimits::proxy`), connections from the trusted
//!   balancers must open with a PROXY protocol header ([`crate::proxy_protocol`]); the
//!   client it carries is the peer for every cap and log, and a trusted connection
//!   without a valid header within the deadline is closed;
//! - over TLS ([`serve_tls`]): every cap above applies to the TCP connection before
//!   the TLS handshake, which must finish within the header timeout; HTTP/2 requests
//!   get the same body deadline, at most [`H2_MAX_STREAMS`] at once per connection.
//!   hyper has no idle timer for HTTP/2, so [`Idle`] keeps one: a TLS connection with
//!   no request in flight (bodies included) for the header timeout is shut down
//!   gracefully (GOAWAY), so an idle HTTP/2 client cannot hold its permit for ever.
//!   Handshakes are counted ([`crate::tls::HandshakeStats`]).
//!
//! Handlers see the peer (the real client behind a trusted balancer) as axum's
//! `ConnectInfo<SocketAddr>`, for the per-address caps on long-lived requests (SSE,
//! HTTP-FLV, long polls). Never knows routes.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bans::{BanPolicy, Gate, GateStats};
use crate::limits::{Limit, Refused, Trusted};
use crate::proxy_protocol::{Prefixed, ProxyTrust};

/// Concurrent HTTP/2 requests (streams) one TLS connection may hold; more are refused
/// with `REFUSED_STREAM` by hyper.
pub const H2_MAX_STREAMS: u32 = 128;

/// The caps and timeouts of one HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A connection waiting for a request, or for the rest of its head, is closed after
    /// this long.
    pub header_timeout: Duration,
    /// A request body must have arrived whole within this long.
    pub body_timeout: Duration,
    /// Open connections: per address and in all (a [`Limit`] of class `http_connections`).
    pub connections: Arc<Limit>,
    /// Addresses that may use the connection cap's reserve, with no per-address cap and
    /// no ban (an origin's fellow Raft members, so a flood cannot refuse the
    /// connections Raft RPC needs; an edge's fellow edges, `--rtmpt-peers`). Only a
    /// connection's own address counts, never one a PROXY header names.
    pub trusted: Option<Arc<Trusted>>,
    /// Load balancers whose connections carry the client's address in a PROXY
    /// protocol header (`--proxy-protocol-from`); none by default.
    pub proxy: Option<Arc<ProxyTrust>>,
    /// When an address refused too often is banned below accept ([`crate::bans`]);
    /// trusted addresses and balancers never are.
    pub bans: BanPolicy,
    pub ban_stats: Arc<GateStats>,
}

/// Serves `router` on `listener` until `shutdown`, then drains the connections.
/// Returns when every connection has ended.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits, shutdown: CancellationToken) {
    serve_with(listener, router, limits, None, shutdown).await
}

/// [`serve`] over TLS: HTTPS with HTTP/2 or HTTP/1.1 as the client's ALPN asks (the
/// acceptor should offer both, [`crate::tls::ALPN_HTTP`]), with the same caps.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: (TlsAcceptor, Arc<crate::tls::HandshakeStats>),
    shutdown: CancellationToken,
) {
    serve_with(listener, router, limits, Some(tls), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<(TlsAcceptor, Arc<crate::tls::HandshakeStats>)>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut gate = Gate::new("http", limits.bans, limits.ban_stats.clone());
    loop {
        let accepted = tokio::select! {
            accepted = gate.accept(&listener) => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a response split over two segments waits for the peer's
        // delayed ACK (40 ms): one Raft round trip would cost 40 ms on loopback.
        let _ = socket.set_nodelay(true);
        if let Some(proxy) = limits.proxy.as_ref().filter(|p| p.trusts(peer.ip())) {
            // The client is known only once the header is read: off the accept loop,
            // holding one of the bounded slots for headers in flight.
            let Some(pending) = proxy.pending(peer.ip()) else {
                tracing::debug!(%peer, "HTTP connection refused: too many PROXY headers pending");
                continue;
            };
            let (router, limits, tls, shutdown, tracker) =
                (router.clone(), limits.clone(), tls.clone(), shutdown.clone(), tracker.clone());
            tracker.clone().spawn(async move {
                let mut socket = socket;
                let read = tokio::select! {
                    read = crate::proxy_protocol::read_header(&mut socket, crate::proxy_protocol::HEADER_DEADLINE) => read,
                    _ = shutdown.cancelled() => return,
                };
                drop(pending);
                match read {
                    Ok((header, rest)) => {
                        let client = header.client(peer);
                        // Behind a balancer a refusal bans nobody: the SYNs are the balancer's.
                        // Trust goes by the connection's own address, never by one a PROXY
                        // header names.
                        let socket = Prefixed::new(rest, socket);
                        drop(admit(socket, (client, false), router, limits, tls, shutdown, &tracker));
                    }
                    Err(e) => tracing::info!(balancer = %peer, error = %e, "HTTP connection closed"),
                }
            });
            continue;
        }
        let trusted = limits.trusted.as_ref().is_some_and(|t| t.contains(peer.ip()));
        if !trusted && !gate.admit(&socket, peer.ip()) {
            continue;
        }
        let (router, limits, tls, shutdown) = (router.clone(), limits.clone(), tls.clone(), shutdown.clone());
        let socket = Prefixed::new(Default::default(), socket);
        if let Some(refused) = admit(socket, (peer, trusted), router, limits, tls, shutdown, &tracker) {
            gate.refused(&listener, refused.get_ref(), peer.ip());
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Takes the connection permit for `peer` (the client; `trusted`: a member of the
/// cluster, see [`HttpLimits::trusted`]) and serves the connection, or gives the
/// socket back when a cap refuses (dropping it closes it).
fn admit(
    socket: Prefixed<TcpStream>,
    (peer, trusted): (SocketAddr, bool),
    router: Router,
    limits: HttpLimits,
    tls: Option<(TlsAcceptor, Arc<crate::tls::HandshakeStats>)>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Option<Prefixed<TcpStream>> {
    let permit = match limits.connections.try_acquire_as(peer.ip(), trusted) {
        Ok(permit) => permit,
        Err(refused) => {
            tracing::debug!(%peer, %refused, "HTTP connection refused");
            return Some(socket);
        }
    };
    tracker.spawn(
        async move {
            match tls {
                None => connection(socket, peer, router, &limits, shutdown).await,
                Some(tls) => tls_connection(socket, tls, peer, router, &limits, shutdown).await,
            }
            drop(permit);
        }
        .instrument(tracing::debug_span!("http", %peer)),
    );
    None
}

/// In a request's extensions when it came over TLS (the HTTPS listener), for handlers
/// that name the transport (RTMPT's webhooks say `rtmpts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverTls;

/// The router as a request handler for one connection from `peer`: the peer as
/// `ConnectInfo` (and [`OverTls`] when `tls`), each request body under the body
/// deadline.
fn handler(
    router: Router,
    peer: SocketAddr,
    tls: bool,
    body_timeout: Duration,
) -> impl Fn(hyper::Request<Incoming>) -> axum::routing::future::RouteFuture<std::convert::Infallible> + Clone {
    move |req: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        if tls {
            parts.extensions.insert(OverTls);
        }
        let body = axum::body::Body::new(DeadlineBody::new(body, body_timeout));
        let req = hyper::Request::from_parts(parts, body);
        tower_service::Service::call(&mut router, req)
    }
}

async fn connection(
    socket: Prefixed<TcpStream>,
    peer: SocketAddr,
    router: Router,
    limits: &HttpLimits,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(handler(router, peer, false, limits.body_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Title-Case header names: librtmp's RTMPT (rtmpdump) looks for `Content-Length`
    // case-sensitively; names are case-insensitive to everyone else.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    builder.title_case_headers(true);
    drive(builder.serve_connection(TokioIo::new(socket), service), &shutdown, "HTTP").await;
}

/// Serves `conn` until it ends, or until `shutdown`; then hyper's graceful shutdown lets
/// requests under way finish.
async fn drive<C>(conn: C, shutdown: &CancellationToken, what: &str)
where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "{what} connection ended");
    }
}

/// One HTTPS connection: the TLS handshake within the header timeout, then HTTP/2 or
/// HTTP/1.1 (ALPN, else a look at the first bytes) with the same timeouts and the same
/// graceful shutdown as [`connection`].
async fn tls_connection(
    socket: Prefixed<TcpStream>,
    (tls, stats): (TlsAcceptor, Arc<crate::tls::HandshakeStats>),
    peer: SocketAddr,
    router: Router,
    limits: &HttpLimits,
    shutdown: CancellationToken,
) {
    let handshake = tokio::select! {
        done = tokio::time::timeout(limits.header_timeout, tls.accept(socket)) => done,
        _ = shutdown.cancelled() => return,
    };
    let stream = match stats.record(handshake) {
        Ok(stream) => stream,
        Err(why) => return tracing::debug!(why, "TLS handshake failed"),
    };
    // Shut down when the edge does, or when the connection idles (see `Idle`).
    let conn_shutdown = shutdown.child_token();
    let idle_stop = CancellationToken::new();
    let idle = Idle::new();
    let watch = tokio::spawn(idle.clone().watch(limits.header_timeout, [conn_shutdown.clone(), idle_stop.clone()]));
    let handle = handler(router, peer, true, limits.body_timeout);
    let service = hyper::service::service_fn(move |req| {
        let busy = idle.busy();
        let answer = handle(req);
        async move {
            let response = answer.await?;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(BusyBody { inner: body, _busy: busy })),
            )
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    // As over plain HTTP: librtmp's RTMPTS needs `Content-Length` spelled so.
    builder.http1().title_case_headers(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(H2_MAX_STREAMS);
    let served = drive(builder.serve_connection(TokioIo::new(stream), service), &conn_shutdown, "HTTPS");
    // An idle HTTP/2 client gets a graceful GOAWAY; one that does not answer its PING
    // (hyper's graceful shutdown waits for it) is dropped one header timeout later.
    let limit = limits.header_timeout;
    tokio::select! {
        _ = served => {}
        _ = async { idle_stop.cancelled().await; tokio::time::sleep(limit).await } => {
            tracing::debug!("idle connection dropped: no answer to the graceful shutdown");
        }
    }
    watch.abort();
}

/// A connection's requests in flight and when the last one ended, for an idle timer
/// hyper does not have on HTTP/2. Cheap to clone.
#[derive(Clone)]
struct Idle(Arc<IdleState>);

struct IdleState {
    in_flight: std::sync::atomic::AtomicUsize,
    /// When the connection last had no request in flight.
    since: std::sync::Mutex<tokio::time::Instant>,
}

impl Idle {
    fn new() -> Idle {
        Idle(Arc::new(IdleState {
            in_flight: Default::default(),
            since: std::sync::Mutex::new(tokio::time::Instant::now()),
        }))
    }

    /// A request begins; it ends when the guard (held by its response body) drops.
    fn busy(&self) -> Busy {
        self.0.in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Cancels `stop` once no request has been in flight for `limit`.
    async fn watch(self, limit: Duration, stop: [CancellationToken; 2]) {
        loop {
            let since = *self.0.since.lock().unwrap_or_else(|p| p.into_inner());
            let idle = self.0.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0;
            if idle && since.elapsed() >= limit {
                tracing::debug!(?limit, "idle connection shut down");
                stop.iter().for_each(CancellationToken::cancel);
                return;
            }
            let next = if idle { since + limit } else { tokio::time::Instant::now() + limit };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop[0].cancelled() => return,
            }
        }
    }
}

/// One request in flight (see [`Idle::busy`]).
struct Busy(Idle);

impl Drop for Busy {
    fn drop(&mut self) {
        let state = &self.0 .0;
        if state.in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            *state.since.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in flight until it ends.
struct BusyBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body did not arrive whole within the deadline.
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The connection failed while reading it.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A request body that must arrive whole before a deadline, armed on its first poll.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody { inner, limit, deadline: None }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let limit = this.limit;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TimedOut(limit)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware for long-lived routes: takes a permit of `limit` for the peer's address
/// (429 `too_many_requests` with `Retry-After: 1` when refused) and holds it until the
/// response body ends, so a stream that lasts for hours keeps counting.
pub async fn long_lived(
    axum::extract::State(limit): axum::extract::State<Arc<Limit>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let permit = match limit.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => {
            let body = serde_json::json!({ "error": { "code": "too_many_requests", "message": refused.to_string() } });
            return (hyper::StatusCode::TOO_MANY_REQUESTS, [(hyper::header::RETRY_AFTER, "1")], axum::Json(body))
                .into_response();
        }
    };
    let response = next.run(request).await;
    response.map(|body| {
        let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
            let _held = &permit;
            chunk
        });
        axum::body::Body::from_stream(stream)
    })
}

/// An error answer in the shape every HTTP API of raftcast uses:
/// `{"error": {"code": …, "message": …}}`.
pub fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (status, Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// A long-lived request over a cap: 429 `too_many_requests` with `Retry-After`.
pub fn too_many(refused: &Refused) -> Response {
    let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", refused.to_string());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
