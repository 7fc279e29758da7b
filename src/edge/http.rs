//! The edge's HTTP side: HTTP-FLV players (`GET /{app}/{name}.flv`), shared objects
//! (`/shared-objects/…`, see `http_objects`), static files at `/webcast/` (`--www`),
//! `/status`, `/metrics`, `/health`; HLS under `/{app}/{name}/` (routes in `hls`);
//! RTMPT `POST`s (handled in `rtmpt`); VOD files at `/vod/{id}.flv` (`vod::flv`).
//!
//! Plays (HTTP-FLV and HLS) check the play token of apps that require one (see
//! `docs/tokens.md`): `Authorization: Bearer T` or `?token=T`.
//!
//! Caps: the listener's own (connections, header and body timeouts) are in
//! [`crate::http_server`]; HTTP-FLV plays, VOD responses and SSE hold a `long_requests` permit
//! (`--max-long-requests-per-address`, 429 over it).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use raftcast_raft::token::StreamRight;
use raftcast_raft::StreamKey;
use serde_json::json;

use super::hooks::{admit_session, DoneNotice, HookCall, HookEvent, HookRefusal};
use super::http_objects;
use super::rtmpt;
use super::streams::Lease;
use super::tokens::{self, Protocol};
use super::EdgeContext;
use crate::http_server::{json_error as error, too_many};
use crate::limits::Permit;
use crate::link::LinkState;
use crate::media::{Frame, FrameKind, Subscription};
use crate::rtmp::flv;

pub fn router(ctx: Arc<EdgeContext>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/drain", post(drain).route_layer(axum::middleware::from_fn_with_state(ctx.clone(), ops_only)))
        .route("/status", get(status).route_layer(axum::middleware::from_fn_with_state(ctx.clone(), ops_only)))
        .route("/metrics", get(metrics).route_layer(axum::middleware::from_fn_with_state(ctx.clone(), ops_only)))
        .route("/shared-objects/{name}", get(http_objects::get))
        .route("/shared-objects/{name}/slots/{slot}", put(http_objects::put_slot).delete(http_objects::delete_slot))
        .route("/shared-objects/{name}/events", get(http_objects::events))
        .route("/shared-objects/{name}/messages", post(http_objects::post_message))
        // Before `/{app}/{file}`, which it would otherwise be: VOD, not the app `vod`.
        .route("/vod/{file}", get(super::vod::flv::file))
        .route("/vod/{id}/{file}", get(super::vod::hls_http::file))
        .route("/{app}/{file}", get(flv_play));
    let router = match &ctx.config.www {
        Some(_) => router
            .route("/webcast", get(|| async { axum::response::Redirect::permanent("/webcast/") }))
            .route("/webcast/", get(www))
            .route("/webcast/{*path}", get(www)),
        None => router,
    };
    let hls = super::hls::router(super::hls::HlsRoutes {
        hls: ctx.hls.clone(),
        long_requests: ctx.limits.long_requests.clone(),
        feed: Arc::new(super::hls::RelayFeed(ctx.clone())),
        tokens: ctx.tokens.clone(),
        refusals: ctx.stats.auth_refused.clone(),
        shutdown: ctx.shutdown.clone(),
    });
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(ctx.clone())
        .merge(hls)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), rtmpt_posts))
        .layer(axum::middleware::from_fn_with_state(ctx, note_client_request))
}

/// RTMPT (`POST /open/1`, `/send/…`, `/idle/…`, `/close/…`, `/fcs/ident2`) goes to
/// [`rtmpt`] before routing: its paths are taken for `POST`s only, so an app named
/// `send` or `idle` keeps its HTTP-FLV and HLS routes.
async fn rtmpt_posts(
    State(ctx): State<Arc<EdgeContext>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() == axum::http::Method::POST {
        if let Some(parsed) = rtmpt::exchange::Command::parse(req.uri().path()) {
            return rtmpt::handle(ctx, parsed, req).await;
        }
        // A peer edge's copy of a session it holds (docs/rtmpt.md).
        if let Some(id) = req.uri().path().strip_prefix("/internal/rtmpt/") {
            let id = id.to_owned();
            return rtmpt::peers::update(ctx, &id, req).await;
        }
    }
    next.run(req).await
}

