//! Shared objects over the edge's HTTP port, for web pages and bots: the same routes
//! as the origins' admin API (`/shared-objects/…`, DESIGN.md) served from the edge's
//! local copy, plus `POST …/messages` for broadcasts. An SSE watcher is a subscriber
//! like an RTMP client: it keeps the object's feed open (and a temporary object alive).
//!
//! Writes, deletes and broadcasts need a write token for the object
//! (`Authorization: Bearer T` or `?token=T`): 401 `unauthorized` without a valid one,
//! 403 `forbidden` when it covers other objects. Reads and watches are open (see
//! `docs/shared-objects.md`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::state::MAX_VALUE_BYTES;
use raftcast_raft::token::{Claims, Rights};
use raftcast_raft::value::Value;
use raftcast_raft::{ObjectName, Rejection};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::shared_objects::{Snapshot, Subscription, TooManyObjects, Update, WriteError};
use super::tokens::{self, AuthError};
use super::EdgeContext;
use crate::http_server::json_error as error;
use crate::origin::shared_objects::{change_json, check_broadcast};

/// How long a read waits for the object's first state from the cluster (an election
/// takes about a second; a busy machine more).
const FIRST_STATE_WAIT: Duration = Duration::from_secs(10);
/// Largest request body (a JSON slot value or a broadcast).
const MAX_BODY: usize = 256 * 1024;

/// A refused request, answered as a JSON error.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

