//! `GET /vod/{id}.flv` (and `HEAD`): a whole VOD file from the cache, or one byte
//! range of it (`docs/vod.md`, "Edges: HTTP").
//!
//! The router cannot match `{id}.flv` inside one path segment, so the route is
//! `/vod/{file}` and the suffix is taken off here. When the app `vod` requires play
//! tokens ([`super::authorize_play`]), the request carries one (`?token=` or
//! `Authorization: Bearer`), checked before anything is held or fetched and refused as
//! live HTTP-FLV refuses (401, 403, 503; counted as `flv`). Each response holds a
//! long-request permit (`--max-long-requests-per-address`, 429 over it) from before
//! the cache is asked until its body is sent: a download can last as long as a play.
//! The body is read from the file with positional reads on the blocking pool,
//! [`READ_CHUNK`] at a time, one chunk ahead of the client at most.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::cache::{VodError, VodFile};
use super::range::{self, Ranged};
use crate::edge::tokens::{self, Protocol};
use crate::edge::EdgeContext;
use crate::http_server::{json_error as error, too_many};
use crate::limits::Permit;
use crate::vod::VodId;

/// Bytes read from the file per body chunk.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// `Retry-After` of a 503: the origins may be back, or the fetches fewer, by then.
const RETRY_AFTER_SECS: &str = "5";

/// The one place VOD errors become HTTP answers.
pub(crate) fn refusal(e: &VodError) -> Response {
    match e {
        VodError::Off => error(StatusCode::NOT_FOUND, "vod_off", e.to_string()),
        VodError::NotFound => error(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        VodError::Unfinished => error(StatusCode::CONFLICT, "unfinished", e.to_string()),
        VodError::Unavailable(_) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string());
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            response
        }
    }
}

/// What every `/vod/` request does once its id is parsed and its token checked: take a
/// long-request permit (held while the file is fetched, too: a flood of misses costs one
/// address at most `--max-long-requests-per-address` requests in progress) and open the
/// file from the cache. Any failure is the answer.
pub(crate) async fn admit(ctx: &EdgeContext, peer: SocketAddr, id: &VodId) -> Result<(Permit, VodFile), Response> {
    if ctx.shutdown.is_cancelled() {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the edge is shutting down"));
    }
    let permit = ctx.limits.long_requests.try_acquire(peer.ip()).map_err(|refused| too_many(&refused))?;
    let vod = super::open(ctx.vod.as_ref(), id).await.map_err(|e| refusal(&e))?;
    Ok((permit, vod))
}

/// The route's handler: `/vod/{file}` where `file` is `{id}.flv`.
pub(crate) async fn file(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path(file): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(id) = file.strip_suffix(".flv") else {
        return error(StatusCode::NOT_FOUND, "not_found", "VOD files are /vod/{id}.flv");
    };
    let id = match VodId::parse(id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    // Before the permit and the cache: a refused client holds nothing and fetches nothing.
    let token = tokens::from_request(&headers, query.as_deref());
    if let Err(e) = super::authorize_play(&ctx, token.as_deref(), &id).await {
        return tokens::refused(ctx.stats.auth_refused.count(Protocol::Flv, e));
    }
    let (permit, vod) = match admit(&ctx, peer, &id).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    // A validator we never sent cannot match: an If-Range means the whole file.
    let range = if headers.contains_key(header::IF_RANGE) {
        Ranged::Whole
    } else {
        range::parse(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), vod.len)
    };
    let (status, start, end) = match range {
        Ranged::Whole => (StatusCode::OK, 0, vod.len),
        Ranged::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        Ranged::Unsatisfiable => {
            let mut response =
                error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", "the range is past the end");
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", vod.len)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return response;
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", end - 1, vod.len));
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        tracing::debug!(vod.id = %vod.id, start, end, "VOD file sent");
        Body::from_stream(body(Sending { ctx: ctx.clone(), vod, at: start, end, _permit: permit }))
    };
    response.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One response's body being sent: bytes `at..end` of `vod` still to go.
struct Sending {
    ctx: Arc<EdgeContext>,
    vod: VodFile,
    at: u64,
    end: u64,
    /// The long-request permit, released when the body is done or dropped.
    _permit: Permit,
}

/// The chunks of a [`Sending`]; an error (a read that failed, the edge shutting
/// down) ends the body early, which the client sees as a cut response.
fn body(sending: Sending) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::unfold(Some(sending), |sending| async move {
        let mut s = sending?;
        if s.at >= s.end {
            return None;
        }
        let n = (s.end - s.at).min(READ_CHUNK as u64) as usize;
        let read = tokio::select! {
            read = s.vod.read_at(s.at, n) => read,
            _ = s.ctx.shutdown.cancelled() => Err(std::io::Error::other("the edge is shutting down")),
        };
        match read {
            Ok(chunk) => {
                s.at += chunk.len() as u64;
                s.ctx.stats.bytes_out.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Some((Ok(chunk), Some(s)))
            }
            Err(e) => {
                tracing::info!(vod.id = %s.vod.id, at = s.at, error = %e, "a VOD response was cut off");
                Some((Err(e), None))
            }
        }
    })
}
