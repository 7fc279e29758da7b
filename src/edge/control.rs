//! The edge's control channel to the cluster: stream claims, releases and owner lookups,
//! sent as [`Forward`] requests to `/raft/forward` on the origins.
//!
//! Any origin answers a lookup; writes must reach the leader, which the edge finds by
//! trying the origins it knows, starting with the one that led last time. Every write
//! carries one request id across retries, so a retry after a lost answer is answered by
//! the state machine's dedup instead of being applied twice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use raftcast_raft::command::StreamClaim;
use raftcast_raft::rpc;
use raftcast_raft::{Command, FailKind, Forward, ForwardReply, Request, RequestId, Response, StreamKey};
use tokio::time::Instant;

use crate::peer::{self, PeerClient};

/// One attempt at one origin may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after every origin has been tried without an answer (an election, usually).
const ROUND_PAUSE: Duration = Duration::from_millis(50);

/// Why a control request failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ControlError {
    /// No origin answered within the deadline (no leader, or none reachable).
    #[error("the cluster did not answer within {0:?}")]
    Unavailable(Duration),
    /// The cluster refused the request as given.
    #[error("the cluster refused: {message}")]
    Failed { kind: FailKind, message: String },
    /// An answer that does not fit the request.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Where a stream's media goes, as one origin knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub claim: StreamClaim,
    pub media: SocketAddr,
}

/// The owner in a `Lookup` answer.
fn owner_of(reply: ForwardReply) -> Result<Option<Owner>, ControlError> {
    match reply {
        ForwardReply::Owner { claim: Some(claim), media: Some(media) } => {
            let media = media
                .parse()
                .map_err(|_| ControlError::Unexpected(format!("origin {} has media address {media:?}", claim.owner)))?;
            Ok(Some(Owner { claim, media }))
        }
        ForwardReply::Owner { .. } => Ok(None),
        ForwardReply::Failed { kind, message } => Err(ControlError::Failed { kind, message }),
        other => Err(ControlError::Unexpected(format!("{other:?}"))),
    }
}

/// Sends control requests to the cluster.
#[derive(Clone)]
pub struct Control {
    peers: PeerClient,
    origins: std::sync::Arc<[SocketAddr]>,
    /// The origin to try first: the last one that answered a write.
    preferred: std::sync::Arc<AtomicUsize>,
    deadline: Duration,
}

impl Control {
    pub fn new(origins: Vec<SocketAddr>, peers: PeerClient, deadline: Duration) -> Self {
        Control { peers, origins: origins.into(), preferred: std::sync::Arc::default(), deadline }
    }

