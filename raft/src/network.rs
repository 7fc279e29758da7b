//! The client side of Raft RPC: openraft's `RaftNetworkFactory` over HTTP/1.1, each
//! client on one connection it keeps and drives itself (see [`PeerClient`]).
//!
//! Connection failures map to `Unreachable` (openraft backs off), timeouts follow the
//! `RPCOption` openraft passes with each call, and errors the remote Raft returned come
//! back as `RemoteError`.
//!
//! Every answered RPC is recorded in [`Reachability`]: when each peer last answered, which
//! is how the leader tells a live origin from a dead or paused one (its heartbeats reach
//! every follower every 50 ms).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Opens a byte stream to a peer's HTTP address (`host:port`): plain TCP by default
/// ([`tcp_connector`]); the origin passes one that speaks the cluster's mutual TLS.
pub type Connector = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<PeerStream>> + Send>> + Send + Sync>;

/// A connection to a peer, plain or TLS.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> PeerIo for T {}

/// What a [`Connector`] opens.
pub type PeerStream = Box<dyn PeerIo>;

/// Plain TCP, with `TCP_NODELAY` (a request is one write; Nagle would hold a second
/// segment for the peer's delayed ACK).
pub fn tcp_connector() -> Connector {
    Arc::new(|addr: String| {
        Box::pin(async move {
            let socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            Ok(Box::new(socket) as PeerStream)
        })
    })
}

/// Largest response head read from a peer (its status line and headers).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Creates one [`PeerClient`] per replication target; they share one [`Reachability`].
#[derive(Clone)]
pub struct HttpNetwork {
    id: NodeId,
    connector: Connector,
    secret: ClusterSecret,
    reachability: Reachability,
}

impl HttpNetwork {
    /// Raft RPC over plain HTTP.
    pub fn new(id: NodeId, secret: ClusterSecret) -> Self {
        Self::with_connector(id, secret, tcp_connector())
    }

    /// Raft RPC over the connections `connector` opens (the origin's speaks HTTPS with the
    /// cluster's TLS).
    pub fn with_connector(id: NodeId, secret: ClusterSecret, connector: Connector) -> Self {
        HttpNetwork { id, connector, secret, reachability: Reachability::default() }
    }

    /// When each peer last answered this node's Raft RPCs.
    pub fn reachability(&self) -> Reachability {
        self.reachability.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient { net: self.clone(), target, addr: node.http.clone(), conn: None }
    }
}

