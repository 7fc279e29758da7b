//! `/recordings` and `/recording-rules`: which streams are recorded (replicated rules
//! per app and per stream), the catalog of recordings, a recording read as one FLV
//! file (`GET /recordings/{id}.flv`) and deletion (`docs/recording.md`).
//!
//! Ids from the path are parsed into numbers before anything else: no path segment
//! ever reaches the file system.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::KeyScope;
use raftcast_raft::recording::{Piece, Recording, Retention};
use raftcast_raft::{Command, Response as SmResponse, StreamKey};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::origin::recording::read::recording_stream;

fn unexpected(other: SmResponse) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer {other:?}"))
}

/// A recording id from the path: decimal digits only.
fn recording_id(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().ok().filter(|_| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| {
        ApiError::bad_request(format!("a recording id is a number (got {:?})", text.escape_debug().to_string()))
    })
}

fn piece_json(p: &Piece) -> Value {
    json!({
        "epoch": p.epoch,
        "owner": p.owner,
        "opened_ms": p.opened_ms,
        "holders": p.holders,
        "finished": p.finished.is_some(),
        "bytes": p.finished.map(|f| f.bytes),
        "frames": p.finished.map(|f| f.frames),
        "first_ts": p.finished.map(|f| f.first_ts),
        "last_ts": p.finished.map(|f| f.last_ts),
        "dropped": p.finished.map(|f| f.dropped),
        "closed_ms": p.finished.map(|f| f.closed_ms),
    })
}

fn recording_json(id: u64, r: &Recording, with_pieces: bool) -> Value {
    let finished = r.pieces.iter().all(|p| p.finished.is_some());
    let bytes: u64 = r.pieces.iter().filter_map(|p| p.finished).map(|f| f.bytes).sum();
    let first = r.pieces.iter().filter_map(|p| p.finished).map(|f| f.first_ts).min();
    let last = r.pieces.iter().filter_map(|p| p.finished).map(|f| f.last_ts).max();
    let replicated = r.pieces.iter().all(|p| p.holders.len() >= crate::origin::recording::COPIES);
    let mut v = json!({
        "id": id,
        "app": r.stream.app,
        "name": r.stream.name,
        "edge": r.edge,
        "started_ms": r.started_ms,
        "pieces": r.pieces.len(),
        "finished": finished,
        "replicated": replicated,
        "bytes": bytes,
        "duration_ms": first.zip(last).map(|(a, b)| b.saturating_sub(a)),
    });
    if with_pieces {
        v["pieces"] = r.pieces.iter().map(piece_json).collect();
    }
    v
}

/// `GET /recordings`: every recording, oldest first, and this origin's counters.
pub async fn list(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    let recordings: Vec<Value> =
        app.state.read(|sm| sm.recordings.catalog.iter().map(|(id, r)| recording_json(*id, r, false)).collect());
    Ok(Json(json!({ "recordings": recordings })))
}

