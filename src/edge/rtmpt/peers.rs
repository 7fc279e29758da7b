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
//! Replicas are bounded in number (`4 × --max-rtmpt-sessions`) and bytes, and expire
//! after [`REPLICA_LEASE`] without a step. Traffic between edges carries
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
/// A replica that got no step for this long may be stale (its holder gave the session
/// to another buddy it could reach): it takes nothing over. A holder whose buddy
/// failed under a step waits this long before answering, unless the buddy
/// acknowledged dropping its copy. Clients poll at least every 330 ms.
pub const REPLICA_LEASE: Duration = Duration::from_secs(5);
/// Streams a replica keeps warm relays for at most.
const MAX_WARM: usize = 4;
/// How many edges of a session's chain a request is forwarded to at most: the holder
/// and its first two possible buddies.
const MAX_WALK: usize = 3;
/// A holder's journals (a publisher's keeps seconds of media): 256 MiB in all, 32 MiB
/// for the sessions of one client address; a session past either is served on
/// unprotected.
pub const JOURNAL_BYTES: usize = 256 << 20;
pub const JOURNAL_BYTES_PER_ADDRESS: usize = 32 << 20;
/// Connecting to a peer edge: they are on one network.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// A forwarded request's answer (an `/idle` holds up to 100 ms; a session answers
/// within 10 s or says so).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(12);
/// A step's answer: the buddy applies it in memory.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of journals a buddy holds for its peers at most (a player's is a few KB; a
/// publisher's retains up to 4 MiB of media): past it, full copies are refused (507)
/// and the holder tries the next peer, and a step that would pass it drops its
/// replica (the holder then looks for another buddy).
pub const REPLICA_BYTES: usize = 256 << 20;
/// Largest answer to a forwarded request read: a reply (64 KiB, or one message) or
/// an error.
const MAX_ANSWER: usize = 4 << 20;
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
    let (update, read) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())?;
    if read != bytes.len() {
        return Err("trailing bytes after a replica update".into());
    }
    Ok(update)
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
    /// Replicas held for peers now, and the bytes of their journals.
    pub replicas: AtomicU64,
    pub replica_bytes: AtomicU64,
    /// Sessions this edge ended because their buddy had taken them over.
    pub fenced: AtomicU64,
}

/// A session's copy on its buddy.
pub enum Replica {
    Standby(Box<Standby>),
    /// Taken over here from `fenced`: its steps and full copies are refused until
    /// `since` is [`TOMBSTONE_FOR`] old (a full copy from another holder, one that took
    /// the session over from this edge, replaces it).
    Taken {
        since: Instant,
        fenced: usize,
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
    /// The journal's bytes when last counted in [`Replicas::bytes`].
    bytes: usize,
    /// Warm relays of the streams the session plays: the hub keeps a few seconds of
    /// history, so a takeover resumes the plays where the client is. A takeover keeps
    /// them until its connection's plays have joined the same relays.
    pub leases: HashMap<StreamKey, Lease>,
}

/// The replicas this edge holds, and the bytes of their journals.
#[derive(Default)]
struct Replicas {
    by_id: HashMap<String, Replica>,
    bytes: usize,
}

impl Replicas {
    fn remove(&mut self, id: &str) -> Option<Replica> {
        let gone = self.by_id.remove(id);
        if let Some(Replica::Standby(standby)) = &gone {
            self.bytes -= standby.bytes;
        }
        gone
    }