/// Notes when a client request (not a health check or an ops call) arrived: see
/// `edge::drain::until_empty`.
async fn note_client_request(
    State(ctx): State<Arc<EdgeContext>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !matches!(req.uri().path(), "/health" | "/drain" | "/status" | "/metrics") {
        ctx.stats.last_client_request_ms.store(super::drain::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
    next.run(req).await
}

/// `GET /health`: 200 `ok`, or 503 `draining` once the edge drains, so a load
/// balancer's health check sends it no new clients.
async fn health(State(ctx): State<Arc<EdgeContext>>) -> Response {
    if ctx.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

/// `POST /drain` (loopback or the ops token, like `/status`): starts draining, as
/// SIGUSR1 does (see `edge::drain`). Idempotent, so `ctl edges drain --wait` repeats it
/// to follow the clients left (the edge exits once there are none).
async fn drain(State(ctx): State<Arc<EdgeContext>>) -> Response {
    let already = ctx.draining.is_cancelled();
    ctx.draining.cancel();
    let stats = &ctx.stats;
    axum::Json(serde_json::json!({
        "draining": true,
        "already": already,
        "rtmp_connections": stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        "flv_players": stats.players_flv.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

/// Extensions served from `--www`: what a web page needs, nothing else.
const WWW_TYPES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("map", "application/json"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("svg", "image/svg+xml"),
    ("ico", "image/x-icon"),
    ("webp", "image/webp"),
    ("woff2", "font/woff2"),
];
/// Largest static file served.
const WWW_MAX_FILE: u64 = 16 * 1024 * 1024;

/// Which file under the `--www` root a request path names, or `None` when it is not
/// one the page may be served: no dotfiles or dot-folders, no `test/`, `tests/`,
/// `package*.json`; inside `node_modules/` only a package's `dist/` build; only the
/// extensions in [`WWW_TYPES`].
fn www_file(path: &str) -> Option<(std::path::PathBuf, &'static str)> {
    let path = if path.is_empty() || path.ends_with('/') { format!("{path}index.html") } else { path.to_owned() };
    let segments: Vec<&str> = path.split('/').collect();
    for segment in &segments {
        let bad = segment.is_empty()
            || segment.starts_with('.')
            || segment.contains('\\')
            || segment.contains('\0')
            || matches!(*segment, "test" | "tests");
        if bad {
            return None;
        }
    }
    let file = segments.last()?;
    if file.starts_with("package") && file.ends_with(".json") {
        return None;
    }
    if segments.iter().skip(1).any(|s| *s == "node_modules") {
        return None;
    }
    if segments[0] == "node_modules" && (segments.len() < 4 || segments[2] != "dist") {
        return None;
    }
    let ext = file.rsplit_once('.')?.1.to_ascii_lowercase();
    let kind = WWW_TYPES.iter().find(|(e, _)| *e == ext)?.1;
    Some((segments.iter().collect(), kind))
}

/// `GET /webcast/{path}`: a file of the `--www` folder. Links are resolved and the
/// result must still lie inside the folder: a symlink pointing out of it is a 404.
async fn www(State(ctx): State<Arc<EdgeContext>>, path: Option<Path<String>>) -> Response {
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such file");
    let Some(root) = ctx.config.www.as_ref() else { return not_found() };
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let Some((relative, kind)) = www_file(&path) else { return not_found() };
    let (Ok(root), Ok(file)) =
        (tokio::fs::canonicalize(root).await, tokio::fs::canonicalize(root.join(&relative)).await)
    else {
        return not_found();
    };
    if !file.starts_with(&root) {
        tracing::warn!(path, resolved = %file.display(), "a --www path resolves outside the folder; refused");
        return not_found();
    }
    match tokio::fs::metadata(&file).await {
        Ok(m) if m.is_file() && m.len() <= WWW_MAX_FILE => {}
        _ => return not_found(),
    }
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], bytes).into_response(),
        Err(_) => not_found(),
    }
}

/// Plays a stream as one endless FLV file: the FLV header, then the stream's metadata,
/// sequence headers and GOP, then live tags. The response ends when the publisher
/// stops; a missing stream is a 404 after the configured play wait.
async fn flv_play(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((app, file)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(name) = file.strip_suffix(".flv") else {
        return error(StatusCode::NOT_FOUND, "not_found", "players ask for /{app}/{name}.flv");
    };
    let Ok(stream) = StreamKey::new(&app, name) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "invalid app or stream name");
    };
    if ctx.shutdown.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the edge is shutting down");
    }
    // Before the permit and the relay: a refused player holds neither.
    let token = tokens::from_request(&headers, query.as_deref());
    let claims = match ctx.tokens.authorize_stream(token.as_deref(), &stream.app, &stream.name, StreamRight::Play).await
    {
        Ok(claims) => claims,
        Err(e) => return tokens::refused(ctx.stats.auth_refused.count(Protocol::Flv, e)),
    };
    let session = format!("{}-flv-{}", ctx.started_ms, ctx.stats.flv_sessions.fetch_add(1, Ordering::Relaxed));
    let mut call = HookCall::new(&ctx.config.id, peer, "flv", &stream.app, Some(&stream.name), query.clone(), session);
    call.token = claims;
    let done = match admit_session(&ctx.tokens, &ctx.hooks, HookEvent::Play, HookEvent::PlayDone, call).await {
        Ok(done) => done,
        Err(e @ HookRefusal::Denied { .. }) => return error(StatusCode::FORBIDDEN, "refused_by_hook", e.to_string()),
        Err(e @ HookRefusal::Unreachable { .. }) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "hook_unreachable", e.to_string())
        }
    };
    // Held while the play waits for its stream too: a flood of plays for missing
    // streams costs one address at most `--max-long-requests-per-address`.
    let permit = match ctx.limits.long_requests.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => return too_many(&refused),
    };
    let lease = ctx.relays.join(&ctx, &stream);
    let mut hubs = lease.relay().hub();
    let hub = match tokio::time::timeout(ctx.config.play_wait, hubs.wait_for(Option::is_some)).await {
        Ok(Ok(hub)) => hub.clone(),
        _ => return error(StatusCode::NOT_FOUND, "stream_not_found", format!("{stream} is not being published")),
    };
    let Some(hub) = hub else { return error(StatusCode::NOT_FOUND, "stream_not_found", "not published") };
    let subscription = hub.subscribe();
    ctx.stats.players_flv.fetch_add(1, Ordering::Relaxed);
    let player =
        FlvPlayer { ctx: ctx.clone(), _lease: lease, _permit: permit, _done: done, subscription, header_sent: false };
    let body = futures::stream::unfold(player, |mut p| async move {
        let chunk = p.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), p))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One HTTP-FLV player: the body pulls from it only as fast as the client reads, so a
