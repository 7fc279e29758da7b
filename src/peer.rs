//! The one HTTP client for requests between members of a cluster: an origin to
//! another (forwarded writes, relayed broadcasts, live facts, watched objects) and an
//! edge to the origins (control requests, shared-object feeds and writes, the token
//! keys). Every request carries the cluster secret; connections are pooled once per
//! process; timeouts are each request's own (a shared-object feed has none, a control
//! attempt has one second).

use std::time::Duration;

use raftcast_raft::rpc::{ClusterSecret, SECRET_HEADER};
use reqwest::{IntoUrl, RequestBuilder};

/// How long connecting to a peer may take: members are on one network, and a peer
/// that does not accept within this is treated as down (the caller tries another).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Requests to other members of the cluster, with the cluster secret. Cheap to clone
/// (clones share the pool).
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: ClusterSecret,
}

impl PeerClient {
    pub fn new(secret: ClusterSecret) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        PeerClient { http, secret }
    }

    /// `GET url` with the cluster secret.
    pub fn get(&self, url: impl IntoUrl) -> RequestBuilder {
        self.http.get(url).header(SECRET_HEADER, self.secret.as_str())
    }

    /// `POST url` with the cluster secret.
    pub fn post(&self, url: impl IntoUrl) -> RequestBuilder {
        self.http.post(url).header(SECRET_HEADER, self.secret.as_str())
    }

    /// The cluster secret (for what checks it, not for requests).
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }
}
