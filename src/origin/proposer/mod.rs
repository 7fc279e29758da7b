//! The client of the leader: gets writes, membership changes and linearizable reads to
//! the leader, from any origin.
//!
//! [`Proposer::submit`] runs a request here if this node leads, otherwise forwards it
//! to the leader over `/raft/forward` ([`forward`]), and retries — across elections,
//! on the new leader — until it succeeds, fails for good, or the deadline passes. A
//! retried write keeps its request id, so the state machine applies it at most once.
//!
//! What the leader does with each request is elsewhere, one job per module:
//! [`Committer`] (writes and read indexes: admission, batching, proposal),
//! [`Ownership`] (claims, placement, reassignment, owner lookups and watches) and
//! [`Membership`]. [`Proposer::execute_here`] only dispatches.
//!
//! Some requests are answered by whichever node receives them, from its own applied
//! state, and never travel to the leader: owner lookups and stream watches
//! ([`Forward::answered_locally`]).

pub(crate) mod forward;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftcast_raft::typ::Raft;
use raftcast_raft::{FailKind, Forward, ForwardReply, NodeAddr, NodeId, Request, RequestId, Response};

use super::commit::batch::MAX_BATCH;
use super::commit::{failed, Admission, Committer};
use super::membership::Membership;
use super::metrics::{Metrics, ResultLabel};
use super::ownership::{ClaimRequest, Ownership, Reason, Target};
use crate::backoff::Backoff;
use crate::peer::PeerClient;
use forward::Forwarder;

/// How long one attempt of a write or read may take before it is retried (with the
/// same request id), so a leader that went silent costs about this much, not the whole
/// deadline. Membership changes get the whole deadline: a learner may take a while to
/// catch up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between retries while no leader is known; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader answered within the deadline (election, partition, minority), and the
    /// request was never proposed.
    #[error("the cluster has no reachable leader (waited {0:?})")]
    Unavailable(Duration),
    /// A write was sent towards a leader but no answer came within the deadline: it
    /// may or may not be applied. Retrying with the same request id is safe.
    #[error(
        "no answer within {0:?}: the write may or may not have been applied; retry it with the same Idempotency-Key"
    )]
    Uncertain(Duration),
    /// The request cannot succeed as given.
    #[error("{message}")]
    Failed { kind: FailKind, message: String },
}

/// Submits requests to the leader. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    id: NodeId,
    deadline: Duration,
    metrics: Arc<Metrics>,
    committer: Committer,
    ownership: Ownership,
    membership: Membership,
    forwarder: Forwarder,
}