/// slow client's hub queue skips to the next keyframe (counted).
struct FlvPlayer {
    ctx: Arc<EdgeContext>,
    _lease: Lease,
    _permit: Permit,
    /// Sends `on_play_done` when the response ends.
    _done: DoneNotice,
    subscription: Subscription,
    header_sent: bool,
}

impl FlvPlayer {
    async fn next(&mut self) -> Option<Bytes> {
        if !self.header_sent {
            self.header_sent = true;
            return Some(Bytes::from_static(&flv::FILE_HEADER));
        }
        loop {
            let frame = tokio::select! {
                frame = self.subscription.recv() => frame?,
                _ = self.ctx.shutdown.cancelled() => return None,
            };
            let tag = frame.wire.flv(|| tag(&frame));
            if !tag.is_empty() {
                self.ctx.stats.bytes_out.fetch_add(tag.len() as u64, Ordering::Relaxed);
                return Some(tag);
            }
        }
    }
}

impl Drop for FlvPlayer {
    fn drop(&mut self) {
        self.ctx.stats.players_flv.fetch_sub(1, Ordering::Relaxed);
    }
}

fn tag(frame: &Frame) -> Bytes {
    let tag_type = match frame.kind {
        FrameKind::Audio => 8,
        FrameKind::Video => 9,
        FrameKind::Data => 18,
    };
    let mut out = BytesMut::new();
    flv::write_tag(tag_type, frame.timestamp, &frame.payload, &mut out);
    out.freeze()
}

/// A link's state as `/status` names it and `/metrics` numbers it.
pub(super) fn link_state(state: &LinkState) -> (&'static str, u8) {
    match state {
        LinkState::Connecting => ("connecting", 0),
        LinkState::Live { .. } => ("live", 1),
        LinkState::Backoff { .. } => ("backoff", 2),
    }
}

