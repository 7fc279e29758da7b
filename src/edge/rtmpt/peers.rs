//! RTMPT sessions shared by the tier's edges (`--rtmpt-peers`): any edge reaches a
//! session, and a session outlives the edge holding it.
//!
//! - **Ids name their holder.** A session id is the holder's index in the peer list
//!   (two hex digits) and 128 random bits. An edge that gets a request for a session
//!   it does not hold forwards it, body and all, down the session's [`chain`]
//!   (`Peers::chain`): the holder first, then the other peers in an order every edge
//!   computes alike from the id (rendezvous hashing), skipping peers that refused a
//!   connection in the last [`DOWN_FOR`]. A peer that lacks the session answers
//!   `421 not_here` and the walk goes on.
//! - **The holder keeps a buddy.** Before it answers a request the holder sends the
//!   next live peer of the chain one step of the session's journal (the request's
//!   body and where delivery stands after the reply; a full copy of the journal
//!   first) and waits for its 200. A buddy that cannot be reached is replaced by the
//!   next peer with a full copy; with none, the session is answered unprotected
//!   (counted in `edge_rtmpt_unprotected_replies_total`).
//! - **The buddy takes over.** A request the walk brings to the peer holding the
//!   session's replica (the holder did not answer) makes it the holder: it starts a
//!   new RTMP connection and drives it through the translator (`super::translate`)
//!   from the journal, then answers. The replica is left as a tombstone for
//!   [`TOMBSTONE_FOR`]: a step from the old holder (alive after all, behind a
//!   partition) gets `409 taken_over`, and the old holder ends its copy of the session
//!   before answering anything, so a client is never answered by two holders.
//!
//! Replicas are bounded in number (`4 × --max-rtmpt-sessions`) and expire like
//! sessions (`--rtmpt-idle-timeout-ms` without a step). Traffic between edges carries
//! the cluster secret, over the peers' plain HTTP ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use raftcast_raft::rpc::{ClusterSecret, SECRET_HEADER};
use raftcast_raft::StreamKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::journal::{Journal, JournalState, Step};
use crate::edge::streams::Lease;
use crate::edge::EdgeContext;
use crate::http_server::json_error as error;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::message::Message;

/// Marks a tunnel request one edge forwards to another: the receiver serves it or
/// answers `421`, never forwards it again.
pub const FORWARDED_HEADER: &str = "x-raftcast-rtmpt-forwarded";
/// The client address a forwarded request came from.
pub const CLIENT_HEADER: &str = "x-raftcast-rtmpt-client";
/// How long a peer that refused a connection is passed over.
pub const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a taken-over session's tombstone fences its old holder.
pub const TOMBSTONE_FOR: Duration = Duration::from_secs(60);
/// Connecting to a peer edge: they are on one network.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// A forwarded request's answer (an `/idle` holds up to 100 ms; a session answers
/// within 10 s or says so).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(12);
/// A step's answer: the buddy applies it in memory.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest replica update accepted: a full journal (its retained publisher media is
/// bounded at 4 MiB) or a step (a body of at most 2 MiB).
pub const MAX_UPDATE: usize = 8 << 20;

/// What a holder sends its buddy.
#[derive(Debug, Serialize, Deserialize)]
pub enum Update {
    /// A full copy: a new buddy, or one that lost track.
    Full(Box<Full>),
    /// The next answered request.
    Step(Step),
    /// The session ended.
    Drop,
}

/// Everything a buddy needs to take a session over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Full {
    /// The peer index of the holder sending it.
    pub holder: usize,
    /// The client's address (the caps of the connection a takeover starts count it).
    pub client: SocketAddr,
    /// `rtmpt` or `rtmpts`.
    pub tls: bool,
    pub journal: JournalState,
}

fn bincode_config() -> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint> {
    bincode::config::standard()
}

pub fn encode(update: &Update) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(update, bincode_config()).map_err(|e| e.to_string())
}