    /// Puts `replica` under `id` (the bytes of the one it replaces are given back).
    fn insert(&mut self, id: &str, replica: Replica) -> Option<Replica> {
        if let Replica::Standby(standby) = &replica {
            self.bytes += standby.bytes;
        }
        let old = self.by_id.insert(id.to_owned(), replica);
        if let Some(Replica::Standby(standby)) = &old {
            self.bytes -= standby.bytes;
        }
        old
    }
}

/// The tier's edges, and the replicas this edge holds for them.
pub struct Peers {
    addrs: Vec<SocketAddr>,
    me: usize,
    http: reqwest::Client,
    secret: ClusterSecret,
    down: Mutex<Vec<Option<Instant>>>,
    replicas: Mutex<Replicas>,
    max_replicas: usize,
    /// Takeovers on this edge, one at a time (each is quick and never waits): a second
    /// request of the same session finds the first one's session.
    pub takeovers: Mutex<()>,
    /// Bytes of the journals of the sessions held here, in all and per client address.
    journals: Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
    edge_stats: Arc<crate::edge::EdgeStats>,
}

/// Why a peer did not answer a forwarded request or a step.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The connection was refused: no edge runs there now (passed over for
    /// [`DOWN_FOR`]).
    #[error("down: {0}")]
    Down(String),
    /// Could not connect otherwise (a timeout): maybe down, maybe cut off (passed over
    /// for [`DOWN_FOR`]).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request went out and no answer came back (a timeout, a reset): the peer
    /// may have carried it out.
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// It answered, with this status.
    #[error("answered {0}: {1}")]
    Status(StatusCode, String),
}

impl Peers {
    /// `None` without `--rtmpt-peers`.
    pub(crate) fn new(
        addrs: &[SocketAddr],
        me: usize,
        secret: ClusterSecret,
        max_sessions: usize,
        edge_stats: Arc<crate::edge::EdgeStats>,
    ) -> Option<Peers> {
        if addrs.is_empty() {
            return None;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Under the peers' keep-alive (the header timeout, 10 s by default): a pooled
            // connection the server is closing is a reset, not a peer down.
            .pool_idle_timeout(Duration::from_secs(5))
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
            takeovers: Mutex::new(()),
            journals: Mutex::default(),
            max_replicas: max_sessions.saturating_mul(4).max(16),
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

    /// The chain's first [`MAX_WALK`] edges, those found down lately moved to the end
    /// (still tried, last).
    pub fn live_chain(&self, id: &str) -> Vec<usize> {
        let now = Instant::now();
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let (mut up, gone): (Vec<usize>, Vec<usize>) = self
            .chain(id)
            .into_iter()
            .take(MAX_WALK)
            .partition(|&i| down[i].is_none_or(|at| now.duration_since(at) > DOWN_FOR));
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
            Err(e) => return Err(self.failed(peer, e)),
        };
        self.mark_up(peer);
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        if answer.content_length().is_none_or(|n| n > MAX_ANSWER as u64) {
            let why = "a peer's answer without a length or too long".to_owned();
            return Err(PeerError::Status(StatusCode::BAD_GATEWAY, why));
        }
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(e) => return Err(self.failed(peer, e)),
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
            Err(e) => Err(self.failed(peer, e)),
        }
    }

