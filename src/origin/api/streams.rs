//! `/streams`, `/keys` and `/apps`: stream ownership with the owners' live facts
//! (read-only here), publish keys, and each app's access rules.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::{validate_name, KeyScope, StreamClaim};
use raftcast_raft::command::{Rejection, Response as SmResponse};
use raftcast_raft::state::{hash_publish_key, AppHooks, AppTokens};
use raftcast_raft::{Command, Forward, ForwardReply, NodeId, StreamKey};
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The origin to move to; none: the least loaded live origin other than the owner.
    to: Option<NodeId>,
}

/// `POST /streams/{app}/{name}/move` with `{"to": N}` (or `{}`): a planned move of a
/// live stream to origin N (or the least loaded other live origin). The publisher's
/// edge re-attaches to the new owner and resends what the new owner lacks; players'
/// edges follow the claim. Answers `{app, name, from, to, epoch}`; 404 for a stream
/// nobody publishes, 409 when its claim changed meanwhile (retry) or `to` is draining,
/// 503 when `to` is not a live voter (or, without `to`, every other one is draining).
pub async fn move_stream(
    State(app): State<AppState>,
    ApiPath((app_name, name)): ApiPath<(String, String)>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<MoveBody>,
) -> Result<Json<Value>, ApiError> {
    let stream = StreamKey::new(&app_name, &name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_stream", e.to_string()))?;
    app.read_point(None).await?;
    let Some(claim) = app.state.read(|sm| sm.streams.get(&stream).cloned()) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_live", format!("nobody publishes {stream}")));
    };
    let id = super::request_id(&headers, &format!("POST /streams/{stream}/move"))?;
    let req = Forward::Move { id, stream: stream.clone(), expected_epoch: claim.epoch, to: body.to };
    match app.proposer.submit(req).await? {
        ForwardReply::Written(SmResponse::Claimed(moved)) => Ok(Json(json!({
            "app": stream.app, "name": stream.name, "from": claim.owner, "to": moved.owner, "epoch": moved.epoch,
        }))),
        ForwardReply::Written(SmResponse::Rejected(Rejection::StaleEpoch { current })) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "claim_changed",
            format!(
                "the claim of {stream} changed while moving it (epoch {} now); retry",
                current.map_or("none".into(), |e| e.to_string())
            ),
        )),
        other => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer {other:?}")))
        }
    }
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
        "hooks": sm.app_hooks.get(app),
    })
}

/// Longest webhook URL accepted.
pub const MAX_HOOK_URL: usize = 512;
/// Default, least and most time one webhook call may take, in ms.
pub const DEFAULT_HOOK_TIMEOUT_MS: u32 = 2000;
const HOOK_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 50..=30_000;

/// `PUT /apps/{app}/hooks` body: the whole hook configuration of the app.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksBody {
    on_connect: Option<String>,
    on_publish: Option<String>,
    on_publish_done: Option<String>,
    on_play: Option<String>,
    on_play_done: Option<String>,
    timeout_ms: Option<u32>,
    #[serde(default)]
    fail_open: bool,
}

/// The hooks `body` asks for, checked: `http://` URLs with a host, within
/// [`MAX_HOOK_URL`], at least one of them.
pub fn hooks_of(body: HooksBody) -> Result<AppHooks, ApiError> {
    let url = |what: &str, u: Option<String>| -> Result<Option<String>, ApiError> {
        let Some(u) = u else { return Ok(None) };
        let parsed = reqwest::Url::parse(&u).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
        // Edges call hooks in clear text (they hold no web PKI roots): keep hooks on a
        // network you trust, or behind a local TLS-originating proxy.
        if parsed.scheme() != "http" || parsed.host_str().is_none() || u.len() > MAX_HOOK_URL {
            return Err(ApiError::bad_request(format!(
                "{what} must be an http:// URL of at most {MAX_HOOK_URL} bytes"
            )));
        }
        Ok(Some(u))
    };
    let timeout_ms = body.timeout_ms.unwrap_or(DEFAULT_HOOK_TIMEOUT_MS);
    if !HOOK_TIMEOUT_MS.contains(&timeout_ms) {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be {} to {}",
            HOOK_TIMEOUT_MS.start(),
            HOOK_TIMEOUT_MS.end()
        )));
    }
    let hooks = AppHooks {
        on_connect: url("on_connect", body.on_connect)?,
        on_publish: url("on_publish", body.on_publish)?,
        on_publish_done: url("on_publish_done", body.on_publish_done)?,
        on_play: url("on_play", body.on_play)?,
        on_play_done: url("on_play_done", body.on_play_done)?,
        timeout_ms,
        fail_open: body.fail_open,
    };
    if [&hooks.on_connect, &hooks.on_publish, &hooks.on_publish_done, &hooks.on_play, &hooks.on_play_done]
        .iter()
        .all(|u| u.is_none())
    {
        return Err(ApiError::bad_request("give at least one hook URL (or DELETE the hooks)"));
    }
    Ok(hooks)
}

/// `PUT /apps/{app}/hooks`: replaces the app's webhooks; answers the app's rules.
pub async fn set_hooks(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<HooksBody>,
) -> Result<Json<Value>, ApiError> {
    validate_name("app", &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hooks = hooks_of(body)?;
    app.proposer.write(Command::SetAppHooks { app: name.clone(), hooks: Some(hooks) }).await?;
    app.read_point(None).await?;
    let mut rules = app.state.read(|sm| app_rules(sm, &name));
    rules["app"] = json!(name);
    Ok(Json(rules))
}

/// `DELETE /apps/{app}/hooks`: the app calls no webhooks any more.
pub async fn delete_hooks(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    validate_name("app", &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.proposer.write(Command::SetAppHooks { app: name.clone(), hooks: None }).await?;
    Ok(Json(json!({ "app": name, "hooks": null })))
}

/// `GET /apps`: every app with a rule (`apps`), plus the older flat lists.
pub async fn apps(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    Ok(Json(app.state.read(|sm| {
        let names: std::collections::BTreeSet<&String> =
            sm.key_required_apps.iter().chain(sm.app_tokens.keys()).chain(sm.app_hooks.keys()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_configurations_are_checked() {
        let body = |v: Value| serde_json::from_value::<HooksBody>(v).unwrap();
        let h = hooks_of(body(json!({"on_publish": "http://127.0.0.1:9000/hook"}))).unwrap();
        assert_eq!(
            (h.on_publish.as_deref(), h.timeout_ms, h.fail_open),
            (Some("http://127.0.0.1:9000/hook"), 2000, false)
        );
        for bad in [
            json!({}),
            json!({"on_play": "ftp://x/y"}),
            json!({"on_play": "https://x/y"}),
            json!({"on_play": "not a url"}),
            json!({"on_play": format!("http://x/{}", "a".repeat(MAX_HOOK_URL))}),
            json!({"on_play": "http://x/", "timeout_ms": 10}),
        ] {
            assert!(hooks_of(body(bad.clone())).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<HooksBody>(json!({"on_everything": "http://x/"})).is_err());
    }
}