pub fn decode(bytes: &[u8]) -> Result<Update, String> {
    if bytes.len() > MAX_UPDATE {
        return Err(format!("a replica update is at most {MAX_UPDATE} bytes"));
    }
    let config = bincode_config().with_limit::<MAX_UPDATE>();
    bincode::serde::decode_from_slice(bytes, config).map(|(u, _)| u).map_err(|e| e.to_string())
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Tunnel requests this edge forwarded to a peer.
    pub forwarded: AtomicU64,
    /// Steps and full copies sent to buddies, and their bytes.
    pub steps: AtomicU64,
    pub fulls: AtomicU64,
    pub step_bytes: AtomicU64,
    /// Replies sent with no buddy holding the session (it would end with this edge).
    pub unprotected: AtomicU64,
    /// Sessions this edge took over from a dead holder, and takeovers that failed.
    pub takeovers: AtomicU64,
    pub takeovers_failed: AtomicU64,
    /// Replicas held for peers now.
    pub replicas: AtomicU64,
    /// Sessions this edge ended because their buddy had taken them over.
    pub fenced: AtomicU64,
}

/// A session's copy on its buddy.
pub enum Replica {
    Standby(Box<Standby>),
    /// Taken over here: steps from the old holder are refused until `since` is
    /// [`TOMBSTONE_FOR`] old.
    Taken {
        since: Instant,
    },
}

pub struct Standby {
    /// Who holds the session: a request that reaches this copy is forwarded there
    /// first, and the session is taken over only if it does not answer.
    pub holder: usize,
    pub client: SocketAddr,
    pub tls: bool,
    pub journal: Journal,
    touched: Instant,
    /// Warm relays of the streams the session plays: the hub keeps a few seconds of
    /// history, so a takeover resumes the plays where the client is. A takeover keeps
    /// them until its connection's plays have joined the same relays.
    pub leases: HashMap<StreamKey, Lease>,
}

/// The tier's edges, and the replicas this edge holds for them.
pub struct Peers {
    addrs: Vec<SocketAddr>,
    me: usize,
    http: reqwest::Client,
    secret: ClusterSecret,
    down: Mutex<Vec<Option<Instant>>>,
    replicas: Mutex<HashMap<String, Replica>>,
    max_replicas: usize,
    idle: Duration,
    edge_stats: Arc<crate::edge::EdgeStats>,
}

/// Why a peer did not answer a forwarded request or a step.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Could not connect, or the connection broke: the peer is treated as down.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// It answered, with this status.
    #[error("answered {0}: {1}")]
    Status(StatusCode, String),
}

