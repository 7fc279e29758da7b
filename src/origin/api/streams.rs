//! `/streams`, `/keys` and `/apps`: stream ownership with the owners' live facts
//! (read-only here), publish keys, and each app's access rules.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::{validate_name, KeyScope, StreamClaim};
use raftcast_raft::state::{hash_publish_key, AppTokens};
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

/// One app's access rules, as `/apps` shows them.
fn app_rules(sm: &raftcast_raft::state::StateMachine, app: &str) -> Value {
    let tokens = sm.app_tokens.get(app).copied().unwrap_or_default();
    json!({
        "publish_key_required": sm.key_required_apps.contains(app),
        "play_token_required": tokens.play,
        "publish_token_required": tokens.publish,
    })
}

/// `GET /apps`: every app with a rule (`apps`), plus the older flat lists.
pub async fn apps(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    Ok(Json(app.state.read(|sm| {
        let names: std::collections::BTreeSet<&String> =
            sm.key_required_apps.iter().chain(sm.app_tokens.keys()).collect();
        let rules: serde_json::Map<String, Value> = names.into_iter().map(|n| (n.clone(), app_rules(sm, n))).collect();
        json!({
            "apps": rules,
            "publish_key_required": sm.key_required_apps.iter().collect::<Vec<_>>(),
            "key_scopes": sm.publish_keys.keys().map(|s| s.to_string()).collect::<Vec<_>>(),
        })
    })))
}

/// `PUT /apps/{app}` body: the rules to change (the others stay).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBody {
    publish_key_required: Option<bool>,
    play_token_required: Option<bool>,
    publish_token_required: Option<bool>,
}

/// `PUT /apps/{app}`: changes the app's rules; answers all of them.
pub async fn set_app(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AppBody>,
) -> Result<Json<Value>, ApiError> {
    validate_name("app", &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if body.publish_key_required.is_none()
        && body.play_token_required.is_none()
        && body.publish_token_required.is_none()
    {
        return Err(ApiError::bad_request(
            "give at least one of publish_key_required, play_token_required, publish_token_required",
        ));
    }
    if let Some(required) = body.publish_key_required {
        app.proposer.write(Command::SetAppPolicy { app: name.clone(), publish_key_required: required }).await?;
    }
    if body.play_token_required.is_some() || body.publish_token_required.is_some() {
        // The rule not named keeps its current value (two admins changing different
        // rules of one app at once may race; the last write wins).
        app.read_point(None).await?;
        let current = app.state.read(|sm| sm.app_tokens.get(&name).copied().unwrap_or_default());
        let tokens = AppTokens {
            play: body.play_token_required.unwrap_or(current.play),
            publish: body.publish_token_required.unwrap_or(current.publish),
        };
        app.proposer.write(Command::SetAppTokens { app: name.clone(), tokens }).await?;
    }
    app.read_point(None).await?;
    let mut rules = app.state.read(|sm| app_rules(sm, &name));
    rules["app"] = json!(name);
    Ok(Json(rules))
}
