//! The origin's admin HTTP API (DESIGN.md "Admin HTTP API"): routes, bearer-token
//! authentication, and the JSON error contract.
//!
//! Handlers read replicated state through [`StateHandle`] and change it only through
//! the [`Proposer`]; they never touch storage or Raft internals directly.

mod cluster;
mod drain;
mod error;
mod extract;
pub(crate) mod forward;
mod objects;
mod pins;
mod recordings;
mod streams;
mod tokens;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use raftcast_raft::rpc::constant_time_eq;
use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, RequestId};
use raftcast_storage::StateHandle;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use super::live::LiveFacts;
use super::metrics::{Metrics, Scrape};
use super::proposer::Proposer;

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 256 * 1024;

/// What every admin handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub id: NodeId,
    pub http: std::net::SocketAddr,
    pub raft: Raft,
    pub proposer: Proposer,
    pub state: StateHandle,
    pub metrics: Arc<Metrics>,
    /// This origin's live view of its streams, and other origins' on request.
    pub live: LiveFacts,
    /// Shared-object feeds and broadcasts.
    pub objects: crate::origin::shared_objects::ObjectHub,
    pub admin_token: Option<Arc<str>>,
    /// Cancelled when the process shuts down; ends long-lived responses (SSE).
    pub shutdown: CancellationToken,
    /// This origin's recorder: piece files, the joined read of a recording.
    pub recorder: crate::origin::recording::Recorder,
    /// This origin's load (streams owned, ingest, subscribed edges, CPU), for
    /// `/cluster/status`.
    pub load: crate::origin::load_probe::LoadProbe,
}

impl AppState {
    /// Waits until local state is linearizable, unless the client asked for a stale
    /// read with `?stale=true`.
    pub async fn read_point(&self, query: Option<&str>) -> Result<(), ApiError> {
        if stale_requested(query) {
            return Ok(());
        }
        self.proposer.read_barrier().await.map_err(ApiError::from)
    }
}

/// The request id of a write: derived from the client's `Idempotency-Key` header when
/// it sends one (so its retries are applied once), random otherwise. The key is scoped
/// by `scope` (method and path), so the same key on two routes names two writes.
pub fn request_id(headers: &HeaderMap, scope: &str) -> Result<RequestId, ApiError> {
    let Some(key) = headers.get("idempotency-key") else { return Ok(RequestId::random()) };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| ApiError::bad_request("Idempotency-Key must be 1 to 200 visible ASCII characters"))?;
    let digest =
        Sha256::new().chain_update(scope.as_bytes()).chain_update([0u8]).chain_update(key.as_bytes()).finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    Ok(RequestId(u128::from_be_bytes(id)))
}

fn stale_requested(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| matches!(kv, "stale" | "stale=true" | "stale=1")))
}

/// All admin routes, with authentication and a body limit.
pub fn router(app: AppState) -> Router {
    let admin = Router::new()
        .route("/cluster/status", get(cluster::status))
        .route("/cluster/init", post(cluster::init))
        .route("/cluster/learners", post(cluster::add_learner))
        .route("/cluster/voters", put(cluster::set_voters))
        .route("/cluster/nodes/{id}", delete(cluster::remove_node))
        .route("/cluster/nodes/{id}/drain", get(drain::show).put(drain::start).delete(drain::stop))
        .route("/streams", get(streams::list))
        .route("/streams/{app}/{name}/move", post(streams::move_stream))
        .route("/keys", post(streams::add_key))
        .route("/apps", get(streams::apps))
        .route("/apps/{app}", put(streams::set_app))
        .route("/apps/{app}/hooks", put(streams::set_hooks).delete(streams::delete_hooks))
        .route("/pins", get(pins::list))
        .route("/pins/{app}/{pattern}", put(pins::put).delete(pins::delete))
        .route("/shared-objects/{name}", get(objects::get).delete(objects::delete_object))
        .route("/tokens", post(tokens::issue))
        .route("/tokens/rotate", post(tokens::rotate))
        .route("/tokens/retire", post(tokens::retire))
        .route("/tokens/stream", post(tokens::issue_stream))
        .route("/shared-objects/{name}/slots/{slot}", put(objects::put_slot).delete(objects::delete_slot))
        .route("/shared-objects/{name}/events", get(objects::events))
        .route("/shared-objects/{name}/messages", post(objects::post_message))
        .route("/recordings", get(recordings::list))
        .route("/recordings/{id}", get(recordings::get).delete(recordings::delete))
        .route("/recording-rules", get(recordings::rules))
        .route("/recording-retention", get(recordings::retention).put(recordings::set_retention))
        .route("/recording-rules/{app}", put(recordings::put_app).delete(recordings::delete_app))
        .route("/recording-rules/{app}/{name}", put(recordings::put_stream).delete(recordings::delete_stream))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY));
    let open = Router::new().route("/health", get(health)).route("/ready", get(ready));
    admin.merge(open).with_state(app)
}

