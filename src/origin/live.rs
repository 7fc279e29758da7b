//! Live facts about streams, which only their owner origin knows: whether a publisher
//! is attached (and from which edge), which edges subscribe, and what the publisher
//! delivered. The owner serves its own on [`LIVE_ROUTE`] (cluster secret, JSON); any
//! origin gathers them from every owner concurrently for `GET /streams`, each owner
//! within [`LIVE_FETCH_TIMEOUT`], so one slow or dead owner costs the list its live
//! fields for that owner's streams, never the whole answer.
//!
//! Replicated state (who owns what) is not here: callers merge the two.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::{NodeId, StreamKey};
use serde::{Deserialize, Serialize};

use super::link_server::LinkContext;
pub use super::link_server::LiveStream;
use crate::peer::{self, PeerClient};

/// The internal route on which an origin serves the live facts of its streams.
pub const LIVE_ROUTE: &str = "/internal/streams";

/// How long `GET /streams` waits for each owner's live facts.
pub const LIVE_FETCH_TIMEOUT: Duration = Duration::from_millis(300);

/// Largest answer accepted from a peer (about 2,000 streams with a few subscribers each).
const MAX_LIVE_ANSWER: usize = 4 * 1024 * 1024;

/// What an origin answers on [`LIVE_ROUTE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveReport {
    pub origin: NodeId,
    pub streams: Vec<LiveStream>,
}

/// Live facts of one owner: `None` when it did not answer in time.
pub type OwnerFacts = Option<HashMap<StreamKey, LiveStream>>;

/// Serves this origin's live facts and gathers other origins'. Cheap to clone.
#[derive(Clone)]
pub struct LiveFacts {
    id: NodeId,
    links: LinkContext,
    peers: PeerClient,
}

impl LiveFacts {
    pub fn new(id: NodeId, peers: PeerClient, links: LinkContext) -> Self {
        LiveFacts { id, peers, links }
    }

    /// The link server whose streams these are.
    pub fn links(&self) -> &LinkContext {
        &self.links
    }

    /// This origin's live facts.
    pub fn local(&self) -> LiveReport {
        LiveReport { origin: self.id, streams: self.links.live_streams(std::time::Instant::now()) }
    }

    /// The live facts of each owner in `owners` (id → admin HTTP address, `None` when
    /// the membership names none), fetched concurrently; this origin's own without a
    /// request.
    pub async fn gather(&self, owners: BTreeMap<NodeId, Option<String>>) -> HashMap<NodeId, OwnerFacts> {
        let fetches = owners.into_iter().map(|(owner, http)| async move {
            let report = if owner == self.id {
                Some(self.local())
            } else {
                match http {
                    Some(http) => self.fetch(owner, &http).await,
                    None => None,
                }
            };
            let facts = report.map(|r| r.streams.into_iter().filter_map(|s| Some((s.key()?, s))).collect());
            (owner, facts)
        });
        futures::future::join_all(fetches).await.into_iter().collect()
    }

    async fn fetch(&self, owner: NodeId, http: &str) -> Option<LiveReport> {
        let attempt = async {
            let res = self
                .peers
                .get(self.peers.url(http, LIVE_ROUTE))
                .timeout(LIVE_FETCH_TIMEOUT)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("status {}", res.status()));
            }
            let body = peer::body_within(res, MAX_LIVE_ANSWER).await.map_err(|e| e.to_string())?;
            let report: LiveReport = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            if report.origin != owner {
                return Err(format!("origin {} answered at {http}", report.origin));
            }
            Ok(report)
        };
        // The client's own timeout covers the request; this one covers everything.
        match tokio::time::timeout(LIVE_FETCH_TIMEOUT, attempt).await {
            Ok(Ok(report)) => Some(report),
            Ok(Err(e)) => {
                tracing::debug!(owner, error = %e, "no live stream facts from the owner");
                None
            }
            Err(_) => {
                tracing::debug!(owner, "no live stream facts from the owner within {LIVE_FETCH_TIMEOUT:?}");
                None
            }
        }
    }
}

/// [`LIVE_ROUTE`]: this origin's live facts, for origins presenting the cluster secret.
pub async fn route(State(live): State<LiveFacts>, headers: HeaderMap) -> Response {
    if !live.peers.secret().admits(&headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    Json(live.local()).into_response()
}
