//! `/cluster/*`: status, initialization and membership changes.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use raftcast_raft::{NodeAddr, NodeId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};

/// `GET /cluster/status`: this node's own view (no read barrier): its Raft state,
/// the membership, the origins draining in its applied state, and its own load as
/// placement measures it (`load`: streams it owns, their ingest kbit/s and subscribed
/// edges, its CPU in cores; see docs/failover.md, "Placement").
pub async fn status(State(app): State<AppState>) -> Json<Value> {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let nodes: BTreeMap<String, Value> =
        membership.nodes().map(|(id, n)| (id.to_string(), json!({ "http": n.http, "media": n.media }))).collect();
    let draining: Vec<NodeId> = app.state.read(|sm| sm.draining.iter().copied().collect());
    Json(json!({
        "id": m.id,
        "state": format!("{:?}", m.state),
        "leader_id": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index.unwrap_or(0),
        "applied_index": m.last_applied.map_or(0, |l| l.index),
        "voters": voters,
        "learners": learners,
        "nodes": nodes,
        "draining": draining,
        "load": app.load.local(),
    }))
}

/// A node's addresses as the API accepts them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeBody {
    pub http: String,
    pub media: String,
}

/// Checks a `host:port` address.
fn check_addr(what: &str, addr: &str) -> Result<(), ApiError> {
    let ok = addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) && !host.contains(char::is_whitespace)
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{what} must be host:port, got {addr:?}")))
    }
}

impl NodeBody {
    fn into_addr(self, id: NodeId) -> Result<NodeAddr, ApiError> {
        if id == 0 {
            return Err(ApiError::bad_request("node ids start at 1"));
        }
        check_addr("http", &self.http)?;
        check_addr("media", &self.media)?;
        Ok(NodeAddr { http: self.http, media: self.media })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitBody {
    nodes: BTreeMap<NodeId, NodeBody>,
}

pub async fn init(State(app): State<AppState>, ApiJson(body): ApiJson<InitBody>) -> Result<Json<Value>, ApiError> {
    if body.nodes.is_empty() {
        return Err(ApiError::bad_request("nodes must not be empty"));
    }
    let nodes: BTreeMap<NodeId, NodeAddr> =
        body.nodes.into_iter().map(|(id, n)| Ok((id, n.into_addr(id)?))).collect::<Result<_, ApiError>>()?;
    let Some(me) = nodes.get(&app.id) else {
        return Err(ApiError::bad_request(format!("the initial members must include this node ({})", app.id)));
    };
    if !app.http.ip().is_unspecified() && me.http != app.http.to_string() {
        return Err(ApiError::bad_request(format!("node {} is listening on {}, not {}", app.id, app.http, me.http)));
    }
    match app.raft.initialize(nodes.clone()).await {
        Ok(()) => Ok(Json(json!({ "initialized": true }))),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            let current: BTreeMap<NodeId, NodeAddr> = {
                let m = app.raft.metrics().borrow().membership_config.clone();
                m.membership().nodes().map(|(id, n)| (*id, n.clone())).collect()
            };
            if current == nodes {
                Ok(Json(json!({ "initialized": false, "message": "already initialized with these members" })))
            } else {
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_initialized",
                    "the cluster is already initialized with other members; change membership instead",
                ))
            }
        }
        Err(RaftError::APIError(InitializeError::NotInMembers(e))) => Err(ApiError::bad_request(e.to_string())),
        Err(RaftError::Fatal(e)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("raft stopped: {e}")))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerBody {
    id: NodeId,
    http: String,
    media: String,
}

pub async fn add_learner(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<LearnerBody>,
) -> Result<Json<Value>, ApiError> {
    let addr = NodeBody { http: body.http, media: body.media }.into_addr(body.id)?;
    app.proposer.add_learner(body.id, addr).await?;
    Ok(Json(json!({ "added": body.id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VotersBody {
    ids: BTreeSet<NodeId>,
}

pub async fn set_voters(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<VotersBody>,
) -> Result<Json<Value>, ApiError> {
    app.proposer.set_voters(body.ids.clone()).await?;
    Ok(Json(json!({ "voters": body.ids })))
}

pub async fn remove_node(State(app): State<AppState>, ApiPath(id): ApiPath<NodeId>) -> Result<Json<Value>, ApiError> {
    app.proposer.remove_node(id).await?;
    Ok(Json(json!({ "removed": id })))
}