/// Answers unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Answers known routes called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

async fn authenticate(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.admin_token {
        if !bearer_matches(req.headers(), token) {
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin bearer token")
                    .into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Why this node cannot serve at all: its Raft core stopped on a fatal error (a
/// storage failure, a panic in the core). openraft publishes it in its metrics at once,
/// so `/health` and `/ready` turn 503 as soon as the core stops.
fn raft_stopped(app: &AppState) -> Option<Response> {
    let fatal = match &app.raft.metrics().borrow().running_state {
        Ok(()) => return None,
        Err(fatal) => fatal.to_string(),
    };
    let body = serde_json::json!({
        "status": "raft_stopped",
        "error": { "code": "raft_stopped", "message": format!("the Raft core has stopped: {fatal}") },
    });
    Some((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response())
}

async fn health(State(app): State<AppState>) -> Response {
    if let Some(stopped) = raft_stopped(&app) {
        return stopped;
    }
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn ready(State(app): State<AppState>) -> Response {
    if let Some(stopped) = raft_stopped(&app) {
        return stopped;
    }
    let leader = app.raft.metrics().borrow().current_leader;
    match leader {
        Some(leader) => axum::Json(serde_json::json!({ "status": "ready", "leader_id": leader })).into_response(),
        None => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", "this node knows no leader").into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let raft = app.raft.metrics().borrow().clone();
    let mut owned: std::collections::BTreeMap<NodeId, usize> =
        raft.membership_config.membership().nodes().map(|(id, _)| (*id, 0)).collect();
    app.state.read(|sm| {
        for claim in sm.streams.values() {
            *owned.entry(claim.owner).or_default() += 1;
        }
    });
    let (publishing, subscriptions) = app.live.links().counts();
    let scrape = Scrape {
        owned,
        publishing,
        subscriptions,
        watches: app.proposer.stream_watches(),
        claim_feeds: app.live.links().feeds.count(),
        pending_write_bytes: app.proposer.admission().pending_bytes(),
    };
    let body = app.metrics.render(&raft, &scrape);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_scoped_by_route() {
        let mut h = HeaderMap::new();
        assert_ne!(request_id(&h, "a").unwrap(), request_id(&h, "a").unwrap(), "no key: random ids");
        h.insert("idempotency-key", "k1".parse().unwrap());
        assert_eq!(request_id(&h, "PUT /x").unwrap(), request_id(&h, "PUT /x").unwrap());
        assert_ne!(request_id(&h, "PUT /x").unwrap(), request_id(&h, "PUT /y").unwrap());
        h.insert("idempotency-key", "".parse().unwrap());
        assert!(request_id(&h, "PUT /x").is_err());
    }

    #[test]
    fn stale_reads_are_opt_in() {
        assert!(!stale_requested(None));
        assert!(!stale_requested(Some("stale=false")));
        assert!(stale_requested(Some("x=1&stale=true")));
        assert!(stale_requested(Some("stale")));
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "tok"));
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(bearer_matches(&h, "tok"));
        assert!(!bearer_matches(&h, "toke"));
        h.insert(header::AUTHORIZATION, "Basic tok".parse().unwrap());
        assert!(!bearer_matches(&h, "tok"));
    }
}
