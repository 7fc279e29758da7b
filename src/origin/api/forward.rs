//! `/raft/forward`: requests forwarded by another origin or sent by an edge.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use raftcast_raft::{rpc, Forward};

use crate::origin::proposer::forward::FORWARDED_HEADER;
use crate::origin::proposer::Proposer;

/// How long an origin waits for the leader's answer to a request an edge sent it: below
/// the edge's own 1 s per attempt, so the edge hears back and tries elsewhere if need be.
const EDGE_HOP_TIMEOUT: Duration = Duration::from_millis(800);

/// Executes the request. An edge's request that only the leader can execute is passed
/// on to the leader once (an edge that cannot reach the leader, or lists only some
/// origins, still gets its claims and moves through any origin); a request another
/// origin forwarded is never passed on. Mounted behind [`rpc::require_secret`] and a
/// body limit of [`MAX_FORWARD_BODY`](crate::origin::proposer::forward::MAX_FORWARD_BODY).
pub async fn route(State(proposer): State<Proposer>, headers: HeaderMap, body: Bytes) -> Response {
    match rpc::admit::<Forward>(proposer.peers().secret(), &headers, &body) {
        Ok(req) => {
            let reply = if headers.contains_key(FORWARDED_HEADER) {
                proposer.execute_here(&req).await
            } else {
                proposer.execute_or_pass_on(&req, EDGE_HOP_TIMEOUT).await
            };
            rpc::reply(&reply)
        }
        Err(refused) => refused.into_response(),
    }
}