/// Sends Raft RPCs to one peer, as HTTP/1.1 requests on one connection it keeps.
///
/// openraft calls a client once at a time (one per replication stream, one per
/// election), so the client owns its connection and writes and reads it itself: no
/// pool, no connection task, no channel between them. With reqwest each RPC crossed
/// two tasks more; session 30 measured the difference on shared-object writes
/// (docs/origin-cluster.md). The server side is the origin's HTTP listener, unchanged:
/// its routes, caps, timeouts and TLS.
pub struct PeerClient {
    net: HttpNetwork,
    target: NodeId,
    addr: String,
    conn: Option<PeerStream>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

/// Why an exchange failed.
#[derive(Debug)]
enum Failure {
    /// No connection could be made.
    Connect(io::Error),
    /// The connection failed before any byte of an answer: a kept connection the peer
    /// closed while it idled (its server closes idle connections) fails so.
    NoAnswer(io::Error),
    /// The answer was cut short or malformed.
    Answer(io::Error),
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
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
        let request = request_bytes(path, &self.addr, self.net.secret.as_str(), &rpc::encode(req));
        let deadline = tokio::time::Instant::now() + timeout;
        let reused = self.conn.is_some();
        let mut answer = tokio::time::timeout_at(deadline, self.exchange(&request)).await;
        if reused && matches!(answer, Ok(Err(Failure::NoAnswer(_)))) {
            // Raft RPCs may be sent twice: once more on a new connection.
            answer = tokio::time::timeout_at(deadline, self.exchange(&request)).await;
        }
        let (status, body) = match answer {
            Ok(Ok(answer)) => answer,
            Err(_) => {
                self.conn = None;
                return Err(RPCError::Timeout(Timeout { action, id: self.net.id, target: self.target, timeout }));
            }
            Ok(Err(Failure::Connect(e))) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err(Failure::NoAnswer(e) | Failure::Answer(e))) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        if !(200..300).contains(&status) {
            let msg = String::from_utf8_lossy(&body);
            let err = io::Error::other(format!("{} answered {status}: {msg}", self.addr));
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

    /// Sends one request and reads its answer (status and body), on the kept connection
    /// or a new one. The connection is kept only after a whole answer that does not
    /// close it.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), Failure> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => tokio::time::timeout(CONNECT_TIMEOUT, (self.net.connector)(self.addr.clone()))
                .await
                .map_err(|_| Failure::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
                .map_err(Failure::Connect)?,
        };
        conn.write_all(request).await.map_err(Failure::NoAnswer)?;
        conn.flush().await.map_err(Failure::NoAnswer)?;
        let (answer, keep) = read_response(&mut conn).await?;
        if keep {
            self.conn = Some(conn);
        }
        Ok(answer)
    }
}

/// An HTTP/1.1 POST of a bincode body to `path` with the cluster secret.
fn request_bytes(path: &str, host: &str, secret: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{SECRET_HEADER}: {secret}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// Reads one HTTP/1.1 response: its status and body, and whether the connection may
/// carry the next request. The head is at most [`MAX_RESPONSE_HEAD`] bytes and the body
/// must have a `Content-Length` of at most [`rpc::MAX_RPC_BODY`] (the origin's server
/// always sends one for these routes); anything else is [`Failure::Answer`].
async fn read_response<S: AsyncRead + Unpin + ?Sized>(conn: &mut S) -> Result<((u16, Vec<u8>), bool), Failure> {
    let bad = |what: String| Failure::Answer(io::Error::new(io::ErrorKind::InvalidData, what));
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let (status, length, keep, head_len) = loop {
        let n = conn.read(&mut chunk).await.map_err(|e| {
            if buf.is_empty() {
                Failure::NoAnswer(e)
            } else {
                Failure::Answer(e)
            }
        })?;
        if n == 0 {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection");
            return Err(if buf.is_empty() { Failure::NoAnswer(e) } else { Failure::Answer(e) });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let mut length = None;
                let mut keep = response.version == Some(1);
                for h in response.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                        length = Some(v.ok_or_else(|| bad("a Content-Length that is not a number".into()))?);
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep &= !String::from_utf8_lossy(h.value).to_ascii_lowercase().contains("close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(bad("a response with Transfer-Encoding".into()));
                    }
                }
                let length = length.ok_or_else(|| bad(format!("a {status} response without Content-Length")))?;
                if length > rpc::MAX_RPC_BODY {
                    return Err(bad(format!("a response body of {length} bytes")));
                }
                break (status, length, keep, head_len);
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(bad(format!("a response head over {MAX_RESPONSE_HEAD} bytes")))
            }
            Err(e) => return Err(bad(format!("a malformed response: {e}"))),
        }
    };
    if buf.len() - head_len > length {
        // Bytes beyond the answer to the only request sent: not HTTP we can follow.
        return Err(bad("bytes after the response".into()));
    }
    let mut body = buf.split_off(head_len);
    body.reserve_exact(length - body.len());
    while body.len() < length {
        let n = conn.read(&mut chunk[..(length - body.len()).min(4096)]).await.map_err(Failure::Answer)?;
        if n == 0 {
            return Err(Failure::Answer(io::Error::new(io::ErrorKind::UnexpectedEof, "the answer was cut short")));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(((status, body), keep))
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

    /// Reads `bytes` as a peer's answer arriving `piece` bytes at a time.
    async fn read_pieces(bytes: &[u8], piece: usize) -> Result<((u16, Vec<u8>), bool), Failure> {
        let (mut tx, mut rx) = tokio::io::duplex(piece);
        let bytes = bytes.to_vec();
        let writer = tokio::spawn(async move {
            let _ = tx.write_all(&bytes).await;
        });
        let got = read_response(&mut rx).await;
        writer.abort();
        got
    }

    #[tokio::test]
    async fn reads_an_answer_in_any_pieces() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\ncontent-length: 5\r\n\r\nhello";
        for piece in [1, 7, 4096] {
            let ((status, body), keep) = read_pieces(answer, piece).await.unwrap();
            assert_eq!((status, body.as_slice(), keep), (200, &b"hello"[..], true), "pieces of {piece}");
        }
        let closing = b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno";
        let ((status, body), keep) = read_pieces(closing, 3).await.unwrap();
        assert_eq!((status, body.as_slice(), keep), (401, &b"no"[..], false));
    }

    #[tokio::test]
    async fn refuses_answers_it_cannot_follow() {
        let cases: [(&[u8], &str); 6] = [
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "chunked"),
            (b"HTTP/1.1 200 OK\r\n\r\nhello", "no length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "too long"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", "bytes after"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"),
        ];
        for (answer, what) in cases {
            assert!(matches!(read_pieces(answer, 4096).await, Err(Failure::Answer(_))), "{what}");
        }
        // A head that never ends is cut off at the bound, not buffered.
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &b"X: y\r\n".repeat(MAX_RESPONSE_HEAD / 5)].concat();
        assert!(matches!(read_pieces(&endless, 4096).await, Err(Failure::Answer(_))));
        // Closed before any byte: the kept connection had gone (the caller retries).
        assert!(matches!(read_pieces(b"", 16).await, Err(Failure::NoAnswer(_))));
        // Closed in the body: the answer was cut short (no retry).
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel";
        assert!(matches!(read_pieces(cut, 16).await, Err(Failure::Answer(_))));
    }

    /// A peer that answers one vote per connection and then closes it, the way a
    /// server closes an idle kept connection: each call after the first finds its kept
    /// connection gone and must go again on a new one.
    #[tokio::test]
    async fn a_kept_connection_the_peer_closed_is_replaced_within_the_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                assert!(text.starts_with("POST /raft/vote HTTP/1.1\r\n"), "{text}");
                assert!(text.contains("x-raftcast-cluster-secret: a-secret-of-sixteen-bytes"), "{text}");
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                let mut body = vec![0u8; len];
                socket.read_exact(&mut body).await.unwrap();
                let vote: VoteRequest<NodeId> = rpc::decode(&body).unwrap();
                let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                    Ok(VoteResponse { vote: vote.vote, vote_granted: true, last_log_id: None });
                let answer = rpc::encode(&answer);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", answer.len());
                socket.write_all(&[head.as_bytes(), &answer].concat()).await.unwrap();
                // Keep-alive as far as the answer says; closed as an idle server would.
                drop(socket);
            }
        });
        let secret = ClusterSecret::new("a-secret-of-sixteen-bytes").unwrap();
        let mut net = HttpNetwork::new(1, secret);
        let node = NodeAddr { http: addr, ..Default::default() };
        let mut client = net.new_client(2, &node).await;
        let option = RPCOption::new(Duration::from_secs(5));
        for term in 1..=3 {
            let req = VoteRequest { vote: openraft::Vote::new(term, 1), last_log_id: None };
            let resp = client.vote(req, option.clone()).await.expect("the vote is answered");
            assert!(resp.vote_granted);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3, "one connection per answered call");
        assert!(net.reachability().last_ok(2).is_some());
    }

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