/// `name` validated once, at this boundary.
fn check(what: &'static str, name: &str) -> Result<ObjectName, Refusal> {
    ObjectName::parse(what, name).map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

/// The claims of the request's token when it may write `name`.
async fn authorize(
    ctx: &EdgeContext,
    headers: &HeaderMap,
    query: Option<&str>,
    name: &ObjectName,
) -> Result<Claims, Response> {
    let token = tokens::from_request(headers, query);
    ctx.objects.authorize(token.as_deref(), name, Rights::Write).await.map_err(|e| denied(&e))
}

/// A slot write or delete that passed its checks: both names parsed, the token
/// authorized for the object, `If-Match` read.
struct SlotWrite {
    name: ObjectName,
    slot: ObjectName,
    claims: Claims,
    if_version: Option<u64>,
}

/// The checks `PUT` and `DELETE` of a slot share, in the order they answer.
async fn slot_write(
    ctx: &EdgeContext,
    name: &str,
    slot: &str,
    query: &Option<String>,
    headers: &HeaderMap,
) -> Result<SlotWrite, Response> {
    let name = check("object name", name).map_err(IntoResponse::into_response)?;
    let slot = check("slot name", slot).map_err(IntoResponse::into_response)?;
    let claims = authorize(ctx, headers, query.as_deref(), &name).await?;
    let if_version = if_match(headers).map_err(IntoResponse::into_response)?;
    Ok(SlotWrite { name, slot, claims, if_version })
}

/// 401 for a missing or invalid token, 403 for one that covers something else.
fn denied(e: &AuthError) -> Response {
    match e {
        AuthError::Missing | AuthError::Invalid(_) => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        AuthError::Forbidden { .. } => error(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
        AuthError::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

fn too_many(e: TooManyObjects) -> Response {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "too_many_objects", e.to_string());
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn overloaded(message: String) -> Response {
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "overloaded", message);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn snapshot_json(name: &str, s: &Snapshot) -> serde_json::Value {
    let slots: serde_json::Map<_, _> = s.slots.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    json!({ "name": name, "version": s.version, "persistent": s.persistent, "slots": slots })
}

/// The first whole state of a new subscription.
async fn first_state(sub: &mut Subscription) -> Option<Snapshot> {
    if let Some(s) = sub.initial.take() {
        return Some(s);
    }
    let wait = async {
        loop {
            match sub.updates.recv().await {
                Ok(u) => {
                    if let Update::Sync(s) = &*u {
                        return Some(s.clone());
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    if let Some(s) = sub.snapshot() {
                        return Some(s);
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(FIRST_STATE_WAIT, wait).await.ok().flatten()
}

fn unavailable() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no origin answered for this object in time")
}

/// `GET /shared-objects/{name}`: the whole object (version 0 when it does not exist).
pub async fn get(
    State(ctx): State<Arc<EdgeContext>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let name = match check("object name", &name) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let token = tokens::from_request(&headers, query.as_deref());
    if let Err(e) = ctx.objects.authorize_read_fetched(token.as_deref(), &name).await {
        return denied(&e);
    }
    let mut sub = match ctx.objects.subscribe(&name) {
        Ok(sub) => sub,
        Err(e) => return too_many(e),
    };
    let name = name.as_str();
    match first_state(&mut sub).await {
        Some(s) => Json(snapshot_json(name, &s)).into_response(),
        None => unavailable(),
    }
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    v.to_str().ok().map(|s| s.trim().trim_matches('"')).and_then(|s| s.parse().ok()).map(Some).ok_or_else(|| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "If-Match must be an object version (a non-negative integer)".to_owned(),
        )
    })
}

fn written(result: Result<u64, WriteError>) -> Response {
    match result {
        Ok(version) => {
            let mut resp = Json(json!({ "version": version })).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            resp
        }
        Err(WriteError::Rejected(r)) => {
            let message = r.to_string();
            match r {
                Rejection::VersionMismatch { current } => {
                    let body = json!({ "error": { "code": "version_mismatch", "message": message, "current_version": current } });
                    (StatusCode::PRECONDITION_FAILED, Json(body)).into_response()
                }
                Rejection::NotFound => error(StatusCode::NOT_FOUND, "not_found", message),
                Rejection::LimitExceeded { .. } => error(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", message),
                Rejection::QuotaExceeded { .. } => error(StatusCode::FORBIDDEN, "quota_exceeded", message),
                _ => error(StatusCode::CONFLICT, "rejected", message),
            }
        }
        Err(WriteError::Unavailable(message)) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        Err(WriteError::Overloaded(message)) => overloaded(message),
        Err(WriteError::Denied(e)) => denied(&e),
    }
}

/// `PUT /shared-objects/{name}/slots/{slot}`: sets a slot (JSON value; `If-Match:
/// <version>` makes it conditional). An object a client creates is temporary (removed
/// once nobody watches it) unless its token says persistent.
pub async fn put_slot(
    State(ctx): State<Arc<EdgeContext>>,
    Path((name, slot)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let SlotWrite { name, slot, claims, if_version } = match slot_write(&ctx, &name, &slot, &query, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if body.len() > MAX_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("a body may take at most {MAX_BODY} bytes"),
        );
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not JSON: {e}")),
    };
    let value = match Value::from_json(&json) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    if value.encoded_len() > MAX_VALUE_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("a slot value may take at most {MAX_VALUE_BYTES} bytes"),
        );
    }
    written(ctx.objects.set(&claims, &name, &slot, value, if_version).await)
}

/// `DELETE /shared-objects/{name}/slots/{slot}`.
pub async fn delete_slot(
    State(ctx): State<Arc<EdgeContext>>,
    Path((name, slot)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match slot_write(&ctx, &name, &slot, &query, &headers).await {
        Ok(SlotWrite { name, slot, claims, if_version }) => {
            written(ctx.objects.delete(&claims, &name, &slot, if_version).await)
        }
        Err(r) => r,
    }
}

/// `POST /shared-objects/{name}/messages`: a broadcast `{"handler", "args"}` to every
/// subscriber on every edge; not stored.
pub async fn post_message(
    State(ctx): State<Arc<EdgeContext>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = match check("object name", &name) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = authorize(&ctx, &headers, query.as_deref(), &name).await {
        return r;
    }
    if body.len() > MAX_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("a body may take at most {MAX_BODY} bytes"));
    }
    let data: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not JSON: {e}")),
    };
    if let Err(e) = check_broadcast(&data) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e);
    }
    match ctx.objects.send_message(&name, &data).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({}))).into_response(),
        Err(WriteError::Overloaded(message)) => overloaded(message),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// `GET /shared-objects/{name}/events`: Server-Sent Events — `state` (the whole
/// object), then `change` per committed change in commit order and `message` per
/// broadcast; a fresh `state` after a resynchronization.
pub async fn events(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let name = match check("object name", &name) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let token = tokens::from_request(&headers, query.as_deref());
    if let Err(e) = ctx.objects.authorize_read_fetched(token.as_deref(), &name).await {
        return denied(&e);
    }
    // `--max-long-requests-per-address`: held by the stream for as long as it lasts.
    let permit = match ctx.limits.long_requests.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => return crate::http_server::too_many(&refused),
    };
    // The response starts at once; when this edge does not know the object yet, its
    // `state` event follows as soon as the feed delivers it.
    let mut sub = match ctx.objects.subscribe(&name) {
        Ok(sub) => sub,
        Err(e) => return too_many(e),
    };
    let name = name.into_string();
    let state = |s: &Snapshot, name: &str| {
        SseEvent::default().event("state").id(s.version.to_string()).data(snapshot_json(name, s).to_string())
    };
    let first = sub.initial.take().map(|s| Ok::<_, Infallible>(state(&s, &name)));
    let rest = futures::stream::unfold((sub, name, permit), move |(mut sub, name, permit)| async move {
        loop {
            let event = match sub.updates.recv().await {
                Ok(u) => match &*u {
                    Update::Sync(s) => state(s, &name),
                    Update::Change { version, change } => SseEvent::default()
                        .event("change")
                        .id(version.to_string())
                        .data(change_json(*version, change).to_string()),
                    Update::Message(data) => SseEvent::default().event("message").data(data.to_string()),
                },
                Err(RecvError::Lagged(_)) => match sub.snapshot() {
                    Some(s) => state(&s, &name),
                    None => continue,
                },
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok::<_, Infallible>(event), (sub, name, permit)));
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::iter(first), rest);
    let shutdown = ctx.shutdown.clone();
    let stream = futures::StreamExt::take_until(stream, async move { shutdown.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftcast_raft::token::TokenError;

    #[test]
    fn refusals_map_to_their_statuses() {
        let overloaded = written(Err(WriteError::Overloaded("behind".into())));
        assert_eq!(overloaded.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(overloaded.headers()[header::RETRY_AFTER], "1");
        let quota = written(Err(WriteError::Rejected(Rejection::QuotaExceeded { what: "x".into() })));
        assert_eq!(quota.status(), StatusCode::FORBIDDEN);
        assert_eq!(denied(&AuthError::Missing).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(denied(&AuthError::Invalid(TokenError::Expired)).status(), StatusCode::UNAUTHORIZED);
        let forbidden = AuthError::Forbidden { object: "a".into(), rights: "writes" };
        assert_eq!(denied(&forbidden).status(), StatusCode::FORBIDDEN);
        assert_eq!(too_many(TooManyObjects(2)).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
