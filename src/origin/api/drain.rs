//! `/cluster/nodes/{id}/drain`: draining an origin before it is stopped or upgraded.
//! The flag is replicated (`Command::SetDraining`); the leader acts on it (placement
//! skips the origin, the failover supervisor moves its streams away). Nothing here
//! moves a stream.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use raftcast_raft::{Command, NodeId, Response as SmResponse};
use serde_json::{json, Value};

use super::extract::ApiPath;
use super::{ApiError, AppState};

/// What the drain routes answer: whether `id` is draining and how many streams it
/// owns, from this node's applied state.
fn drain_view(app: &AppState, id: NodeId) -> Value {
    app.state.read(|sm| {
        let owned = sm.streams.values().filter(|c| c.owner == id).count();
        json!({ "id": id, "draining": sm.draining.contains(&id), "streams_owned": owned })
    })
}

async fn set_draining(app: &AppState, headers: &HeaderMap, id: NodeId, draining: bool) -> Result<Value, ApiError> {
    let method = if draining { "PUT" } else { "DELETE" };
    let request = super::request_id(headers, &format!("{method} /cluster/nodes/{id}/drain"))?;
    match app.proposer.write_as(request, Command::SetDraining { origin: id, draining }).await? {
        SmResponse::Stored => {}
        SmResponse::Rejected(r) => return Err(r.into()),
        other => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("unexpected answer {other:?}"),
            ))
        }
    }
    // The write applied on the leader; read it back here.
    app.read_point(None).await?;
    Ok(drain_view(app, id))
}

/// `GET /cluster/nodes/{id}/drain`: `{"id", "draining", "streams_owned"}`
/// (linearizable unless `?stale=true`), what `ctl drain --wait` follows.
pub async fn show(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    app.read_point(query.as_deref()).await?;
    Ok(Json(drain_view(&app, id)))
}

/// `PUT /cluster/nodes/{id}/drain`: starts draining origin `id`, a member (voter or
/// learner) as of the latest committed membership (404 `unknown_origin` otherwise).
/// Answers at once, like [`show`]; the streams move over the next moments.
pub async fn start(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    // Up to date with the leader first: a node that lags may not know the current
    // members yet.
    app.read_point(None).await?;
    let (voters, learners) = {
        let m = app.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        (membership.voter_ids().collect::<Vec<_>>(), membership.learner_ids().collect::<Vec<_>>())
    };
    if !voters.contains(&id) && !learners.contains(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_origin",
            format!("origin {id} is not a member of the cluster (voters {voters:?}, learners {learners:?})"),
        ));
    }
    Ok(Json(set_draining(&app, &headers, id, true).await?))
}

/// `DELETE /cluster/nodes/{id}/drain`: origin `id` takes new streams again. Streams
/// that left it do not come back by themselves. Any id is accepted (undraining an
/// origin that is not draining, or no longer a member, changes nothing).
pub async fn stop(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(set_draining(&app, &headers, id, false).await?))
}