/// `GET /recordings/{id}`: one recording and its pieces; `GET /recordings/{id}.flv`:
/// the whole recording as one FLV file, each frame once, from this origin's pieces
/// and other origins' copies.
pub async fn get(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (id, flv) = match id.strip_suffix(".flv") {
        Some(id) => (recording_id(id)?, true),
        None => (recording_id(&id)?, false),
    };
    app.read_point(query.as_deref()).await?;
    let recording = app.state.read(|sm| sm.recordings.catalog.get(&id).cloned());
    let recording = recording.ok_or_else(|| ApiError::not_found(format!("no recording {id}")))?;
    if !flv {
        return Ok(Json(recording_json(id, &recording, true)).into_response());
    }
    let chunks = recording_stream(app.recorder.clone(), recording.pieces);
    let disposition = format!("inline; filename=\"recording-{id}.flv\"");
    Ok((
        [(header::CONTENT_TYPE, "video/x-flv".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        Body::from_stream(ReceiverStream::new(chunks)),
    )
        .into_response())
}

/// `DELETE /recordings/{id}`: removes it from the catalog; every origin deletes its
/// piece files within [`crate::origin::recording::ORPHAN_AGE`].
pub async fn delete(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let id = recording_id(&id)?;
    let request = super::request_id(&headers, &format!("DELETE /recordings/{id}"))?;
    match app.proposer.write_as(request, Command::DeleteRecording { recording: id }).await? {
        SmResponse::Stored => Ok(Json(json!({ "id": id, "deleted": true }))),
        SmResponse::Rejected(raftcast_raft::Rejection::NotFound) => {
            Err(ApiError::not_found(format!("no recording {id}")))
        }
        SmResponse::Rejected(r) => Err(r.into()),
        other => Err(unexpected(other)),
    }
}

fn rule_json(scope: &KeyScope, record: bool) -> Value {
    match scope {
        KeyScope::App(app) => json!({ "app": app, "name": null, "record": record }),
        KeyScope::Stream(s) => json!({ "app": s.app, "name": s.name, "record": record }),
    }
}

/// `GET /recording-rules`: every rule.
pub async fn rules(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    let rules: Vec<Value> = app.state.read(|sm| sm.recordings.rules.iter().map(|(s, r)| rule_json(s, *r)).collect());
    Ok(Json(json!({ "rules": rules })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    record: bool,
}

fn app_scope(app: &str) -> Result<KeyScope, ApiError> {
    raftcast_raft::command::validate_name("app", app).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(KeyScope::App(app.to_owned()))
}

fn stream_scope(app: &str, name: &str) -> Result<KeyScope, ApiError> {
    StreamKey::new(app, name).map(KeyScope::Stream).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn set_rule(
    app: &AppState,
    headers: &HeaderMap,
    scope: KeyScope,
    record: Option<bool>,
) -> Result<Json<Value>, ApiError> {
    let method = if record.is_some() { "PUT" } else { "DELETE" };
    let request = super::request_id(headers, &format!("{method} /recording-rules/{scope}"))?;
    match app.proposer.write_as(request, Command::SetRecording { scope: scope.clone(), record }).await? {
        SmResponse::Stored => Ok(Json(match record {
            Some(record) => rule_json(&scope, record),
            None => json!({ "rule": scope.to_string(), "deleted": true }),
        })),
        SmResponse::Rejected(raftcast_raft::Rejection::NotFound) => {
            Err(ApiError::not_found(format!("no recording rule for {scope}")))
        }
        SmResponse::Rejected(r) => Err(r.into()),
        other => Err(unexpected(other)),
    }
}

/// `PUT /recording-rules/{app}` with `{"record": true|false}`: record the app's streams.
pub async fn put_app(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Json<Value>, ApiError> {
    set_rule(&app, &headers, app_scope(&name)?, Some(body.record)).await
}

/// `DELETE /recording-rules/{app}`.
pub async fn delete_app(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    set_rule(&app, &headers, app_scope(&name)?, None).await
}

/// `PUT /recording-rules/{app}/{name}` with `{"record": true|false}`: one stream's rule,
/// which beats its app's (`false` excepts it from an app that is recorded).
pub async fn put_stream(
    State(app): State<AppState>,
    ApiPath((app_name, name)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Json<Value>, ApiError> {
    set_rule(&app, &headers, stream_scope(&app_name, &name)?, Some(body.record)).await
}

/// `DELETE /recording-rules/{app}/{name}`.
pub async fn delete_stream(
    State(app): State<AppState>,
    ApiPath((app_name, name)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    set_rule(&app, &headers, stream_scope(&app_name, &name)?, None).await
}

fn retention_json(r: &Retention) -> Value {
    json!({ "max_age_secs": r.max_age_ms.map(|ms| ms / 1000), "max_bytes": r.max_bytes })
}

/// `GET /recording-retention`: how long and how much finished recordings are kept.
pub async fn retention(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    Ok(Json(app.state.read(|sm| retention_json(&sm.recordings.retention))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    #[serde(default)]
    max_age_secs: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// `PUT /recording-retention` with `{"max_age_secs"?: N, "max_bytes"?: N}`: exactly these
/// bounds (one left out: no bound); the leader deletes the oldest finished recordings
/// beyond them.
pub async fn set_retention(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RetentionBody>,
) -> Result<Json<Value>, ApiError> {
    let max_age_ms = match body.max_age_secs {
        Some(secs) => Some(secs.checked_mul(1000).ok_or_else(|| ApiError::bad_request("max_age_secs is too large"))?),
        None => None,
    };
    let retention = Retention { max_age_ms, max_bytes: body.max_bytes };
    let request = super::request_id(&headers, "PUT /recording-retention")?;
    match app.proposer.write_as(request, Command::SetRecordingRetention { retention }).await? {
        SmResponse::Stored => Ok(Json(retention_json(&retention))),
        SmResponse::Rejected(r) => Err(r.into()),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_ids_are_numbers_and_nothing_else() {
        assert_eq!(recording_id("42").unwrap(), 42);
        for bad in ["", "-1", "+1", "1.5", "..", "../1", "1/2", "%2e%2e", "99999999999999999999999", " 1"] {
            assert!(recording_id(bad).is_err(), "{bad:?}");
        }
    }
}