impl Proposer {
    // Each argument is a distinct collaborator wired once in `origin::run`; a parameter
    // struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        id: NodeId,
        peers: PeerClient,
        deadline: Duration,
        metrics: Arc<Metrics>,
        committer: Committer,
        ownership: Ownership,
        membership: Membership,
    ) -> Self {
        let forwarder = Forwarder::new(raft.clone(), peers, metrics.clone(), committer.clone());
        Proposer { raft, id, deadline, metrics, committer, ownership, membership, forwarder }
    }

    /// Admission control of this node's writes.
    pub fn admission(&self) -> &Admission {
        self.committer.admission()
    }

    /// `WatchStream` requests waiting on this origin now.
    pub fn stream_watches(&self) -> usize {
        self.ownership.stream_watches()
    }

    /// Proposes a command and returns the state machine's answer.
    pub async fn write(&self, command: raftcast_raft::Command) -> Result<Response, ProposeError> {
        self.write_as(RequestId::random(), command).await
    }

    /// Proposes a command under a caller-chosen request id: a retry with the same id
    /// gets the first answer and is not applied twice.
    pub async fn write_as(&self, id: RequestId, command: raftcast_raft::Command) -> Result<Response, ProposeError> {
        let req = Request { id, at_ms: 0, command };
        match self.submit(Forward::Write(req)).await? {
            ForwardReply::Written(resp) => Ok(resp),
            other => Err(unexpected(other)),
        }
    }

    pub async fn add_learner(&self, id: NodeId, addr: NodeAddr) -> Result<(), ProposeError> {
        self.submit(Forward::AddLearner { id, addr }).await.map(drop)
    }

    pub async fn set_voters(&self, ids: BTreeSet<NodeId>) -> Result<(), ProposeError> {
        self.submit(Forward::SetVoters { ids }).await.map(drop)
    }

    pub async fn remove_node(&self, id: NodeId) -> Result<(), ProposeError> {
        self.submit(Forward::RemoveNode { id }).await.map(drop)
    }

    /// Returns once this node has applied everything committed before the call: a
    /// read of local state after it is linearizable (ReadIndex, also on followers).
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let started = Instant::now();
        let index = match self.submit(Forward::ReadIndex).await? {
            ForwardReply::ReadIndex(index) => index,
            other => return Err(unexpected(other)),
        };
        let remaining = self.deadline.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(drop)
            .map_err(|_| ProposeError::Unavailable(self.deadline))
    }

    /// Runs `req` where the leader is, retrying until the deadline. Requests answered
    /// locally ([`Forward::answered_locally`]) are answered here, once.
    pub async fn submit(&self, req: Forward) -> Result<ForwardReply, ProposeError> {
        if req.answered_locally() {
            return match self.execute_here(&req).await {
                ForwardReply::Failed { kind, message } => Err(ProposeError::Failed { kind, message }),
                reply => Ok(reply),
            };
        }
        let started = Instant::now();
        let remaining = || {
            let left = self.deadline.saturating_sub(started.elapsed());
            match req {
                Forward::Write(_)
                | Forward::ReadIndex
                | Forward::Claim { .. }
                | Forward::Reassign { .. }
                | Forward::Move { .. } => left.min(ATTEMPT_TIMEOUT),
                _ => left,
            }
        };
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        // Whether some attempt may have been proposed without our seeing the answer.
        let mut uncertain = false;
        loop {
            // Bounded even here: an isolated ex-leader holds uncommitted entries until
            // they are committed or truncated, which may take arbitrarily long.
            let reply = match tokio::time::timeout(remaining(), self.execute_here(&req)).await {
                Ok(ForwardReply::NotLeader { leader: Some(leader) }) if leader != self.id => {
                    let (reply, delivered) = match &req {
                        Forward::Write(write) => self.forwarder.forward_write(leader, write.clone(), remaining()).await,
                        _ => self.forwarder.forward(leader, &req, remaining()).await,
                    };
                    uncertain |= delivered && matches!(reply, ForwardReply::NotLeader { leader: None });
                    reply
                }
                Ok(reply) => reply,
                Err(_) => {
                    uncertain = true;
                    ForwardReply::NotLeader { leader: None }
                }
            };
            match reply {
                ForwardReply::NotLeader { .. } => {}
                ForwardReply::Failed { kind, message } => return Err(ProposeError::Failed { kind, message }),
                ok => return Ok(ok),
            }
            if started.elapsed() + backoff.peek() > self.deadline {
                let is_write = matches!(
                    req,
                    Forward::Write(_) | Forward::Claim { .. } | Forward::Reassign { .. } | Forward::Move { .. }
                );
                if is_write {
                    self.metrics.proposals.get_or_create(&ResultLabel { result: "failed" }).inc();
                }
                return Err(if uncertain && is_write {
                    ProposeError::Uncertain(self.deadline)
                } else {
                    ProposeError::Unavailable(self.deadline)
                });
            }
            tokio::time::sleep(backoff.next_pause()).await;
        }
    }

    /// Executes `req` if this node leads; otherwise says who does.
    pub async fn execute_here(&self, req: &Forward) -> ForwardReply {
        match req {
            Forward::Write(req) => self.committer.commit(req).await,
            Forward::WriteBatch(reqs) if reqs.len() > MAX_BATCH => {
                failed(FailKind::BadRequest, format!("{} writes in one batch; at most {MAX_BATCH}", reqs.len()))
            }
            Forward::WriteBatch(reqs) => {
                ForwardReply::Batch(futures::future::join_all(reqs.iter().map(|req| self.committer.commit(req))).await)
            }
            Forward::ReadIndex => self.committer.read_index().await,
            Forward::Origins => self.membership.origins(),
            Forward::Lookup { stream } => self.ownership.lookup(stream),
            Forward::WatchStream { stream, known_epoch, wait_ms } => {
                self.ownership.watch(stream, *known_epoch, *wait_ms).await
            }
            Forward::Reassign { id, stream, expected_epoch, away_from } => {
                self.ownership.reassign(*id, stream, *expected_epoch, *away_from, Reason::Edge).await
            }
            Forward::Move { id, stream, expected_epoch, to } => {
                let target = to.map_or(Target::Elsewhere, Target::To);
                self.ownership.move_claim(*id, stream, *expected_epoch, target, Reason::Planned).await
            }
            Forward::Claim { id, stream, edge, session, takeover, key } => {
                let claim = ClaimRequest { id: *id, stream, edge, session, takeover: *takeover, key: key.as_deref() };
                self.ownership.claim(claim).await
            }
            Forward::AddLearner { id, addr } => self.membership.add_learner(*id, addr).await,
            Forward::SetVoters { ids } => self.membership.set_voters(ids).await,
            Forward::RemoveNode { id } => self.membership.remove_node(*id).await,
        }
    }

    /// Executes `req` here, and passes it on to the leader once if this node does not
    /// lead (for a request an edge sent; see `api::forward`).
    pub async fn execute_or_pass_on(&self, req: &Forward, timeout: Duration) -> ForwardReply {
        match self.execute_here(req).await {
            ForwardReply::NotLeader { leader: Some(leader) } if leader != self.id => {
                self.forwarder.forward(leader, req, timeout).await.0
            }
            reply => reply,
        }
    }

    /// The client to other origins (its cluster secret checks forwarded requests).
    pub fn peers(&self) -> &PeerClient {
        self.forwarder.peers()
    }
}

fn unexpected(reply: ForwardReply) -> ProposeError {
    ProposeError::Failed {
        kind: FailKind::Unavailable,
        message: format!("unexpected answer from the leader: {reply:?}"),
    }
}