    /// A request to `peer` that failed: down if it could not connect.
    fn failed(&self, peer: usize, e: reqwest::Error) -> PeerError {
        if !e.is_connect() {
            return PeerError::NoAnswer(e.to_string());
        }
        self.mark_down(peer);
        // Refused: nothing listens there, so nothing it held survives (a process that
        // restarts starts empty). A timeout may be a partition instead.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(error) = source {
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            {
                return PeerError::Down(e.to_string());
            }
            source = error.source();
        }
        PeerError::Unreachable(e.to_string())
    }

    /// Charges a session's journal growing from `old` to `new` bytes to the holder's
    /// budget; `false` (nothing charged) when it does not fit.
    pub fn charge(&self, client: std::net::IpAddr, old: usize, new: usize) -> bool {
        let mut journals = self.journals.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_address) = &mut *journals;
        let mine = by_address.get(&client).copied().unwrap_or(0);
        let (total_after, mine_after) = ((*total + new).saturating_sub(old), (mine + new).saturating_sub(old));
        if new > old && (total_after > JOURNAL_BYTES || mine_after > JOURNAL_BYTES_PER_ADDRESS) {
            return false;
        }
        *total = total_after;
        if mine_after == 0 {
            by_address.remove(&client);
        } else {
            by_address.insert(client, mine_after);
        }
        true
    }

    /// Whether `id` is a session id of this tier: 34 lower-case hex digits, the first
    /// two naming a peer.
    pub fn valid_id(&self, id: &str) -> bool {
        id.len() == 34
            && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && usize::from_str_radix(&id[..2], 16).is_ok_and(|i| i < self.addrs.len())
    }

    /// Applies an update from a holder. `Err` is the answer to give it.
    pub fn apply(&self, ctx: &Arc<EdgeContext>, id: &str, update: Update) -> Result<(), Box<Response>> {
        // The journal is checked and rebuilt before the lock is taken.
        let update = match update {
            Update::Full(full) => {
                let Full { holder, client, tls, journal } = *full;
                match Journal::restore(journal) {
                    Ok(journal) => Ok((holder, client, tls, journal)),
                    Err(e) => return Err(Box::new(error(StatusCode::BAD_REQUEST, "bad_journal", e.to_string()))),
                }
            }
            other => Err(other),
        };
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut replicas);
        let answer = match update {
            Ok(full) => self.full(ctx, &mut replicas, id, full),
            Err(Update::Full(_)) => Ok(()),
            Err(Update::Drop) => {
                if let Some(Replica::Standby(_)) = replicas.by_id.get(id) {
                    replicas.remove(id);
                }
                Ok(())
            }
            Err(Update::Step(step)) => self.step(ctx, &mut replicas, id, &step),
        };
        self.stats().replicas.store(replicas.by_id.len() as u64, Ordering::Relaxed);
        self.stats().replica_bytes.store(replicas.bytes as u64, Ordering::Relaxed);
        answer
    }

    /// The next step of a session whose replica is here.
    fn step(
        &self,
        ctx: &Arc<EdgeContext>,
        replicas: &mut Replicas,
        id: &str,
        step: &Step,
    ) -> Result<(), Box<Response>> {
        let refuse = |status, code, why: String| Err(Box::new(error(status, code, why)));
        let total = replicas.bytes;
        let standby = match replicas.by_id.get_mut(id) {
            Some(Replica::Taken { .. }) => return Err(Box::new(taken_over())),
            None => {
                return refuse(StatusCode::PRECONDITION_FAILED, "need_full", "no replica of this session here".into())
            }
            Some(Replica::Standby(standby)) => standby,
        };
        if standby.journal.last_seq().is_some_and(|last| step.seq > last + 1) {
            return refuse(StatusCode::PRECONDITION_FAILED, "need_full", "a step is missing".into());
        }
        if let Err(e) = standby.journal.apply(step) {
            replicas.remove(id);
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, "unresumable", e.to_string());
        }
        let (old, grown) = (standby.bytes, standby.journal.bytes());
        if total - old + grown > REPLICA_BYTES {
            replicas.remove(id);
            return refuse(StatusCode::INSUFFICIENT_STORAGE, "replicas_full", "over the replica budget".into());
        }
        standby.bytes = grown;
        standby.touched = Instant::now();
        warm(ctx, standby);
        replicas.bytes = total - old + grown;
        Ok(())
    }

    /// A full copy of a session: a new replica, or one that replaces what was here.
    fn full(
        &self,
        ctx: &Arc<EdgeContext>,
        replicas: &mut Replicas,
        id: &str,
        full: (usize, SocketAddr, bool, Journal),
    ) -> Result<(), Box<Response>> {
        let refuse = |status, code, why: &str| Err(Box::new(error(status, code, why)));
        let old = match replicas.by_id.get(id) {
            Some(Replica::Taken { fenced, .. }) if *fenced == full.0 => return Err(Box::new(taken_over())),
            Some(Replica::Taken { .. }) => 0,
            Some(Replica::Standby(standby)) => standby.bytes,
            None if replicas.by_id.len() >= self.max_replicas => {
                return refuse(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "replicas_full",
                    "this edge holds its share of replicas",
                )
            }
            None => 0,
        };
        let (holder, client, tls, journal) = full;
        if holder >= self.addrs.len() || holder == self.me {
            return refuse(StatusCode::BAD_REQUEST, "bad_holder", "no such holder");
        }
        let bytes = journal.bytes();
        if replicas.bytes - old + bytes > REPLICA_BYTES {
            return refuse(StatusCode::INSUFFICIENT_STORAGE, "replicas_full", "over the replica budget");
        }
        let mut standby =
            Standby { holder, client, tls, journal, touched: Instant::now(), bytes, leases: HashMap::new() };
        warm(ctx, &mut standby);
        replicas.insert(id, Replica::Standby(Box::new(standby)));
        Ok(())
    }

    /// Takes the replica of `id` to take the session over, leaving a tombstone; not one
    /// past its lease ([`REPLICA_LEASE`]).
    pub fn take(&self, id: &str) -> Option<Box<Standby>> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        let fenced = match replicas.by_id.get(id) {
            Some(Replica::Standby(standby)) if standby.touched.elapsed() < REPLICA_LEASE => standby.holder,
            _ => return None,
        };
        match replicas.insert(id, Replica::Taken { since: Instant::now(), fenced }) {
            Some(Replica::Standby(standby)) => Some(standby),
            _ => None,
        }
    }

    /// The holder a standby replica of `id` here names, if there is one within its
    /// lease.
    pub fn replica_holder(&self, id: &str) -> Option<usize> {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut replicas);
        match replicas.by_id.get(id) {
            Some(Replica::Standby(standby)) if standby.touched.elapsed() < REPLICA_LEASE => Some(standby.holder),
            _ => None,
        }
    }

    /// Drops the replica of `id` here (a session closed, or one whose copy is stale).
    pub fn drop_replica(&self, id: &str) {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Replica::Standby(_)) = replicas.by_id.get(id) {
            replicas.remove(id);
        }
    }

    /// Puts back a replica [`Peers::take`] took for a takeover that could not start.
    pub fn put_back(&self, id: &str, standby: Box<Standby>) {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Replica::Standby(standby));
    }

    /// Drops the replicas and tombstones past their time.
    pub fn sweep(&self) {
        let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut replicas);
        self.stats().replicas.store(replicas.by_id.len() as u64, Ordering::Relaxed);
        self.stats().replica_bytes.store(replicas.bytes as u64, Ordering::Relaxed);
    }

    fn expire(&self, replicas: &mut Replicas) {
        let now = Instant::now();
        let gone: Vec<String> = replicas
            .by_id
            .iter()
            .filter(|(_, r)| match r {
                // Past its lease a copy can take nothing over: it only held memory
                // and warm relays.
                Replica::Standby(s) => now.duration_since(s.touched) >= REPLICA_LEASE,
                Replica::Taken { since, .. } => now.duration_since(*since) >= TOMBSTONE_FOR,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            replicas.remove(&id);
        }
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
    let mut wanted = played_streams(standby.journal.control_log());
    wanted.truncate(MAX_WARM);
    standby.leases.retain(|key, _| wanted.contains(key));
    for key in wanted {
        standby.leases.entry(key).or_insert_with_key(|key| ctx.relays.join_warm(ctx, key));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An edge that is `edge-2` (index 1) of three sharing sessions.
    fn context() -> Arc<EdgeContext> {
        let peers = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"].map(|a| a.parse().unwrap());
        let args = crate::edge::EdgeArgs {
            id: Some("edge-2".into()),
            http: Some(peers[1]),
            origins: Some(vec!["127.0.0.1:8101".parse().unwrap()]),
            rtmpt_peers: Some(peers.to_vec()),
            ..Default::default()
        };
        let env = |k: &str| (k == "RAFTCAST_CLUSTER_SECRET").then(|| "x".repeat(20));
        crate::edge::tests::context(crate::edge::EdgeConfig::from_args(args, env).unwrap())
    }

    /// A journal past the client's handshake.
    fn journal(seq: u64) -> Journal {
        let mut journal = Journal::new();
        let step = Step { seq, body: Bytes::from(vec![3; 1537]), after: Default::default() };
        journal.apply(&step).unwrap();
        journal
    }

    fn full(holder: usize, journal: &Journal) -> Update {
        let client = "192.0.2.1:5000".parse().unwrap();
        Update::Full(Box::new(Full { holder, client, tls: false, journal: journal.snapshot() }))
    }

    fn step(seq: u64, body: &[u8]) -> Update {
        Update::Step(Step { seq, body: Bytes::copy_from_slice(body), after: Default::default() })
    }

    fn status(answer: Result<(), Box<Response>>) -> StatusCode {
        answer.map_or_else(|r| r.status(), |()| StatusCode::OK)
    }

    #[tokio::test]
    async fn replicas_follow_steps_refuse_gaps_and_fence_their_old_holder_once_taken() {
        let ctx = context();
        let peers = ctx.tunnels.peers().unwrap().clone();
        let id = "00aa";
        assert_eq!(status(peers.apply(&ctx, id, step(1, &[0; 1536]))), StatusCode::PRECONDITION_FAILED, "no base yet");
        assert_eq!(status(peers.apply(&ctx, id, full(1, &journal(0)))), StatusCode::BAD_REQUEST, "itself as holder");
        assert_eq!(status(peers.apply(&ctx, id, full(0, &journal(0)))), StatusCode::OK);
        assert_eq!(peers.replica_holder(id), Some(0));
        assert_eq!(status(peers.apply(&ctx, id, step(1, &[0; 1536]))), StatusCode::OK);
        assert_eq!(status(peers.apply(&ctx, id, step(1, &[0; 1536]))), StatusCode::OK, "a repeat is harmless");
        assert_eq!(status(peers.apply(&ctx, id, step(3, &[]))), StatusCode::PRECONDITION_FAILED, "a gap");
        // Bytes that are not RTMP chunks make the session unresumable: the replica goes.
        assert_eq!(status(peers.apply(&ctx, id, step(2, &[0xC3; 64]))), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(peers.replica_holder(id), None);
        assert_eq!(status(peers.apply(&ctx, id, full(0, &journal(0)))), StatusCode::OK);
        let taken = peers.take(id).expect("a standby to take over");
        assert_eq!(taken.holder, 0);
        assert!(peers.take(id).is_none(), "taken once");
        // The old holder, alive after all, is fenced: its steps and full copies get 409.
        assert_eq!(status(peers.apply(&ctx, id, step(1, &[0; 1536]))), StatusCode::CONFLICT);
        assert_eq!(status(peers.apply(&ctx, id, full(0, &journal(0)))), StatusCode::CONFLICT);
        assert_eq!(status(peers.apply(&ctx, "00bb", Update::Drop)), StatusCode::OK, "dropping nothing is fine");
    }

    #[tokio::test]
    async fn the_replica_budget_counts_journal_bytes() {
        let ctx = context();
        let peers = ctx.tunnels.peers().unwrap().clone();
        // A partial chunk (a type-0 header announcing a long message, then part of it)
        // stays buffered in the journal: bytes the buddy holds.
        let mut body = vec![0x03, 0, 0, 0, 0x10, 0, 0, 0x14, 0, 0, 0, 0];
        body.extend(vec![0u8; 100]);
        assert_eq!(status(peers.apply(&ctx, "00aa", full(0, &journal(0)))), StatusCode::OK);
        assert_eq!(status(peers.apply(&ctx, "00aa", step(1, &[0; 1536]))), StatusCode::OK);
        assert_eq!(status(peers.apply(&ctx, "00aa", step(2, &body))), StatusCode::OK);
        let held = peers.replicas.lock().unwrap().bytes;
        assert!(held >= 100, "{held} bytes counted");
        assert_eq!(status(peers.apply(&ctx, "00aa", Update::Drop)), StatusCode::OK);
        assert_eq!(peers.replicas.lock().unwrap().bytes, 0, "given back");
        assert_eq!(peers.replica_holder("00aa"), None);
    }

    #[tokio::test]
    async fn chains_start_at_the_holder_and_agree_on_every_edge() {
        let ctx = context();
        let peers = ctx.tunnels.peers().unwrap();
        let id = peers.new_id();
        assert!(id.starts_with("01") && id.len() == 34, "{id}");
        let chain = peers.chain(&id);
        assert_eq!(chain[0], 1);
        let mut sorted = chain.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2]);
        assert_eq!(peers.chain(&id), chain, "the same order every time");
        // An id naming no peer is looked for in rendezvous order only.
        assert_eq!(peers.chain("ffabc").len(), 3);
        assert_eq!(peers.chain("").len(), 3);
    }

    #[test]
    fn updates_from_the_wire_are_bounded() {
        assert!(decode(&vec![0; MAX_UPDATE + 1]).is_err());
        for junk in [&[][..], &[0xFF; 64], &[2, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]] {
            assert!(decode(junk).is_err());
        }
        let round = decode(&encode(&step(7, b"abc")).unwrap()).unwrap();
        assert!(matches!(round, Update::Step(Step { seq: 7, .. })));
    }
}
