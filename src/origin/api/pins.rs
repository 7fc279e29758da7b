//! `/pins`: rules that keep the streams of an app whose name matches a pattern on one
//! origin (replicated; the leader applies them when it places a new claim).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use raftcast_raft::{Command, NodeId, PinScope, Response as SmResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};

fn scope(app: &str, pattern: &str) -> Result<PinScope, ApiError> {
    PinScope::new(app, pattern).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn rule_json(scope: &PinScope, origin: NodeId) -> Value {
    json!({ "app": scope.app, "pattern": scope.pattern, "origin": origin })
}

fn unexpected(other: SmResponse) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer {other:?}"))
}

/// `GET /pins`: every rule, ordered by app and pattern.
pub async fn list(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    let pins: Vec<Value> =
        app.state.read(|sm| sm.pins.iter().map(|(scope, origin)| rule_json(scope, *origin)).collect());
    Ok(Json(json!({ "pins": pins })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    origin: NodeId,
}

/// `PUT /pins/{app}/{pattern}` with `{"origin": N}`: creates or replaces a rule. The
/// origin must be a member (voter or learner) as of the latest committed membership; a rule naming an origin that later
/// leaves, or is down, is skipped by the leader (streams are placed by load).
pub async fn put(
    State(app): State<AppState>,
    ApiPath((app_name, pattern)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PinBody>,
) -> Result<Json<Value>, ApiError> {
    let scope = scope(&app_name, &pattern)?;
    // Up to date with the leader first: a node that just joined (or lags) may not know
    // the current members yet.
    app.read_point(None).await?;
    let (voters, learners) = {
        let m = app.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        (membership.voter_ids().collect::<Vec<_>>(), membership.learner_ids().collect::<Vec<_>>())
    };
    if !voters.contains(&body.origin) && !learners.contains(&body.origin) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_origin",
            format!(
                "origin {} is not a member of the cluster (voters {voters:?}, learners {learners:?}); \
                 a pin must name one of them",
                body.origin
            ),
        ));
    }
    let id = super::request_id(&headers, &format!("PUT /pins/{scope}"))?;
    match app.proposer.write_as(id, Command::SetPin { scope: scope.clone(), origin: body.origin }).await? {
        SmResponse::Stored => Ok(Json(rule_json(&scope, body.origin))),
        SmResponse::Rejected(r) => Err(r.into()),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /pins/{app}/{pattern}`: removes the rule with exactly this scope (404 when
/// there is none).
pub async fn delete(
    State(app): State<AppState>,
    ApiPath((app_name, pattern)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let scope = scope(&app_name, &pattern)?;
    let id = super::request_id(&headers, &format!("DELETE /pins/{scope}"))?;
    match app.proposer.write_as(id, Command::DeletePin { scope: scope.clone() }).await? {
        SmResponse::Stored => Ok(Json(json!({ "app": scope.app, "pattern": scope.pattern, "deleted": true }))),
        SmResponse::Rejected(raftcast_raft::Rejection::NotFound) => {
            Err(ApiError::not_found(format!("no pin rule for {scope}")))
        }
        SmResponse::Rejected(r) => Err(r.into()),
        other => Err(unexpected(other)),
    }
}
