//! `/streams`, `/keys` and `/apps`: stream ownership (read-only here) and publish keys.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::{validate_name, KeyScope};
use raftcast_raft::state::hash_publish_key;
use raftcast_raft::{Command, StreamKey};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};

pub async fn list(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    let streams: Vec<Value> = app.state.read(|sm| {
        sm.streams
            .iter()
            .map(|(k, c)| {
                json!({
                    "app": k.app, "name": k.name, "owner": c.owner, "epoch": c.epoch,
                    "edge": c.edge, "since": c.since_ms,
                })
            })
            .collect()
    });
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
