//! Writes and reads executed on this node as the leader: what every forwarded or local
//! request ends in once it reaches the leader.
//!
//! [`Committer::commit`] refuses a write the applied state already refuses (a quota, a
//! limit: no log entry for it), admits it against this node's byte budget and the
//! leader's apply lag ([`Admission`]), then queues it for the batcher ([`batch`]), which
//! proposes what is queued as one log entry. On a node that does not lead, openraft
//! refuses the proposal and the caller gets `NotLeader` with the leader's id.

mod admission;
pub(crate) mod batch;

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use raftcast_raft::typ::Raft;
use raftcast_raft::{FailKind, ForwardReply, NodeAddr, NodeId, Request, Response};
use raftcast_storage::StateHandle;
use tokio::sync::{mpsc, oneshot};

pub use admission::{admitted_by_budget, encoded_len, Admission, Refusal};
use batch::Pending;

use super::config::WriteLimits;
use super::metrics::{Metrics, ReasonLabel, ResultLabel};

/// Commits requests on this node while it leads. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    raft: Raft,
    state: StateHandle,
    metrics: Arc<Metrics>,
    batcher: mpsc::Sender<Pending>,
    admission: Admission,
}

impl Committer {
    /// Starts the batcher.
    pub fn new(raft: Raft, state: StateHandle, metrics: Arc<Metrics>, limits: WriteLimits) -> Self {
        let (batcher, queue) = mpsc::channel(batch::BATCH_QUEUE);
        tokio::spawn(batch::batch_loop(raft.clone(), queue, metrics.clone(), limits.max_entry_bytes));
        Committer { raft, state, metrics, batcher, admission: Admission::new(limits) }
    }

    /// Admission control of this node's writes.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Counts a refused write and returns its answer.
    pub fn refuse(&self, refusal: Refusal) -> ForwardReply {
        self.metrics.writes_refused.get_or_create(&ReasonLabel { reason: refusal.label() }).inc();
        refusal.reply(self.admission.limits())
    }

    /// Queues `request` for the batcher and waits for its answer (unless it is
    /// [refused ahead](Self::refused_ahead) or admission refuses it).
    pub async fn commit(&self, request: &Request) -> ForwardReply {
        if let Some(refused) = self.refused_ahead(request) {
            return refused;
        }
        let bytes = encoded_len(request);
        let mut permit = None;
        if admitted_by_budget(&request.command) {
            if let Err(refusal) = self.admission.check_lag(&self.raft.metrics().borrow()) {
                return self.refuse(refusal);
            }
            match self.admission.reserve(bytes) {
                Ok(p) => permit = Some(p),
                Err(refusal) => return self.refuse(refusal),
            }
        }
        let (reply, answer) = oneshot::channel();
        if self.batcher.send(Pending { request: request.clone(), bytes, reply, permit }).await.is_err() {
            return failed(FailKind::Unavailable, "the proposer has stopped");
        }
        answer.await.unwrap_or_else(|_| failed(FailKind::Unavailable, "the proposer has stopped"))
    }

    /// The refusal of `request` when the local state already refuses it for a quota or
    /// a limit ([`StateMachine::refusal_ahead`]): answered on the origin that received
    /// it, leader or not, so a flood of such writes costs no log entries. A retry of a
    /// write that applied gets its first answer from the log instead.
    ///
    /// [`StateMachine::refusal_ahead`]: raftcast_raft::StateMachine::refusal_ahead
    fn refused_ahead(&self, request: &Request) -> Option<ForwardReply> {
        let rejection = self.state.read(|sm| match sm.answered(&request.id) {
            Some(_) => None,
            None => sm.refusal_ahead(&request.command),
        })?;
        self.metrics.proposals.get_or_create(&ResultLabel { result: "refused_ahead" }).inc();
        Some(ForwardReply::Written(Response::Rejected(rejection)))
    }

    /// The index a linearizable read must wait for, if this node leads.
    pub async fn read_index(&self) -> ForwardReply {
        // openraft's read index is max(this leader's first entry, committed). A leader
        // restarted in its own term reuses an old first entry, and its committed index
        // restarts at what it had applied: an entry it committed before the restart
        // would not be waited for (a stale read, found by tests/shared_objects.rs).
        // Every entry in the leader's log when the read starts is waited for instead;
        // entries it cannot commit fail the read once it is no longer the leader.
        let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        match self.raft.ensure_linearizable().await {
            Ok(read) => ForwardReply::ReadIndex(read.map_or(0, |l| l.index).max(last)),
            Err(e) => leadership_error(e),
        }
    }
}

/// The leader's clock, ms since the Unix epoch: it stamps proposals (the state machine
/// never reads a clock) and judges how young a claim is.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn failed(kind: FailKind, message: impl Into<String>) -> ForwardReply {
    ForwardReply::Failed { kind, message: message.into() }
}

/// The answer to a request only a leader with a quorum may execute, when this node
/// cannot.
pub fn leadership_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>) -> ForwardReply {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => ForwardReply::NotLeader { leader: f.leader_id },
        // Leader without a quorum right now: retry (maybe elsewhere) until the deadline.
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => ForwardReply::NotLeader { leader: None },
        RaftError::Fatal(e) => failed(FailKind::Unavailable, format!("raft stopped: {e}")),
    }
}