async fn status(State(ctx): State<Arc<EdgeContext>>) -> Json<serde_json::Value> {
    let s = &ctx.stats;
    let streams: Vec<_> = ctx
        .relays
        .snapshot()
        .into_iter()
        .map(|(stream, players, owner)| json!({"app": stream.app, "name": stream.name, "players": players, "owner": (owner != 0).then_some(owner)}))
        .collect();
    let upstreams: Vec<_> = ctx
        .upstreams
        .all()
        .into_iter()
        .map(|u| {
            let state = u.state();
            let origin = match state {
                LinkState::Live { origin } => Some(origin),
                _ => None,
            };
            json!({
                "addr": u.addr.to_string(), "state": link_state(&state).0, "origin": origin,
                "channels": u.channel_count(),
                "bytes_in": u.bytes_in.load(Ordering::Relaxed), "bytes_out": u.bytes_out.load(Ordering::Relaxed),
            })
        })
        .collect();
    let hls: Vec<_> = ctx
        .hls
        .snapshot()
        .into_iter()
        .map(|s| {
            json!({
                "app": s.stream.app, "name": s.stream.name, "first_msn": s.listed.map(|l| l.0),
                "last_msn": s.listed.map(|l| l.1), "last_part": s.last_part.map(|(m, i)| [m, u64::from(i)]),
                "window_bytes": s.bytes,
            })
        })
        .collect();
    Json(json!({
        "id": ctx.config.id,
        "rtmp": ctx.config.rtmp.to_string(),
        "http": ctx.config.http.to_string(),
        "rtmps": ctx.config.tls.as_ref().and_then(|t| t.rtmps).map(|a| a.to_string()),
        "https": ctx.config.tls.as_ref().and_then(|t| t.https).map(|a| a.to_string()),
        "uptime_s": ctx.started.elapsed().as_secs(),
        "connections": s.connections.load(Ordering::Relaxed),
        "publishers": s.publishers.load(Ordering::Relaxed),
        "players": {"rtmp": s.players_rtmp.load(Ordering::Relaxed), "flv": s.players_flv.load(Ordering::Relaxed)},
        "rtmpt_sessions": ctx.tunnels.len(),
        "relays": streams,
        "load": {
            "cpu_permille": s.load.cpu_permille.load(Ordering::Relaxed),
            "egress_bytes_per_s": s.load.egress_bytes_per_s.load(Ordering::Relaxed),
            "connections_permille": s.load.connections_permille.load(Ordering::Relaxed),
            "agent_weight_percent": s.load.weight(),
        },
        "hls": hls,
        "upstreams": upstreams,
    }))
}

/// Guards `/status` and `/metrics`, which name every stream the edge serves (protected
/// ones too) and its internal links: loopback clients (the real client behind a
/// trusted balancer), or `Authorization: Bearer <--ops-token-file>`.
async fn ops_only(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if peer.ip().is_loopback() {
        return next.run(req).await;
    }
    let Some(expected) = &ctx.config.ops_token else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "/status and /metrics answer loopback clients only on this edge (it has no --ops-token-file)",
        );
    };
    let given = tokens::from_request(req.headers(), None);
    if given.is_some_and(|g| raftcast_raft::rpc::constant_time_eq(g.as_bytes(), expected.as_bytes())) {
        return next.run(req).await;
    }
    let mut refused = error(StatusCode::UNAUTHORIZED, "unauthorized", "an ops token is required");
    refused.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    refused
}

async fn metrics(State(ctx): State<Arc<EdgeContext>>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], ctx.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::www_file;

    #[test]
    fn only_what_the_page_needs_is_served() {
        let ok = |p: &str| www_file(p).map(|(f, _)| f.to_string_lossy().into_owned());
        assert_eq!(ok("").as_deref(), Some("index.html"));
        assert_eq!(ok("app.js").as_deref(), Some("app.js"));
        assert_eq!(
            ok("node_modules/mpegts.js/dist/mpegts.js").as_deref(),
            Some("node_modules/mpegts.js/dist/mpegts.js")
        );
        for refused in [
            ".npmrc",
            ".gitignore",
            "package.json",
            "package-lock.json",
            "test/chat.mjs",
            "node_modules/mpegts.js/package.json",
            "node_modules/mpegts.js/src/index.js",
            "node_modules/x/dist/node_modules/y.js",
            "../secret.js",
            "a//b.js",
            "README.md",
            "cluster-secret",
            "x/.git/config.js",
        ] {
            assert_eq!(ok(refused), None, "{refused} must not be served");
        }
    }
}