impl Peers {
    /// `None` without `--rtmpt-peers`.
    pub fn new(
        addrs: &[SocketAddr],
        me: usize,
        secret: ClusterSecret,
        (max_sessions, idle): (usize, Duration),
        edge_stats: Arc<crate::edge::EdgeStats>,
    ) -> Option<Peers> {
        if addrs.is_empty() {
            return None;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .ok()?;
        Some(Peers {
            addrs: addrs.to_vec(),
            me,
            http,
            secret,
            down: Mutex::new(vec![None; addrs.len()]),
            replicas: Mutex::default(),
            max_replicas: max_sessions.saturating_mul(4).max(16),
            idle,
            edge_stats,
        })
    }

    /// The counters in `/metrics`.
    pub fn stats(&self) -> &PeerStats {
        &self.edge_stats.rtmpt.peers
    }

    pub fn me(&self) -> usize {
        self.me
    }

    /// A new session id held here: two hex digits of this edge's index, 128 random bits.
    pub fn new_id(&self) -> String {
        let bits: u128 = rand::random();
        format!("{:02x}{bits:032x}", self.me)
    }

    /// The peers in the order a session's requests look for it: its holder (named by
    /// the id) first, then the others by a score every edge computes alike from the id
    /// and the peer's address (rendezvous hashing: a peer's death moves only its own
    /// sessions' buddies).
    pub fn chain(&self, id: &str) -> Vec<usize> {
        let holder = id.get(..2).and_then(|h| usize::from_str_radix(h, 16).ok()).filter(|&i| i < self.addrs.len());
        let mut rest: Vec<(u64, usize)> = (0..self.addrs.len())
            .filter(|&i| Some(i) != holder)
            .map(|i| {
                let digest =
                    Sha256::new().chain_update(id.as_bytes()).chain_update(self.addrs[i].to_string()).finalize();
                let score = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
                (score, i)
            })
            .collect();
        rest.sort_unstable_by(|a, b| b.cmp(a));
        holder.into_iter().chain(rest.into_iter().map(|(_, i)| i)).collect()
    }

    /// The chain with the peers found down lately moved to its end (still tried, last).
    pub fn live_chain(&self, id: &str) -> Vec<usize> {
        let now = Instant::now();
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let (mut up, gone): (Vec<usize>, Vec<usize>) =
            self.chain(id).into_iter().partition(|&i| down[i].is_none_or(|at| now.duration_since(at) > DOWN_FOR));
        up.extend(gone);
        up
    }

    fn mark_down(&self, peer: usize) {
        self.down.lock().unwrap_or_else(|e| e.into_inner())[peer] = Some(Instant::now());
    }

    fn mark_up(&self, peer: usize) {
        self.down.lock().unwrap_or_else(|e| e.into_inner())[peer] = None;
    }

    /// Whether `headers` carry the cluster secret.
    pub fn admits(&self, headers: &axum::http::HeaderMap) -> bool {
        self.secret.admits(headers)
    }

    /// Sends a tunnel request to `peer` and returns its answer as is.
    pub async fn forward(
        &self,
        peer: usize,
        path: &str,
        body: Bytes,
        client: SocketAddr,
    ) -> Result<Response, PeerError> {
        self.stats().forwarded.fetch_add(1, Ordering::Relaxed);
        let url = format!("http://{}{path}", self.addrs[peer]);
        let sent = self
            .http
            .post(url)
            .header(SECRET_HEADER, self.secret.as_str())
            .header(FORWARDED_HEADER, "1")
            .header(CLIENT_HEADER, client.to_string())
            .header(header::CONTENT_TYPE, "application/x-fcs")
            .timeout(FORWARD_TIMEOUT)
            .body(body)
            .send()
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) => {
                self.mark_down(peer);
                return Err(PeerError::Unreachable(e.to_string()));
            }
        };
        self.mark_up(peer);
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(e) => {
                self.mark_down(peer);
                return Err(PeerError::Unreachable(e.to_string()));
            }
        };
        if status == StatusCode::MISDIRECTED_REQUEST {
            return Err(PeerError::Status(status, String::from_utf8_lossy(&body).into_owned()));
        }
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        if let Some(content_type) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        }
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    /// Sends `update` for session `id` to `peer`; `Ok` once the peer has applied it.
    pub async fn send_update(&self, peer: usize, id: &str, update: &Update) -> Result<(), PeerError> {
        let body = encode(update).map_err(|e| PeerError::Status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        match update {
            Update::Full(_) => self.stats().fulls.fetch_add(1, Ordering::Relaxed),
            _ => self.stats().steps.fetch_add(1, Ordering::Relaxed),
        };
        self.stats().step_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        let url = format!("http://{}/internal/rtmpt/{id}", self.addrs[peer]);
        let sent = self
            .http
            .post(url)
            .header(SECRET_HEADER, self.secret.as_str())
            .timeout(STEP_TIMEOUT)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => {
                self.mark_up(peer);
                Ok(())
            }
            Ok(answer) => {
                let status = answer.status();
                Err(PeerError::Status(status, answer.text().await.unwrap_or_default()))
            }
            Err(e) => {
                self.mark_down(peer);
                Err(PeerError::Unreachable(e.to_string()))
            }
        }
    }

    /// Applies an update from a holder. `Err` is the answer to give it.
    pub fn apply(&self, ctx: &Arc<EdgeContext>, id: &str, update: Update) -> Result<(), Box<Response>> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut replicas);
        match update {
            Update::Drop => {
                if let Some(Replica::Standby(_)) = replicas.get(id) {
                    replicas.remove(id);
                }
            }
            Update::Full(full) => {
                if let Some(Replica::Taken { .. }) = replicas.get(id) {
                    return Err(Box::new(taken_over()));
                }
                if !replicas.contains_key(id) && replicas.len() >= self.max_replicas {
                    return Err(Box::new(error(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "replicas_full",
                        "this edge holds its share of replicas",
                    )));
                }
                let Full { holder, client, tls, journal } = *full;
                if holder >= self.addrs.len() || holder == self.me {
                    return Err(Box::new(error(StatusCode::BAD_REQUEST, "bad_holder", "no such holder")));
                }
                let journal = Journal::restore(journal)
                    .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_journal", e.to_string())))?;
                let mut standby =
                    Standby { holder, client, tls, journal, touched: Instant::now(), leases: HashMap::new() };
                warm(ctx, &mut standby);
                replicas.insert(id.to_owned(), Replica::Standby(Box::new(standby)));
            }
            Update::Step(step) => match replicas.get_mut(id) {
                Some(Replica::Taken { .. }) => return Err(Box::new(taken_over())),
                None => {
                    let why = "no replica of this session here";
                    return Err(Box::new(error(StatusCode::PRECONDITION_FAILED, "need_full", why)));
                }
                Some(Replica::Standby(standby)) => {
                    let fresh = standby.journal.last_seq().is_none_or(|last| step.seq <= last + 1);
                    if !fresh {
                        return Err(Box::new(error(StatusCode::PRECONDITION_FAILED, "need_full", "a step is missing")));
                    }
                    if let Err(e) = standby.journal.apply(&step) {
                        replicas.remove(id);
                        return Err(Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, "unresumable", e.to_string())));
                    }
                    standby.touched = Instant::now();
                    warm(ctx, standby);
                }
            },
        }
        self.stats().replicas.store(replicas.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Takes the replica of `id` to take the session over, leaving a tombstone.
    pub fn take(&self, id: &str) -> Option<Box<Standby>> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        match replicas.get(id) {
            Some(Replica::Standby(_)) => {}
            _ => return None,
        }
        match replicas.insert(id.to_owned(), Replica::Taken { since: Instant::now() }) {
            Some(Replica::Standby(standby)) => Some(standby),
            _ => None,
        }
    }

    /// The holder a standby replica of `id` here names, if there is one.
    pub fn replica_holder(&self, id: &str) -> Option<usize> {
        match self.replicas.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            Some(Replica::Standby(standby)) => Some(standby.holder),
            _ => None,
        }
    }

    /// Puts back a replica [`Peers::take`] took for a takeover that could not start.
    pub fn put_back(&self, id: &str, standby: Box<Standby>) {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), Replica::Standby(standby));
    }

    fn expire(&self, replicas: &mut HashMap<String, Replica>) {
        let now = Instant::now();
        replicas.retain(|_, r| match r {
            Replica::Standby(s) => now.duration_since(s.touched) < self.idle,
            Replica::Taken { since } => now.duration_since(*since) < TOMBSTONE_FOR,
        });
    }
}

