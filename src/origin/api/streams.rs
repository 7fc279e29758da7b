//! `/streams`, `/keys` and `/apps`: stream ownership with the owners' live facts
//! (read-only here) and publish keys.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::{validate_name, KeyScope, StreamClaim};
use raftcast_raft::state::hash_publish_key;
use raftcast_raft::{Command, NodeId, StreamKey};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};

/// `GET /streams`: every claim (linearizable unless `?stale=true`), with the live
/// facts its owner reports: `publishing` (a publisher is attached on the owner under
/// the claim's epoch or a newer one), `subscribers` (one edge name per link
/// subscription), `bitrate_kbps`, `bytes_in`, `frames_in`. Owners are asked
/// concurrently; the live fields of an owner that does not answer in time are `null`.
pub async fn list(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    let claims: Vec<(StreamKey, StreamClaim)> =
        app.state.read(|sm| sm.streams.iter().map(|(k, c)| (k.clone(), c.clone())).collect());
    let owners: BTreeMap<NodeId, Option<String>> = {
        let m = app.raft.metrics().borrow().membership_config.clone();
        claims.iter().map(|(_, c)| (c.owner, m.membership().get_node(&c.owner).map(|n| n.http.clone()))).collect()
    };
    let live = app.live.gather(owners).await;
    let streams: Vec<Value> = claims
        .iter()
        .map(|(key, claim)| {
            let mut out = json!({
                "app": key.app, "name": key.name, "owner": claim.owner, "epoch": claim.epoch,
                "edge": claim.edge, "since": claim.since_ms,
                "publishing": null, "subscribers": null, "bitrate_kbps": null, "bytes_in": null, "frames_in": null,
            });
            if let Some(Some(facts)) = live.get(&claim.owner) {
                let stream = facts.get(key);
                out["publishing"] = json!(stream.and_then(|s| s.epoch).is_some_and(|e| e >= claim.epoch));
                out["subscribers"] = json!(stream.map(|s| s.subscribers.clone()).unwrap_or_default());
                out["bitrate_kbps"] = json!(stream.map_or(0.0, |s| (s.bitrate_kbps * 10.0).round() / 10.0));
                out["bytes_in"] = json!(stream.map_or(0, |s| s.bytes_in));
                out["frames_in"] = json!(stream.map_or(0, |s| s.frames_in));
            }
            out
        })
        .collect();
    Ok(Json(json!({ "streams": streams })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    app: String,
    name: Option<String>,
}

/// Creates a publish key for an app or one stream; the key is shown once, only its
/// hash is replicated.
pub async fn add_key(State(app): State<AppState>, ApiJson(body): ApiJson<KeyBody>) -> Result<Response, ApiError> {
    let scope = match &body.name {
        Some(name) => {
            KeyScope::Stream(StreamKey::new(&body.app, name).map_err(|e| ApiError::bad_request(e.to_string()))?)
        }
        None => {
            validate_name("app", &body.app).map_err(|e| ApiError::bad_request(e.to_string()))?;
            KeyScope::App(body.app.clone())
        }
    };
    let key = format!("rck_{}", &crate::secrets::generate()[..40]);
    let scope_text = scope.to_string();
    app.proposer.write(Command::SetPublishKey { scope, key_hash: hash_publish_key(&key) }).await?;
    Ok((StatusCode::CREATED, Json(json!({ "key": key, "scope": scope_text }))).into_response())
}

pub async fn apps(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    let (required, scopes) = app.state.read(|sm| {
        (
            sm.key_required_apps.iter().cloned().collect::<Vec<_>>(),
            sm.publish_keys.keys().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    });
    Ok(Json(json!({ "publish_key_required": required, "key_scopes": scopes })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBody {
    publish_key_required: bool,
}

pub async fn set_app(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AppBody>,
) -> Result<Json<Value>, ApiError> {
    validate_name("app", &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let command = Command::SetAppPolicy { app: name.clone(), publish_key_required: body.publish_key_required };
    app.proposer.write(command).await?;
    Ok(Json(json!({ "app": name, "publish_key_required": body.publish_key_required })))
}
