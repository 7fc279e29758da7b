//! The client side of Raft RPC: openraft's `RaftNetworkFactory` over HTTP (reqwest).
//!
//! Connection failures map to `Unreachable` (openraft backs off), timeouts follow the
//! `RPCOption` openraft passes with each call, and errors the remote Raft returned come
//! back as `RemoteError`.
//!
//! Every answered RPC is recorded in [`Reachability`]: when each peer last answered, which
//! is how the leader tells a live origin from a dead or paused one (its heartbeats reach
//! every follower every 50 ms).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rpc::{self, ClusterSecret, SECRET_HEADER};
use crate::{NodeAddr, NodeId, TypeConfig};

/// How long to wait for a TCP connection to a peer before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// When each peer last answered a Raft RPC (of any type) sent from this node. Shared
/// by every [`PeerClient`] of one [`HttpNetwork`]; cheap to clone.
///
/// Only answers count: a refused connection, a timeout, an HTTP error status or a body
/// that does not decode leaves the peer's time alone. An error the remote Raft returned
/// does count, since the peer's process answered it.
#[derive(Clone, Debug, Default)]
pub struct Reachability {
    last_ok: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Reachability {
    /// When `node` last answered, if it ever did since this process started.
    pub fn last_ok(&self, node: NodeId) -> Option<Instant> {
        self.lock().get(&node).copied()
    }

    /// Records that `node` answered at `at` (never moves a node's time backwards).
    pub fn record(&self, node: NodeId, at: Instant) {
        let mut last = self.lock();
        let entry = last.entry(node).or_insert(at);
        *entry = (*entry).max(at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        // A panic elsewhere cannot leave a map of instants inconsistent.
        self.last_ok.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When this node last accepted an AppendEntries (heartbeats included) from a leader:
/// a follower's evidence that the cluster is keeping its log current. Recorded by the
/// `/raft/append` route; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct LeaderContact {
    last: Arc<Mutex<Option<Instant>>>,
}

impl LeaderContact {
    /// When a leader's AppendEntries was last accepted, if ever.
    pub fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an accepted AppendEntries at `at`.
    pub fn record(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(last.map_or(at, |l| l.max(at)));
    }
}

/// Creates one [`PeerClient`] per replication target; they share one connection pool
/// and one [`Reachability`].
#[derive(Clone)]
pub struct HttpNetwork {
    id: NodeId,
    client: reqwest::Client,
    /// `http`, or `https` when `client` speaks the cluster's mutual TLS.
    scheme: &'static str,
    secret: ClusterSecret,
    reachability: Reachability,
}

impl HttpNetwork {
    /// Raft RPC over plain HTTP.
    pub fn new(id: NodeId, secret: ClusterSecret) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self::with_client(id, secret, client, "http"))
    }

    /// Raft RPC through `client` to `{scheme}://{peer}/raft/…` (the origin passes its
    /// peer client, which speaks HTTPS with the cluster's TLS).
    pub fn with_client(id: NodeId, secret: ClusterSecret, client: reqwest::Client, scheme: &'static str) -> Self {
        HttpNetwork { id, client, scheme, secret, reachability: Reachability::default() }
    }

    /// When each peer last answered this node's Raft RPCs.
    pub fn reachability(&self) -> Reachability {
        self.reachability.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient { net: self.clone(), target, addr: node.http.clone() }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    net: HttpNetwork,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let res = self
            .net
            .client
            .post(format!("{}://{}{}", self.net.scheme, self.addr, path))
            .header(SECRET_HEADER, self.net.secret.as_str())
            .timeout(timeout)
            .body(rpc::encode(req))
            .send()
            .await;
        let res = match res {
            Ok(res) => res,
            Err(e) if e.is_timeout() => {
                return Err(RPCError::Timeout(Timeout { action, id: self.net.id, target: self.target, timeout }))
            }
            Err(e) if e.is_connect() => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let status = res.status();
        let body = match res.bytes().await {
            Ok(body) => body,
            Err(e) if e.is_timeout() => {
                return Err(RPCError::Timeout(Timeout { action, id: self.net.id, target: self.target, timeout }))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        if !status.is_success() {
            let msg = String::from_utf8_lossy(&body);
            let err = std::io::Error::other(format!("{} answered {status}: {msg}", self.addr));
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        let decoded = rpc::decode::<Result<Resp, RaftError<NodeId, E>>>(&body);
        if decoded.is_ok() {
            self.net.reachability.record(self.target, Instant::now());
        }
        match decoded {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::AppendEntries, "/raft/append", &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, "/raft/snapshot", &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::Vote, "/raft/vote", &req, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_keeps_the_latest_answer_per_node() {
        let reach = Reachability::default();
        let t0 = Instant::now();
        assert_eq!(reach.last_ok(2), None);
        reach.record(2, t0 + Duration::from_millis(50));
        // An answer that completes late but was recorded out of order never rewinds.
        reach.record(2, t0);
        assert_eq!(reach.last_ok(2), Some(t0 + Duration::from_millis(50)));
        // Clones share the record.
        let clone = reach.clone();
        clone.record(3, t0);
        assert_eq!(reach.last_ok(3), Some(t0));
    }
}
