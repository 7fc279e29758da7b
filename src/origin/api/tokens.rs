//! `/tokens`: issues signed shared-object tokens and play/publish tokens (see
//! `raftcast_raft::token`), rotates the signing key and retires old ones. The keys live in the replicated state; this module never
//! returns or logs one.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::validate_name;
use raftcast_raft::token::{
    self, Claims, Quota, Rights, StreamClaims, StreamRight, TokenKey, DEFAULT_QUOTA, DEFAULT_TTL_SECS, MAX_SUBJECT_LEN,
    MAX_TTL_SECS,
};
use raftcast_raft::{Command, ObjectName};
use serde::Deserialize;
use serde_json::json;

use super::extract::ApiJson;
use super::{ApiError, AppState};

/// `rights` in a token request.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RightsArg {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaArg {
    objects: u32,
    slots: u32,
    bytes: u64,
}

/// `POST /tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    object: Option<String>,
    object_prefix: Option<String>,
    rights: RightsArg,
    ttl_secs: Option<u64>,
    subject: Option<String>,
    quota: Option<QuotaArg>,
    #[serde(default)]
    persistent: bool,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The claims `body` asks for, checked; `key_id` is filled in by the caller.
fn claims_of(body: IssueBody, now: u64) -> Result<Claims, ApiError> {
    let (object, object_prefix) = match (body.object, body.object_prefix) {
        (Some(o), None) => {
            (Some(ObjectName::parse("object", &o).map_err(|e| ApiError::bad_request(e.to_string()))?), None)
        }
        (None, Some(p)) => {
            // A prefix is a name fragment: the same characters, and never empty (an
            // empty prefix would cover every object; issue an admin token instead).
            ObjectName::parse("object_prefix", &p).map_err(|e| ApiError::bad_request(e.to_string()))?;
            (None, Some(p))
        }
        _ => return Err(ApiError::bad_request("give exactly one of \"object\" and \"object_prefix\"")),
    };
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!("ttl_secs must be 1 to {MAX_TTL_SECS}")));
    }
    let subject = match body.subject {
        Some(s) if s.is_empty() || s.len() > MAX_SUBJECT_LEN || s.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(format!(
                "subject must be 1 to {MAX_SUBJECT_LEN} bytes without control characters"
            )))
        }
        Some(s) => s,
        // Without a subject, the token is its own quota holder.
        None => format!("t-{:016x}", rand::random::<u64>()),
    };
    let quota = body.quota.map_or(DEFAULT_QUOTA, |q| Quota { objects: q.objects, slots: q.slots, bytes: q.bytes });
    Ok(Claims {
        key_id: 0,
        object: object.map(ObjectName::into_string),
        object_prefix,
        rights: match body.rights {
            RightsArg::Read => Rights::Read,
            RightsArg::Write => Rights::Write,
        },
        expires_at: now + ttl,
        subject,
        quota,
        persistent: body.persistent,
    })
}

/// `POST /tokens/stream` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamBody {
    app: String,
    name: Option<String>,
    name_prefix: Option<String>,
    right: StreamRight,
    ttl_secs: Option<u64>,
}

/// The stream claims `body` asks for, checked; `key_id` is filled in by the caller.
fn stream_claims_of(body: StreamBody, now: u64) -> Result<StreamClaims, ApiError> {
    let bad = |e: raftcast_raft::command::NameError| ApiError::bad_request(e.to_string());
    validate_name("app", &body.app).map_err(bad)?;
    match (&body.name, &body.name_prefix) {
        (Some(n), None) => validate_name("name", n).map_err(bad)?,
        // A prefix is a name fragment (empty: every stream of the app).
        (None, Some(p)) if p.is_empty() => {}
        (None, Some(p)) => validate_name("name_prefix", p).map_err(bad)?,
        _ => return Err(ApiError::bad_request("give exactly one of \"name\" and \"name_prefix\"")),
    }
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!("ttl_secs must be 1 to {MAX_TTL_SECS}")));
    }
    Ok(StreamClaims {
        key_id: 0,
        app: body.app,
        name: body.name,
        name_prefix: body.name_prefix,
        right: body.right,
        expires_at: now + ttl,
    })
}

/// The newest signing key, creating the first one if there is none.
async fn signing_key(app: &AppState) -> Result<(u32, TokenKey), ApiError> {
    if let Some(k) = newest_key(app).await? {
        return Ok(k);
    }
    app.proposer.write(Command::AddTokenKey { key: TokenKey::random(), only_if_none: true }).await?;
    newest_key(app).await?.ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no signing key after creating one")
    })
}