    /// Index (in the configured origins) of the origin that answered the last write:
    /// the leader, as far as this edge knows.
    pub fn likely_leader(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// Asks origins in turn, from the preferred one, until one answers with something
    /// other than `NotLeader`, within the deadline.
    async fn send(&self, req: &Forward) -> Result<ForwardReply, ControlError> {
        self.send_within(req, ATTEMPT_TIMEOUT, self.deadline).await
    }

    /// [`send`](Self::send) with its own per-attempt timeout and overall deadline.
    async fn send_within(
        &self,
        req: &Forward,
        attempt_timeout: Duration,
        deadline: Duration,
    ) -> Result<ForwardReply, ControlError> {
        let body = rpc::encode(req);
        let started = Instant::now();
        let n = self.origins.len();
        loop {
            let first = self.preferred.load(Ordering::Relaxed);
            for i in 0..n {
                let at = (first + i) % n;
                let url = self.peers.url(self.origins[at], "/raft/forward");
                let attempt = self.peers.post(url).timeout(attempt_timeout).body(body.clone()).send();
                let remaining = deadline.saturating_sub(started.elapsed());
                let Ok(Ok(res)) = tokio::time::timeout(remaining, attempt).await else { continue };
                let Ok(bytes) = peer::body_within(res, rpc::MAX_RPC_BODY).await else { continue };
                match rpc::decode::<ForwardReply>(&bytes) {
                    Ok(ForwardReply::NotLeader { .. }) => {}
                    Ok(reply) => {
                        self.preferred.store(at, Ordering::Relaxed);
                        return Ok(reply);
                    }
                    Err(e) => tracing::debug!(origin = %self.origins[at], error = %e, "unreadable control answer"),
                }
                if started.elapsed() >= deadline {
                    break;
                }
            }
            if started.elapsed() + ROUND_PAUSE >= deadline {
                return Err(ControlError::Unavailable(deadline));
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// A write through the leader; the state machine's response.
    async fn write(&self, req: &Forward) -> Result<Response, ControlError> {
        match self.send(req).await? {
            ForwardReply::Written(response) => Ok(response),
            ForwardReply::Failed { kind, message } => Err(ControlError::Failed { kind, message }),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Applies `command` through the leader (a fresh request id, kept across retries);
    /// the state machine's answer once committed.
    pub async fn write_command(&self, command: Command) -> Result<Response, ControlError> {
        self.write(&Forward::Write(Request { id: RequestId::random(), at_ms: 0, command })).await
    }

    /// Claims `stream` for a publishing session (the leader checks `key` and picks the
    /// owner).
    pub async fn claim(
        &self,
        stream: &StreamKey,
        edge: &str,
        session: &str,
        takeover: bool,
        key: Option<String>,
    ) -> Result<Response, ControlError> {
        let req = Forward::Claim {
            id: RequestId::random(),
            stream: stream.clone(),
            edge: edge.to_owned(),
            session: session.to_owned(),
            takeover,
            key,
        };
        self.write(&req).await
    }

    /// Releases `stream` if it is still held under `epoch`.
    pub async fn release(&self, stream: &StreamKey, epoch: u64) -> Result<Response, ControlError> {
        let command = Command::ReleaseStream { stream: stream.clone(), epoch };
        self.write(&Forward::Write(Request { id: RequestId::random(), at_ms: 0, command })).await
    }

    /// Asks the leader to move `stream`, held at `expected_epoch`, off `away_from` (an
    /// origin this edge lost its link to). One request id across retries.
    pub async fn reassign(
        &self,
        stream: &StreamKey,
        expected_epoch: u64,
        away_from: raftcast_raft::NodeId,
    ) -> Result<Response, ControlError> {
        let req = Forward::Reassign { id: RequestId::random(), stream: stream.clone(), expected_epoch, away_from };
        self.write(&req).await
    }

    /// Every origin's media-link address, as the first origin to answer knows them.
    pub async fn origins(&self) -> Result<Vec<(raftcast_raft::NodeId, SocketAddr)>, ControlError> {
        match self.send(&Forward::Origins).await? {
            ForwardReply::Origins(all) => {
                Ok(all.into_iter().filter_map(|(id, a)| Some((id, a.parse().ok()?))).collect())
            }
            ForwardReply::Failed { kind, message } => Err(ControlError::Failed { kind, message }),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Who owns `stream` and where its media link is, as the first origin to answer
    /// knows it (`None`: not published).
    pub async fn lookup(&self, stream: &StreamKey) -> Result<Option<Owner>, ControlError> {
        owner_of(self.send(&Forward::Lookup { stream: stream.clone() }).await?)
    }

    /// Looks `stream` up until an origin knows it at `epoch` or later: right after a
    /// claim commits, a follower may not have applied it yet.
    pub async fn lookup_at_least(&self, stream: &StreamKey, epoch: u64) -> Result<Owner, ControlError> {
        let started = Instant::now();
        loop {
            match self.lookup(stream).await? {
                Some(owner) if owner.claim.epoch >= epoch => return Ok(owner),
                _ if started.elapsed() >= self.deadline => return Err(ControlError::Unavailable(self.deadline)),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
