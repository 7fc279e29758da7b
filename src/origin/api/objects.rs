//! `/shared-objects/*`: read, write and watch Remote Shared Objects over HTTP.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::value::Value;
use raftcast_raft::{Command, ObjectName, Response as SmResponse};
use serde_json::json;

use crate::origin::shared_objects::object_json;

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};

pub use raftcast_raft::state::MAX_VALUE_BYTES;

/// `name` validated once, at this boundary.
fn check_name(what: &'static str, name: &str) -> Result<ObjectName, ApiError> {
    ObjectName::parse(what, name).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Reads `If-Match: 5` (or the quoted form `"5"`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("If-Match must be an object version (a non-negative integer)"))
}

/// `body` as JSON with `ETag: "<version>"`.
fn with_etag(body: serde_json::Value, version: u64) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn versioned(version: u64) -> Response {
    with_etag(json!({ "version": version }), version)
}

fn answer(resp: SmResponse) -> Result<Response, ApiError> {
    match resp {
        SmResponse::ObjectVersion { version } => Ok(versioned(version)),
        SmResponse::Rejected(r) => Err(r.into()),
        other => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer {other:?}")))
        }
    }
}

pub async fn get(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let name = check_name("object name", &name)?.into_string();
    app.read_point(query.as_deref()).await?;
    let obj = app.state.read(|sm| sm.objects.get(&name).cloned());
    let obj = obj.ok_or_else(|| ApiError::not_found(format!("no shared object {name:?}")))?;
    Ok(with_etag(object_json(&name, &obj), obj.version))
}

pub async fn put_slot(
    State(app): State<AppState>,
    ApiPath((name, slot)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let name = check_name("object name", &name)?.into_string();
    let slot = check_name("slot name", &slot)?.into_string();
    let if_version = if_match(&headers)?;
    let value = Value::from_json(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if value.encoded_len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("a slot value may take at most {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let id = super::request_id(&headers, &format!("PUT {name}/{slot}"))?;
    // Objects created through HTTP are persistent (DESIGN.md).
    let command = Command::SetSlots { object: name, slots: vec![(slot, value)], if_version, persistent: true };
    answer(app.proposer.write_as(id, command).await?)
}

pub async fn delete_slot(
    State(app): State<AppState>,
    ApiPath((name, slot)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = check_name("object name", &name)?.into_string();
    let slot = check_name("slot name", &slot)?.into_string();
    let if_version = if_match(&headers)?;
    let id = super::request_id(&headers, &format!("DELETE {name}/{slot}"))?;
    answer(app.proposer.write_as(id, Command::DeleteSlot { object: name, slot, if_version }).await?)
}

/// `DELETE /shared-objects/{name}`: removes the whole object (optional `If-Match`);
/// `{}` once committed, 404 when it does not exist. Subscribers get a `removed` change.
pub async fn delete_object(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = check_name("object name", &name)?.into_string();
    let if_version = if_match(&headers)?;
    let id = super::request_id(&headers, &format!("DELETE {name}"))?;
    match app.proposer.write_as(id, Command::DeleteObject { object: name, if_version }).await? {
        SmResponse::Stored => Ok(Json(json!({})).into_response()),
        other => answer(other),
    }
}

/// Server-Sent Events for one object: first `state` (the whole object, version 0 when
/// it does not exist yet), then one `change` per committed change in commit order, and
/// `message` per send-message broadcast. If this watcher falls behind or the node
/// installs a snapshot, a fresh `state` follows. See [`crate::origin::shared_objects`].
pub async fn events(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let name = check_name("object name", &name)?.into_string();
    Ok(app.objects.feed(name, None, app.shutdown.clone()))
}

/// `POST /shared-objects/{name}/messages`: a send-message broadcast,
/// `{"handler": "…", "args": […]}`, to every watcher on every origin and edge; not stored.
pub async fn post_message(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let name = check_name("object name", &name)?.into_string();
    crate::origin::shared_objects::check_broadcast(&body).map_err(ApiError::bad_request)?;
    app.objects.broadcast(name, body, false);
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}