pub fn taken_over() -> Response {
    error(StatusCode::CONFLICT, "taken_over", "another edge took this session over")
}

pub fn not_here() -> Response {
    error(StatusCode::MISDIRECTED_REQUEST, "not_here", "this edge neither holds this RTMPT session nor a copy of it")
}

/// Keeps a relay lease on every stream the session plays (and drops the others).
fn warm(ctx: &Arc<EdgeContext>, standby: &mut Standby) {
    let wanted = played_streams(standby.journal.control_log());
    standby.leases.retain(|key, _| wanted.contains(key));
    for key in wanted {
        standby.leases.entry(key).or_insert_with_key(|key| ctx.relays.join(ctx, key));
    }
}

/// The streams a session's control log plays: the connect's app and each `play`'s
/// name (queries dropped), as the connection would name them.
fn played_streams(log: &[crate::rtmp::chunk::RawMessage]) -> Vec<StreamKey> {
    let mut app = None;
    let mut streams = Vec::new();
    for raw in log {
        let Ok(Message::Command { command, .. }) = Message::parse(raw) else { continue };
        match command.name.as_str() {
            "connect" => {
                app = command.object.property("app").and_then(Amf0Value::as_str).map(|a| {
                    let (app, _) = crate::rtmp::session::split_query(a);
                    app.to_owned()
                });
            }
            "play" => {
                let (Some(app), Some(name)) = (&app, command.args.first().and_then(Amf0Value::as_str)) else {
                    continue;
                };
                let (name, _) = crate::rtmp::session::split_query(name);
                if let Ok(key) = StreamKey::new(app, name) {
                    if !streams.contains(&key) {
                        streams.push(key);
                    }
                }
            }
            _ => {}
        }
    }
    streams
}

/// `POST /internal/rtmpt/{id}`: a holder's update of its session's replica here.
pub async fn update(ctx: Arc<EdgeContext>, id: &str, req: axum::extract::Request) -> Response {
    let Some(peers) = ctx.tunnels.peers() else {
        return error(StatusCode::NOT_FOUND, "not_found", "this edge shares no RTMPT sessions (--rtmpt-peers)");
    };
    if !peers.admits(req.headers()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "the cluster secret is required");
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_UPDATE).await {
        Ok(body) => body,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "a replica update is at most 8 MiB"),
    };
    let update = match decode(&body) {
        Ok(update) => update,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_update", e),
    };
    match peers.apply(&ctx, id, update) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(refused) => *refused,
    }
}