/// `POST /tokens/stream`: `{"app", "name"|"name_prefix", "right": "play"|"publish",
/// "ttl_secs"?}` → 201 `{"token", "expires_at", "key_id"}`: a token clients pass as
/// `?token=…` on a stream URL. The first issue creates the signing key.
pub async fn issue_stream(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<StreamBody>,
) -> Result<Response, ApiError> {
    let mut claims = stream_claims_of(body, now_secs())?;
    let (key_id, key) = signing_key(&app).await?;
    claims.key_id = key_id;
    let body = json!({ "token": token::sign_stream(&claims, &key), "expires_at": claims.expires_at, "key_id": key_id });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /tokens/retire`: every key but the newest stops verifying; tokens signed with
/// them are refused from then on (edges within their key cache's age). → `{"key_ids"}`.
pub async fn retire(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.proposer.write(Command::RetireTokenKeys).await?;
    app.read_point(None).await?;
    let ids: Vec<u32> = app.state.read(|sm| sm.token_keys.keys().copied().collect());
    Ok(Json(json!({ "key_ids": ids })).into_response())
}

/// The newest signing key, as linearizably read.
async fn newest_key(app: &AppState) -> Result<Option<(u32, TokenKey)>, ApiError> {
    app.read_point(None).await?;
    Ok(app.state.read(|sm| sm.token_keys.iter().next_back().map(|(id, k)| (*id, k.clone()))))
}

/// `POST /tokens`: `{"object"|"object_prefix", "rights": "read"|"write", "ttl_secs"?,
/// "subject"?, "quota"?: {"objects","slots","bytes"}, "persistent"?}` → 201
/// `{"token", "expires_at", "subject", "key_id"}`. The first issue creates the signing key.
pub async fn issue(State(app): State<AppState>, ApiJson(body): ApiJson<IssueBody>) -> Result<Response, ApiError> {
    let mut claims = claims_of(body, now_secs())?;
    let (key_id, key) = signing_key(&app).await?;
    claims.key_id = key_id;
    let token = token::sign(&claims, &key);
    let body = json!({
        "token": token,
        "expires_at": claims.expires_at,
        "subject": claims.subject,
        "key_id": key_id,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /tokens/rotate`: a new signing key signs from now on; the previous one still
/// verifies until the next rotation drops it. → `{"key_id", "key_ids"}`.
pub async fn rotate(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.proposer.write(Command::AddTokenKey { key: TokenKey::random(), only_if_none: false }).await?;
    app.read_point(None).await?;
    let ids: Vec<u32> = app.state.read(|sm| sm.token_keys.keys().copied().collect());
    Ok(Json(json!({ "key_id": ids.last(), "key_ids": ids })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> IssueBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn token_requests_are_checked() {
        let c = claims_of(body(json!({"object": "chat", "rights": "write"})), 100).unwrap();
        assert_eq!(
            (c.object.as_deref(), c.rights, c.expires_at),
            (Some("chat"), Rights::Write, 100 + DEFAULT_TTL_SECS)
        );
        assert_eq!(c.quota, DEFAULT_QUOTA);
        assert!(c.subject.starts_with("t-"));
        let c = claims_of(
            body(json!({"object_prefix": "live/", "rights": "read", "ttl_secs": 5, "subject": "bob",
                        "quota": {"objects": 1, "slots": 2, "bytes": 3}})),
            0,
        )
        .unwrap();
        assert_eq!((c.object_prefix.as_deref(), c.subject.as_str()), (Some("live/"), "bob"));
        assert_eq!(c.quota, Quota { objects: 1, slots: 2, bytes: 3 });
        for bad in [
            json!({"rights": "write"}),
            json!({"object": "a", "object_prefix": "b", "rights": "write"}),
            json!({"object": "a", "rights": "write", "ttl_secs": 0}),
            json!({"object": "a", "rights": "write", "ttl_secs": MAX_TTL_SECS + 1}),
            json!({"object": "..", "rights": "write"}),
            json!({"object": "a", "rights": "write", "subject": ""}),
        ] {
            assert!(claims_of(body(bad.clone()), 0).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<IssueBody>(json!({"object": "a", "rights": "admin"})).is_err());
    }

    #[test]
    fn stream_token_requests_are_checked() {
        let stream = |v: serde_json::Value| serde_json::from_value::<StreamBody>(v).unwrap();
        let c = stream_claims_of(stream(json!({"app": "live", "name": "cam", "right": "play"})), 100).unwrap();
        assert_eq!(
            (c.name.as_deref(), c.right, c.expires_at),
            (Some("cam"), StreamRight::Play, 100 + DEFAULT_TTL_SECS)
        );
        let c =
            stream_claims_of(stream(json!({"app": "live", "name_prefix": "", "right": "publish", "ttl_secs": 9})), 0)
                .unwrap();
        assert_eq!((c.name_prefix.as_deref(), c.right, c.expires_at), (Some(""), StreamRight::Publish, 9));
        for bad in [
            json!({"app": "live", "right": "play"}),
            json!({"app": "live", "name": "a", "name_prefix": "a", "right": "play"}),
            json!({"app": "li/ve", "name": "a", "right": "play"}),
            json!({"app": "live", "name": "../a", "right": "play"}),
            json!({"app": "live", "name": "a", "right": "play", "ttl_secs": 0}),
        ] {
            assert!(stream_claims_of(stream(bad.clone()), 0).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<StreamBody>(json!({"app": "live", "name": "a", "right": "both"})).is_err());
    }
}
