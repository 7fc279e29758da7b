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

/// Why a peer's answer was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The answer declared, or sent, more than the caller's bound.
    #[error("answer larger than {max} bytes")]
    TooLarge { max: usize },
    /// The body did not arrive (reset, timeout).
    #[error("answer not read: {0}")]
    Read(#[from] reqwest::Error),
}

/// The body of `res`, read chunk by chunk and refused as soon as it passes `max`
/// bytes, whether or not it declared its length: a member's answer is parsed only
/// once whole, and no answer, chunked or not, holds more than `max` here.
pub async fn body_within(mut res: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let declared = res.content_length();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { max });
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The URL scheme between members: `https` with the cluster's TLS.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The HTTP client every request between members goes through (Raft RPC has its own,
/// [`raft_connector`]):
/// pooled, no Nagle, a short connect timeout; with `tls`, HTTPS only, trusting the
/// cluster CA alone and presenting this node's certificate.
pub fn http_client(tls: Option<&PeerTls>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30));
    with_tls(builder, tls).build().expect("an HTTP client with a rustls configuration always builds")
}

/// How an origin's Raft RPC client ([`raftcast_raft::network::PeerClient`]) connects
/// to another origin's HTTP address: plain TCP, or with `tls` the same HTTPS as
/// [`http_client`] (this node's certificate, the cluster CA as the only root, the
/// peer's IP address as the name its certificate must carry, HTTP/1.1 by ALPN).
pub fn raft_connector(tls: Option<&PeerTls>) -> raftcast_raft::network::Connector {
    use raftcast_raft::network::PeerStream;
    let Some(tls) = tls else { return raftcast_raft::network::tcp_connector() };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config()));
    Arc::new(move |addr: String| {
        let connector = connector.clone();
        Box::pin(async move {
            let peer = tokio::net::lookup_host(&addr)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
            let socket = tokio::net::TcpStream::connect(peer).await?;
            socket.set_nodelay(true)?;
            let stream = connector.connect(PeerTls::server_name(peer), socket).await?;
            Ok(Box::new(stream) as PeerStream)
        })
    })
}

/// `builder` speaking only HTTPS with the cluster's TLS when `tls` is given (this
/// node's certificate, the cluster CA as the only root); unchanged without.
pub fn with_tls(builder: reqwest::ClientBuilder, tls: Option<&PeerTls>) -> reqwest::ClientBuilder {
    match tls {
        Some(tls) => builder.use_preconfigured_tls(tls.client_config()).https_only(true),
        None => builder,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use bytes::Bytes;

    use super::*;

    /// Serves `/declared` (a 100-byte body with its length) and `/chunked` (ten
    /// 10-byte chunks, no length) on a loopback port.
    async fn server() -> String {
        let app = Router::new().route("/declared", get(|| async { vec![7u8; 100] })).route(
            "/chunked",
            get(|| async {
                let chunks = (0..10).map(|_| Ok::<_, Infallible>(Bytes::from(vec![7u8; 10])));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn answers_past_the_bound_are_refused_with_or_without_a_length() {
        let base = server().await;
        let http = reqwest::Client::new();
        for path in ["/declared", "/chunked"] {
            let res = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(body_within(res, 100).await.unwrap(), vec![7u8; 100], "{path}");
            let res = http.get(format!("{base}{path}")).send().await.unwrap();
            let err = body_within(res, 99).await.unwrap_err();
            assert!(matches!(err, BodyError::TooLarge { max: 99 }), "{path}: {err}");
        }
        let res = http.get(format!("{base}/chunked")).send().await.unwrap();
        assert!(res.content_length().is_none(), "the chunked answer declares no length");
    }
}
