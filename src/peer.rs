//! The one HTTP client for requests between members of a cluster: an origin to
//! another (forwarded writes, relayed broadcasts, live facts, watched objects) and an
//! edge to the origins (control requests, shared-object feeds and writes, the token
//! keys). Every request carries the cluster secret; connections are pooled once per
//! process; timeouts are each request's own (a shared-object feed has none, a control
//! attempt has one second). With the cluster's mutual TLS ([`crate::tls::peer`]) every
//! request goes over HTTPS presenting this node's certificate; callers build URLs with
//! [`PeerClient::url`], which picks the scheme.

use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::rpc::{ClusterSecret, SECRET_HEADER};
use reqwest::{IntoUrl, RequestBuilder};

use crate::tls::peer::PeerTls;

/// How long connecting to a peer may take: members are on one network, and a peer
/// that does not accept within this is treated as down (the caller tries another).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Requests to other members of the cluster, with the cluster secret. Cheap to clone
/// (clones share the pool).
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: ClusterSecret,
    tls: Option<Arc<PeerTls>>,
}

impl PeerClient {
    /// A client over plain HTTP, or over mutual TLS with `tls`.
    pub fn new(secret: ClusterSecret, tls: Option<Arc<PeerTls>>) -> Self {
        let http = http_client(tls.as_deref());
        PeerClient { http, secret, tls }
    }

    /// `{scheme}://{addr}{path}`: `https` with the cluster's TLS, `http` without.
    pub fn url(&self, addr: impl std::fmt::Display, path: &str) -> String {
        format!("{}://{addr}{path}", scheme(self.tls.is_some()))
    }

    /// The cluster TLS this client speaks, if any (the media link speaks the same).
    pub fn tls(&self) -> Option<&Arc<PeerTls>> {
        self.tls.as_ref()
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

/// The URL scheme between members: `https` with the cluster's TLS.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The HTTP client every request between members goes through (Raft RPC included):
/// pooled, no Nagle, a short connect timeout; with `tls`, HTTPS only, trusting the
/// cluster CA alone and presenting this node's certificate.
pub fn http_client(tls: Option<&PeerTls>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30));
    with_tls(builder, tls).build().expect("an HTTP client with a rustls configuration always builds")
}

/// `builder` speaking only HTTPS with the cluster's TLS when `tls` is given (this
/// node's certificate, the cluster CA as the only root); unchanged without.
pub fn with_tls(builder: reqwest::ClientBuilder, tls: Option<&PeerTls>) -> reqwest::ClientBuilder {
    match tls {
        Some(tls) => builder.use_preconfigured_tls(tls.client_config()).https_only(true),
        None => builder,
    }
}
