//! Getting writes, membership changes and linearizable reads to the leader, from any
//! origin.
//!
//! [`Proposer::submit`] runs a request here if this node leads, otherwise forwards it
//! to the leader over `/raft/forward`, and retries — across elections, on the new
//! leader — until it succeeds, fails for good, or the deadline passes. A retried write
//! keeps its request id, so the state machine applies it at most once.
//!
//! A follower forwards writes in batches ([`Forward::WriteBatch`]): at most
//! [`FORWARDS_IN_FLIGHT`] requests to the leader at a time, each carrying every write
//! that arrived while the previous ones were out. Under load that is one HTTP exchange
//! for many writes instead of one each (the leader puts them in one log entry anyway);
//! a lone write goes out at once, alone.
//!
//! Writes are admitted before they are queued (admission control, [`Admission`]): a
//! write that would take this node's waiting writes over `--max-pending-write-bytes`,
//! or that reaches a leader holding more than `--max-apply-lag` entries it has not
//! applied, is refused at once with [`FailKind::Overloaded`] and never proposed. Log
//! entries and forwarded batches close at `--max-entry-bytes` as well as at
//! [`MAX_BATCH`] requests. Memory held by the write path is thereby bounded in bytes,
//! and a flood of large values slows nobody's heartbeats.
//!
//! Some requests are answered by whichever node receives them, from its own applied
//! state, and never travel to the leader: owner lookups and stream watches
//! ([`Forward::answered_locally`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response as HttpResponse;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use raftcast_raft::rpc;
use raftcast_raft::typ::Raft;
use raftcast_raft::{
    Command, FailKind, Forward, ForwardReply, NodeAddr, NodeId, Proposal, Request, RequestId, Response, StreamKey,
};
use raftcast_storage::StateHandle;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::config::WriteLimits;
use super::failover::Reason;
use super::liveness::Liveness;
use super::metrics::{Metrics, ReasonLabel, ResultLabel};
use super::watch::StreamWatch;
use crate::backoff::Backoff;
use crate::peer::PeerClient;

/// Most requests the leader puts into one log entry.
pub const MAX_BATCH: usize = 256;
/// Requests waiting for the batcher. When full, callers wait: Raft sets the pace. The
/// bytes they hold are bounded separately, by admission (`--max-pending-write-bytes`).
pub const BATCH_QUEUE: usize = 4096;
/// Batches proposed at once. openraft 0.9 appends one entry at a time anyway; a second
/// batch in flight keeps the next one ready while the first is flushed.
const BATCHES_IN_FLIGHT: usize = 2;

/// Batches of writes a follower has on their way to the leader at once; writes that
/// arrive meanwhile wait and leave together in the next.
const FORWARDS_IN_FLIGHT: usize = 2;

/// How long one attempt of a write or read may take before it is retried (with the
/// same request id), so a leader that went silent costs about this much, not the whole
/// deadline. Membership changes get the whole deadline: a learner may take a while to
/// catch up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The leader answers a forwarded membership change this long before the forwarding
/// node's own deadline, so its answer ("not caught up") arrives rather than a timeout.
const ANSWER_MARGIN: Duration = Duration::from_millis(750);

/// A follower this many entries behind the leader is not given new streams (it is
/// probably catching up after a restart).
const LIVE_LAG: u64 = 64;

/// Largest `/raft/forward` body. Forwarded writes come from admin requests of at most
/// 256 KiB of JSON, which bincode never makes more than about 5 times larger; edges'
/// requests are a few hundred bytes. Checked after the cluster secret, so nobody
/// without it makes an origin buffer anything.
pub const MAX_FORWARD_BODY: usize = 4 * 1024 * 1024;

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
    /// Requests to the leader (with the cluster secret, which also checks requests).
    peers: PeerClient,
    deadline: Duration,
    metrics: Arc<Metrics>,
    batcher: mpsc::Sender<Pending>,
    state: StateHandle,
    /// Live stream facts, to tell a dead publishing session from a live one when a
    /// publisher asks to take a stream over (set once the link server exists).
    live: Arc<std::sync::OnceLock<super::live::LiveFacts>>,
    /// Streams this leader moved recently: a takeover must not take them (see
    /// `holder_alive`).
    moves: Arc<Mutex<Moves>>,
    /// Which origins answer the leader: placement gives streams only to those.
    liveness: Liveness,
    /// Answers `Forward::WatchStream`.
    watch: StreamWatch,
    /// Writes on their way to the leader, batched (see [`forward_loop`]).
    forwards: mpsc::Sender<Outgoing>,
    /// Admission control of writes.
    admission: Admission,
}

/// Admission control: the byte budget of writes waiting on this node, and the leader's
/// unapplied-entries bound. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    limits: WriteLimits,
    /// One permit per byte of writes waiting here (queued, proposed, or forwarded and
    /// not yet answered); a write holds its permits until it is answered.
    bytes: Arc<Semaphore>,
}

/// Why admission refused a write (the `reason` label of `raftcast_raft_writes_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The writes waiting on this node hold `--max-pending-write-bytes`.
    PendingBytes,
    /// The leader holds more than `--max-apply-lag` entries it has not applied: a
    /// majority does not keep up with replication, or apply does not keep up.
    ApplyLag,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PendingBytes => "pending_bytes",
            Refusal::ApplyLag => "apply_lag",
        }
    }

    fn reply(self, limits: &WriteLimits) -> ForwardReply {
        let why = match self {
            Refusal::PendingBytes => {
                format!("more than {} bytes of writes are waiting on this origin", limits.max_pending_bytes)
            }
            Refusal::ApplyLag => {
                format!("the leader has more than {} log entries not yet applied", limits.max_apply_lag)
            }
        };
        failed(FailKind::Overloaded, format!("overloaded: {why}; retry in a second"))
    }
}

impl Admission {
    pub fn new(limits: WriteLimits) -> Self {
        Admission { limits, bytes: Arc::new(Semaphore::new(limits.max_pending_bytes)) }
    }

    /// Reserves `bytes` of the pending-writes budget (a write larger than the whole
    /// budget reserves all of it, so it still goes when nothing else waits).
    pub fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Refusal> {
        let n = bytes.clamp(1, self.limits.max_pending_bytes);
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.bytes.clone().try_acquire_many_owned(n).map_err(|_| Refusal::PendingBytes)
    }

    /// Bytes of writes waiting on this node now.
    pub fn pending_bytes(&self) -> usize {
        self.limits.max_pending_bytes.saturating_sub(self.bytes.available_permits())
    }

    /// Whether a leader with these metrics takes new writes.
    pub fn check_lag(&self, m: &raftcast_raft::typ::RaftMetrics) -> Result<(), Refusal> {
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        if m.current_leader == Some(m.id) && last.saturating_sub(applied) > self.limits.max_apply_lag {
            return Err(Refusal::ApplyLag);
        }
        Ok(())
    }
}

/// Whether admission applies to `command`. Stream-ownership commands are exempt: they
/// are a few hundred bytes, one per publish, and refusing them would stop publishers
/// because shared-object writers flood the log.
fn admitted_by_budget(command: &Command) -> bool {
    command.batchable()
}

/// The bytes a request takes in a log entry (its bincode encoding).
fn encoded_len(request: &Request) -> usize {
    rpc::encode(request).len()
}

/// A write this follower passes on to `leader`, and where the answer goes (with
/// whether the write may have reached the leader).
struct Outgoing {
    leader: NodeId,
    request: Request,
    /// Encoded size of `request`.
    bytes: usize,
    reply: oneshot::Sender<(ForwardReply, bool)>,
}

/// A claim younger than this counts as alive even before its publisher attached: the
/// edge is still between its claim and its `Publish`. The same holds for a stream
/// moved to a new owner this recently.
const TAKEOVER_YOUNG_CLAIM: Duration = Duration::from_secs(3);

/// When this leader last re-assigned each stream (see `holder_alive`).
type Moves = HashMap<StreamKey, Instant>;

/// A request waiting to be proposed, and where its answer goes.
struct Pending {
    request: Request,
    /// Encoded size of `request`.
    bytes: usize,
    reply: oneshot::Sender<ForwardReply>,
    /// This write's share of the pending-bytes budget, released once it is answered.
    permit: Option<OwnedSemaphorePermit>,
}

fn failed(kind: FailKind, message: impl Into<String>) -> ForwardReply {
    ForwardReply::Failed { kind, message: message.into() }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
        state: StateHandle,
        liveness: Liveness,
        watch: StreamWatch,
        limits: WriteLimits,
    ) -> Self {
        let (batcher, queue) = mpsc::channel(BATCH_QUEUE);
        tokio::spawn(batch_loop(raft.clone(), queue, metrics.clone(), limits.max_entry_bytes));
        let (forwards, outgoing) = mpsc::channel(BATCH_QUEUE);
        let proposer = Proposer {
            raft,
            id,
            peers,
            deadline,
            metrics,
            batcher,
            state,
            live: Arc::default(),
            moves: Arc::default(),
            liveness,
            watch,
            forwards,
            admission: Admission::new(limits),
        };
        tokio::spawn(forward_loop(proposer.clone(), outgoing));
        proposer
    }

    /// Admission control of this node's writes.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Counts a refused write and returns its answer.
    fn refuse(&self, refusal: Refusal) -> ForwardReply {
        self.metrics.writes_refused.get_or_create(&ReasonLabel { reason: refusal.label() }).inc();
        refusal.reply(&self.admission.limits)
    }

    /// `WatchStream` requests waiting on this origin now.
    pub fn stream_watches(&self) -> usize {
        self.watch.waiting()
    }

    /// Gives the proposer the live stream facts it consults for takeovers.
    pub fn set_live(&self, live: super::live::LiveFacts) {
        let _ = self.live.set(live);
    }

    /// Whether the session holding `claim` still publishes: its owner has a publisher
    /// attached under the claim's epoch, or the claim is too young to tell. An owner
    /// that does not answer cannot be receiving that publisher's media: dead.
    async fn holder_alive(&self, stream: &StreamKey, claim: &raftcast_raft::command::StreamClaim) -> bool {
        if now_ms().saturating_sub(claim.since_ms) < TAKEOVER_YOUNG_CLAIM.as_millis() as u64 {
            return true;
        }
        // A stream this leader moved moments ago is between owners: its publisher is
        // re-attaching, not gone. A new leader does not know what was moved before it,
        // so it treats every claim that way for its first moments.
        if self.recently_moved(stream) {
            return true;
        }
        let Some(live) = self.live.get() else { return true };
        let http = self.node_addr(claim.owner).map(|a| a.http);
        let facts = live.gather(BTreeMap::from([(claim.owner, http)])).await;
        match facts.get(&claim.owner) {
            Some(Some(streams)) => streams.get(stream).is_some_and(|s| s.epoch == Some(claim.epoch)),
            // The owner does not answer: its publisher may be alive and moving to a new
            // owner (the move comes within the owner-dead bound). Only an owner that
            // answers can say its publisher is gone.
            _ => true,
        }
    }

    /// Whether `stream` was re-assigned by this leader, or this node became leader,
    /// within [`TAKEOVER_YOUNG_CLAIM`].
    fn recently_moved(&self, stream: &StreamKey) -> bool {
        let now = Instant::now();
        let leading_since = self.liveness.observe(&self.raft.metrics().borrow(), now);
        if leading_since.is_none_or(|since| now.duration_since(since) < TAKEOVER_YOUNG_CLAIM) {
            return true;
        }
        let moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves.get(stream).is_some_and(|at| at.elapsed() < TAKEOVER_YOUNG_CLAIM)
    }

    fn note_moved(&self, stream: &StreamKey) {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves.retain(|_, at| at.elapsed() < TAKEOVER_YOUNG_CLAIM);
        moves.insert(stream.clone(), Instant::now());
    }

    /// Proposes a command and returns the state machine's answer.
    pub async fn write(&self, command: Command) -> Result<Response, ProposeError> {
        self.write_as(RequestId::random(), command).await
    }

    /// Proposes a command under a caller-chosen request id: a retry with the same id
    /// gets the first answer and is not applied twice.
    pub async fn write_as(&self, id: RequestId, command: Command) -> Result<Response, ProposeError> {
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

    /// The voters that may own streams: this node, and followers that answered within
    /// `--owner-dead-after-ms` (see [`Liveness`]) and are at most [`LIVE_LAG`] entries
    /// behind.
    fn live_voters(&self) -> (NodeId, Vec<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        let now = Instant::now();
        // Not leading (a race with losing leadership): nobody has been judged yet.
        let since = self.liveness.observe(&m, now).unwrap_or(now);
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let live = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| {
                *v == m.id
                    || (self.liveness.reachable(*v, since, now)
                        && replication
                            .get(v)
                            .is_some_and(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)) <= LIVE_LAG))
            })
            .collect();
        (m.id, live)
    }

    /// The origin that should own `stream`: the origin a pin rule names when it is a
    /// live voter, otherwise (see [`place`]) the least loaded live voter; never
    /// `exclude`. `None` when no live voter but `exclude` exists.
    fn pick_owner(&self, stream: &StreamKey, exclude: Option<NodeId>) -> Option<NodeId> {
        let (me, mut live) = self.live_voters();
        live.retain(|v| Some(*v) != exclude);
        if live.is_empty() {
            return None;
        }
        let (load, pin) = self.state.read(|sm| {
            let mut load = HashMap::<NodeId, usize>::new();
            for claim in sm.streams.values() {
                *load.entry(claim.owner).or_default() += 1;
            }
            (load, sm.pin_for(stream).map(|(scope, origin)| (scope.clone(), origin)))
        });
        let rule = || pin.as_ref().map(|(scope, _)| scope.to_string()).unwrap_or_default();
        Some(match place(stream, me, &live, &load, pin.as_ref().map(|(_, origin)| *origin)) {
            Placement::Pinned(owner) => {
                tracing::debug!(%stream, owner, pin = %rule(), "placed by a pin rule");
                owner
            }
            Placement::ByLoad { owner, pinned_not_live: Some(pinned) } if Some(pinned) == exclude => {
                tracing::info!(%stream, pin = %rule(), pinned, owner, "moving a pinned stream off its origin");
                owner
            }
            Placement::ByLoad { owner, pinned_not_live: Some(pinned) } => {
                tracing::warn!(
                    %stream, pin = %rule(), pinned, owner, ?live,
                    "the pinned origin is not a live voter; placing the stream by load instead"
                );
                owner
            }
            Placement::ByLoad { owner, pinned_not_live: None } => owner,
        })
    }

    /// Moves `stream` from its claim at `expected_epoch` to a live voter other than
    /// `away_from`, as [`Forward::Reassign`] describes; only on the leader (otherwise
    /// `NotLeader`), never forwarded. A request id that already applied gets its first
    /// answer without any check or proposal.
    pub async fn reassign(
        &self,
        id: RequestId,
        stream: &StreamKey,
        expected_epoch: u64,
        away_from: NodeId,
        reason: Reason,
    ) -> ForwardReply {
        // Leading and up to date, so the epoch check and the placement use current
        // state (and, on a retry, the first attempt's answer is applied if it was).
        if let Err(e) = self.raft.ensure_linearizable().await {
            return leadership_error(e);
        }
        let (answered, current) =
            self.state.read(|sm| (sm.answered(&id).cloned(), sm.streams.get(stream).map(|c| c.epoch)));
        if let Some(first) = answered {
            return ForwardReply::Written(first);
        }
        if current != Some(expected_epoch) {
            return ForwardReply::Written(Response::Rejected(raftcast_raft::Rejection::StaleEpoch { current }));
        }
        let Some(owner) = self.pick_owner(stream, Some(away_from)) else {
            return failed(
                FailKind::Unavailable,
                format!("no live origin other than {away_from} can take {stream}; retry when one is back"),
            );
        };
        let command = Command::ReassignStream { stream: stream.clone(), expected_epoch, owner };
        let reply = self.write_here(&Request { id, at_ms: 0, command }).await;
        if let ForwardReply::Written(Response::Claimed(claim)) = &reply {
            self.note_moved(stream);
            self.metrics.streams_reassigned.get_or_create(&ReasonLabel { reason: reason.label() }).inc();
            tracing::info!(
                %stream, from = away_from, to = claim.owner, epoch = claim.epoch, expected_epoch,
                reason = reason.label(), "stream re-assigned"
            );
        }
        reply
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
                Forward::Write(_) | Forward::ReadIndex | Forward::Claim { .. } | Forward::Reassign { .. } => {
                    left.min(ATTEMPT_TIMEOUT)
                }
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
                        Forward::Write(write) => self.forward_write(leader, write.clone(), remaining()).await,
                        _ => self.forward(leader, &req, remaining()).await,
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
                let is_write = matches!(req, Forward::Write(_) | Forward::Claim { .. } | Forward::Reassign { .. });
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

    /// Sends `req` to `leader`'s `/raft/forward`. Transport failures read as "no
    /// leader known", so the caller retries; the flag says whether the request may
    /// have reached the leader (anything but a refused connection).
    async fn forward(&self, leader: NodeId, req: &Forward, remaining: Duration) -> (ForwardReply, bool) {
        self.forward_encoded(leader, rpc::encode(req), remaining).await
    }

    /// [`Proposer::forward`] of a request already encoded.
    async fn forward_encoded(&self, leader: NodeId, body: Vec<u8>, remaining: Duration) -> (ForwardReply, bool) {
        let not_leader = ForwardReply::NotLeader { leader: None };
        let Some(addr) = self.node_addr(leader) else { return (not_leader, false) };
        let res = self
            .peers
            .post(format!("http://{}/raft/forward", addr.http))
            .header(FORWARDED_HEADER, "1")
            .timeout(remaining.max(Duration::from_millis(50)))
            .body(body)
            .send()
            .await;
        let body = match res {
            Ok(res) if res.status().is_success() => res.bytes().await,
            Ok(res) => {
                tracing::warn!(leader, status = %res.status(), "leader refused a forwarded request");
                return (not_leader, false);
            }
            Err(e) => {
                tracing::debug!(leader, error = %e, "forwarding to the leader failed");
                return (not_leader, !e.is_connect());
            }
        };
        match body.map_err(|e| e.to_string()).and_then(|b| rpc::decode::<ForwardReply>(&b).map_err(|e| e.to_string())) {
            Ok(reply) => (reply, false),
            Err(e) => {
                tracing::warn!(leader, error = %e, "unreadable answer from the leader");
                (not_leader, true)
            }
        }
    }

    /// Passes a write on to `leader` in the next batch (see [`forward_loop`]); answers
    /// like [`Proposer::forward`].
    async fn forward_write(&self, leader: NodeId, request: Request, remaining: Duration) -> (ForwardReply, bool) {
        let bytes = encoded_len(&request);
        // Held until the answer comes (or this attempt gives up): the bytes waiting on
        // this follower are bounded, and a flood is refused here, before the leader.
        let _permit = if admitted_by_budget(&request.command) {
            match self.admission.reserve(bytes) {
                Ok(permit) => Some(permit),
                Err(refusal) => return (self.refuse(refusal), false),
            }
        } else {
            None
        };
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing { leader, request, bytes, reply };
        if tokio::time::timeout(remaining, self.forwards.send(outgoing)).await.is_err() {
            return (ForwardReply::NotLeader { leader: None }, false);
        }
        match tokio::time::timeout(remaining, answer).await {
            Ok(Ok(answer)) => answer,
            // Queued and perhaps sent: it may have reached the leader.
            _ => (ForwardReply::NotLeader { leader: None }, true),
        }
    }

    /// Sends one batch of writes to their leaders: a lone write as `Write`, several as
    /// `WriteBatch`, split until each request fits the leader's body limit.
    async fn send_batch(&self, batch: Vec<Outgoing>) {
        let mut by_leader: BTreeMap<NodeId, Vec<Outgoing>> = BTreeMap::new();
        for outgoing in batch {
            by_leader.entry(outgoing.leader).or_default().push(outgoing);
        }
        let sends = by_leader.into_iter().map(|(leader, group)| self.send_group(leader, group));
        futures::future::join_all(sends).await;
    }

    fn send_group(&self, leader: NodeId, mut group: Vec<Outgoing>) -> futures::future::BoxFuture<'_, ()> {
        use futures::FutureExt;
        async move {
            if group.len() == 1 {
                self.metrics.forwarded_writes.inc();
                self.metrics.forward_requests.inc();
                let outgoing = group.pop().expect("one write");
                let answer = self.forward(leader, &Forward::Write(outgoing.request), ATTEMPT_TIMEOUT).await;
                let _ = outgoing.reply.send(answer);
                return;
            }
            let body = rpc::encode(&Forward::WriteBatch(group.iter().map(|o| o.request.clone()).collect()));
            if body.len() > MAX_FORWARD_BODY {
                let second = group.split_off(group.len() / 2);
                futures::future::join(self.send_group(leader, group), self.send_group(leader, second)).await;
                return;
            }
            self.metrics.forwarded_writes.inc_by(group.len() as u64);
            self.metrics.forward_requests.inc();
            let (reply, delivered) = self.forward_encoded(leader, body, ATTEMPT_TIMEOUT).await;
            match reply {
                ForwardReply::Batch(replies) if replies.len() == group.len() => {
                    for (outgoing, reply) in group.into_iter().zip(replies) {
                        let _ = outgoing.reply.send((reply, false));
                    }
                }
                // Not answered one by one (no leader, a transport failure, a refusal of
                // the whole batch): every write gets the same answer.
                reply => {
                    for outgoing in group {
                        let _ = outgoing.reply.send((reply.clone(), delivered));
                    }
                }
            }
        }
        .boxed()
    }

    /// The answer to `Lookup` and `WatchStream`: the claim and its owner's media address.
    fn owner_reply(&self, claim: Option<raftcast_raft::command::StreamClaim>) -> ForwardReply {
        let media = claim.as_ref().and_then(|c| self.node_addr(c.owner)).map(|a| a.media);
        ForwardReply::Owner { claim, media }
    }

    fn node_addr(&self, id: NodeId) -> Option<NodeAddr> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    fn membership(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, NodeAddr>) {
        let metrics = self.raft.metrics().borrow().membership_config.clone();
        let m = metrics.membership();
        (m.voter_ids().collect(), m.nodes().map(|(id, n)| (*id, n.clone())).collect())
    }

    /// Executes `req` if this node leads; otherwise says who does.
    pub async fn execute_here(&self, req: &Forward) -> ForwardReply {
        match req {
            Forward::Write(req) => self.write_here(req).await,
            Forward::WriteBatch(reqs) if reqs.len() > MAX_BATCH => {
                failed(FailKind::BadRequest, format!("{} writes in one batch; at most {MAX_BATCH}", reqs.len()))
            }
            Forward::WriteBatch(reqs) => {
                ForwardReply::Batch(futures::future::join_all(reqs.iter().map(|req| self.write_here(req))).await)
            }
            Forward::Origins => {
                ForwardReply::Origins(self.membership().1.into_iter().map(|(id, a)| (id, a.media)).collect())
            }
            Forward::Lookup { stream } => {
                let claim = self.state.read(|sm| sm.streams.get(stream).cloned());
                self.owner_reply(claim)
            }
            Forward::WatchStream { stream, known_epoch, wait_ms } => {
                let wait = Duration::from_millis(u64::from((*wait_ms).min(raftcast_raft::command::MAX_WATCH_MS)));
                let claim = self.watch.wait(stream, *known_epoch, wait).await;
                self.owner_reply(claim)
            }
            Forward::Reassign { id, stream, expected_epoch, away_from } => {
                self.reassign(*id, stream, *expected_epoch, *away_from, Reason::Edge).await
            }
            Forward::Claim { id, stream, edge, session, takeover, key } => {
                // Leading and up to date, so the key check and the owner choice use
                // current state.
                if let Err(e) = self.raft.ensure_linearizable().await {
                    return leadership_error(e);
                }
                if !self.state.read(|sm| sm.publish_allowed(stream, key.as_deref())) {
                    return ForwardReply::Written(Response::Rejected(raftcast_raft::Rejection::PublishDenied));
                }
                // A takeover replaces only a dead session: one whose owner has no
                // publisher attached under its epoch (an edge that died, a publisher
                // that went away without a release). A live one keeps the stream.
                // A takeover stays on the dead session's owner while it is live: that
                // origin's hub holds the stream's last HLS mark, which the new session's
                // numbering continues after (docs/hls.md, "Numbering").
                let mut keep = None;
                if *takeover {
                    let current = self.state.read(|sm| sm.streams.get(stream).cloned());
                    if let Some(current) = current.filter(|c| c.edge != *edge || c.session != *session) {
                        if self.holder_alive(stream, &current).await {
                            let rejection = raftcast_raft::Rejection::StreamOwned {
                                owner: current.owner,
                                epoch: current.epoch,
                                edge: current.edge.clone(),
                            };
                            return ForwardReply::Written(Response::Rejected(rejection));
                        }
                        tracing::info!(%stream, epoch = current.epoch, edge = current.edge, "taking over a dead session");
                        keep = Some(current.owner).filter(|o| self.live_voters().1.contains(o));
                    }
                }
                // This node is always live itself, so there is always an owner.
                let owner = keep.or_else(|| self.pick_owner(stream, None)).unwrap_or(self.id);
                let command = Command::ClaimStream {
                    stream: stream.clone(),
                    owner,
                    edge: edge.clone(),
                    session: session.clone(),
                    takeover: *takeover,
                };
                self.write_here(&Request { id: *id, at_ms: 0, command }).await
            }
            Forward::ReadIndex => {
                // openraft's read index is max(this leader's first entry, committed). A
                // leader restarted in its own term reuses an old first entry, and its
                // committed index restarts at what it had applied: an entry it committed
                // before the restart would not be waited for (a stale read, found by
                // tests/shared_objects.rs). Every entry in the leader's log when the
                // read starts is waited for instead; entries it cannot commit fail the
                // read once it is no longer the leader.
                let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
                match self.raft.ensure_linearizable().await {
                    Ok(read) => ForwardReply::ReadIndex(read.map_or(0, |l| l.index).max(last)),
                    Err(e) => leadership_error(e),
                }
            }
            Forward::AddLearner { id, addr } => {
                if let Err(e) = self.raft.ensure_linearizable().await {
                    return leadership_error(e);
                }
                match self.membership().1.get(id) {
                    Some(existing) if existing == addr => {}
                    Some(existing) => {
                        return failed(
                            FailKind::Conflict,
                            format!("node {id} already exists at {existing}; remove it before adding it again"),
                        )
                    }
                    None => {
                        let added = self.raft.add_learner(*id, addr.clone(), false).await.map(drop);
                        if let reply @ (ForwardReply::NotLeader { .. } | ForwardReply::Failed { .. }) =
                            membership_reply(added)
                        {
                            return reply;
                        }
                    }
                }
                self.wait_caught_up(*id, addr).await
            }
            Forward::SetVoters { ids } => {
                if ids.is_empty() {
                    return failed(FailKind::BadRequest, "the voter set must not be empty");
                }
                if let Err(e) = self.raft.ensure_linearizable().await {
                    return leadership_error(e);
                }
                let (_, nodes) = self.membership();
                let unknown: Vec<_> = ids.iter().filter(|id| !nodes.contains_key(id)).collect();
                if !unknown.is_empty() {
                    return failed(
                        FailKind::NotFound,
                        format!("unknown node ids {unknown:?}: add them as learners first"),
                    );
                }
                membership_reply(self.raft.change_membership(ids.clone(), false).await.map(drop))
            }
            Forward::RemoveNode { id } => {
                if let Err(e) = self.raft.ensure_linearizable().await {
                    return leadership_error(e);
                }
                let (voters, nodes) = self.membership();
                if !nodes.contains_key(id) {
                    return failed(FailKind::NotFound, format!("node {id} is not a member"));
                }
                let result = if voters.contains(id) {
                    let rest: BTreeSet<NodeId> = voters.iter().copied().filter(|v| v != id).collect();
                    if rest.is_empty() {
                        return failed(FailKind::BadRequest, "cannot remove the last voter");
                    }
                    self.raft.change_membership(rest, false).await
                } else {
                    self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false).await
                };
                membership_reply(result.map(drop))
            }
        }
    }

    /// Waits until learner `id` has replicated everything up to now, so "added"
    /// means reachable and caught up (openraft's own blocking `add_learner` accepts a
    /// learner that is thousands of entries behind, even one that is not running).
    async fn wait_caught_up(&self, id: NodeId, addr: &NodeAddr) -> ForwardReply {
        let target = self.raft.metrics().borrow().last_log_index;
        let budget = self.deadline.saturating_sub(ANSWER_MARGIN);
        let caught_up = self
            .raft
            .wait(Some(budget))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .is_some_and(|matched| matched.map(|l| l.index) >= target)
                },
                "learner caught up",
            )
            .await;
        match caught_up {
            Ok(_) => ForwardReply::Done,
            Err(_) if self.raft.metrics().borrow().replication.is_none() => ForwardReply::NotLeader { leader: None },
            Err(_) => failed(
                FailKind::Unavailable,
                format!(
                    "node {id} is a learner now but has not caught up within {:?}; is it running at {}? \
                     Retry the same request once it is",
                    budget, addr.http
                ),
            ),
        }
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

    /// Queues `request` for the batcher and waits for its answer (unless it is
    /// [refused ahead](Self::refused_ahead)).
    async fn write_here(&self, request: &Request) -> ForwardReply {
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
}

/// Where a new stream goes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A pin rule names this live voter.
    Pinned(NodeId),
    /// The least loaded live voter; `pinned_not_live` is the origin a pin rule named
    /// but which is not a live voter (down, lagging, a learner or removed).
    ByLoad { owner: NodeId, pinned_not_live: Option<NodeId> },
}

/// Chooses the owner of a new stream: the pinned origin if it is live, otherwise the
/// live origin owning the fewest streams, ties spread by a hash of the stream key (so
/// equal loads do not all land on the same origin); `me` when nothing is live.
pub fn place(
    stream: &StreamKey,
    me: NodeId,
    live: &[NodeId],
    load: &HashMap<NodeId, usize>,
    pinned: Option<NodeId>,
) -> Placement {
    if let Some(pinned) = pinned.filter(|p| live.contains(p)) {
        return Placement::Pinned(pinned);
    }
    let spread = |node: NodeId| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (stream, node).hash(&mut h);
        h.finish()
    };
    let owner = live.iter().copied().min_by_key(|n| (load.get(n).copied().unwrap_or(0), spread(*n))).unwrap_or(me);
    Placement::ByLoad { owner, pinned_not_live: pinned }
}

/// Takes the next batch from `queue`: waits for one item, then takes what is queued
/// while the batch stays within `max_items` and `max_bytes` (the first item always goes,
/// however large). An item that does not fit waits in `carry` for the next batch. Empty
/// once the queue is closed and drained.
async fn next_batch<T>(
    queue: &mut mpsc::Receiver<T>,
    carry: &mut Option<T>,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<T> {
    let first = match carry.take() {
        Some(item) => item,
        None => match queue.recv().await {
            Some(item) => item,
            None => return Vec::new(),
        },
    };
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < max_items {
        let Ok(item) = queue.try_recv() else { break };
        bytes = bytes.saturating_add(size(&item));
        if bytes > max_bytes {
            *carry = Some(item);
            break;
        }
        batch.push(item);
    }
    batch
}

/// Collects writes this follower passes on to the leader: waits for a free slot among
/// [`FORWARDS_IN_FLIGHT`], then sends what is queued (up to [`MAX_BATCH`] and
/// `--max-entry-bytes`, at least one) as one request.
async fn forward_loop(proposer: Proposer, mut outgoing: mpsc::Receiver<Outgoing>) {
    let slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    let max_bytes = proposer.admission.limits.max_entry_bytes;
    let mut carry = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let batch = next_batch(&mut outgoing, &mut carry, MAX_BATCH, max_bytes, |o| o.bytes).await;
        if batch.is_empty() {
            return;
        }
        let proposer = proposer.clone();
        tokio::spawn(async move {
            proposer.send_batch(batch).await;
            drop(slot);
        });
    }
}

/// Takes the requests queued while earlier batches were in flight (up to [`MAX_BATCH`]
/// and `max_entry_bytes`) and proposes them as one log entry (stream-ownership commands
/// as entries of their own).
async fn batch_loop(raft: Raft, mut queue: mpsc::Receiver<Pending>, metrics: Arc<Metrics>, max_entry_bytes: usize) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut carry = None;
    loop {
        // A free slot first, then what is queued: requests that arrive while both
        // batches are in flight leave together in the next, not one by one.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut taken = next_batch(&mut queue, &mut carry, MAX_BATCH, max_entry_bytes, |p| p.bytes).await;
        if taken.is_empty() {
            return;
        }
        let (batch, alone): (Vec<Pending>, Vec<Pending>) = taken.drain(..).partition(|p| p.request.command.batchable());
        let mut permit = Some(permit);
        for group in std::iter::once(batch).chain(alone.into_iter().map(|p| vec![p])) {
            if group.is_empty() {
                continue;
            }
            let permit = match permit.take() {
                Some(permit) => permit,
                None => match in_flight.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (raft, metrics) = (raft.clone(), metrics.clone());
            tokio::spawn(async move {
                propose(&raft, group, &metrics).await;
                drop(permit);
            });
        }
    }
}

/// Proposes one batch and answers each of its callers.
async fn propose(raft: &Raft, batch: Vec<Pending>, metrics: &Metrics) {
    // The leader stamps the time; the state machine never reads a clock.
    let at_ms = now_ms();
    let mut permits = Vec::with_capacity(batch.len());
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<ForwardReply>>) = batch
        .into_iter()
        .map(|p| {
            permits.push(p.permit);
            (Request { at_ms, ..p.request }, p.reply)
        })
        .unzip();
    // The budget is given back once every caller has its answer (end of this function).
    let _permits = permits;
    let started = Instant::now();
    let count =
        |result: &'static str, n: usize| metrics.proposals.get_or_create(&ResultLabel { result }).inc_by(n as u64);
    match raft.client_write(Proposal { requests }).await {
        Ok(resp) => {
            let took = started.elapsed().as_secs_f64();
            for (answer, reply) in resp.data.into_iter().zip(replies) {
                metrics.proposal_seconds.observe(took);
                count(if matches!(answer, Response::Rejected(_)) { "rejected" } else { "committed" }, 1);
                let _ = reply.send(ForwardReply::Written(answer));
            }
        }
        Err(e) => {
            let reply = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ForwardReply::NotLeader { leader: f.leader_id }
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    failed(FailKind::Conflict, e.to_string())
                }
                RaftError::Fatal(e) => {
                    count("failed", replies.len());
                    failed(FailKind::Unavailable, format!("raft stopped: {e}"))
                }
            };
            for tx in replies {
                let _ = tx.send(reply.clone());
            }
        }
    }
}

fn unexpected(reply: ForwardReply) -> ProposeError {
    ProposeError::Failed {
        kind: FailKind::Unavailable,
        message: format!("unexpected answer from the leader: {reply:?}"),
    }
}

fn leadership_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>) -> ForwardReply {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => ForwardReply::NotLeader { leader: f.leader_id },
        // Leader without a quorum right now: retry (maybe elsewhere) until the deadline.
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => ForwardReply::NotLeader { leader: None },
        RaftError::Fatal(e) => failed(FailKind::Unavailable, format!("raft stopped: {e}")),
    }
}

fn membership_reply(result: Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>>) -> ForwardReply {
    match result {
        Ok(()) => ForwardReply::Done,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            ForwardReply::NotLeader { leader: f.leader_id }
        }
        // Another change is still being committed: retry shortly.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))) => {
            ForwardReply::NotLeader { leader: None }
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            failed(FailKind::Conflict, e.to_string())
        }
        Err(RaftError::Fatal(e)) => failed(FailKind::Unavailable, format!("raft stopped: {e}")),
    }
}

/// Marks a `/raft/forward` request one origin sent to the leader on behalf of a client:
/// the receiver executes it or says who leads, and never forwards it again.
const FORWARDED_HEADER: &str = "x-raftcast-forwarded";

/// How long an origin waits for the leader's answer to a request an edge sent it: below
/// the edge's own 1 s per attempt, so the edge hears back and tries elsewhere if need be.
const EDGE_HOP_TIMEOUT: Duration = Duration::from_millis(800);

/// `/raft/forward`: executes a request forwarded by another origin or sent by an edge.
/// An edge's request that only the leader can execute is passed on to the leader once
/// (an edge that cannot reach the leader, or lists only some origins, still gets its
/// claims and moves through any origin); a request another origin forwarded is never
/// passed on. Mounted behind [`rpc::require_secret`] and a body limit of
/// [`MAX_FORWARD_BODY`].
pub async fn forward_route(State(proposer): State<Proposer>, headers: HeaderMap, body: Bytes) -> HttpResponse {
    match rpc::admit::<Forward>(proposer.peers.secret(), &headers, &body) {
        Ok(req) => {
            let reply = proposer.execute_here(&req).await;
            let from_edge = !headers.contains_key(FORWARDED_HEADER);
            let reply = match reply {
                ForwardReply::NotLeader { leader: Some(leader) } if from_edge && leader != proposer.id => {
                    proposer.forward(leader, &req, EDGE_HOP_TIMEOUT).await.0
                }
                reply => reply,
            };
            rpc::reply(&reply)
        }
        Err(refused) => axum::response::IntoResponse::into_response(refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new("live", name).unwrap()
    }

    /// [`next_batch`] of what is queued now: a batch that would wait fails the test.
    async fn batch_now(
        rx: &mut mpsc::Receiver<usize>,
        carry: &mut Option<usize>,
        max_items: usize,
        max_bytes: usize,
        size: impl Fn(&usize) -> usize,
    ) -> Vec<usize> {
        let next = next_batch(rx, carry, max_items, max_bytes, size);
        tokio::time::timeout(Duration::from_secs(1), next).await.expect("a batch of what is queued, at once")
    }

    #[tokio::test]
    async fn a_batch_closes_at_its_byte_budget_and_a_large_item_goes_alone() {
        let (tx, mut rx) = mpsc::channel(16);
        for size in [100, 100, 100, 1000, 50, 50] {
            tx.send(size).await.unwrap();
        }
        let mut carry = None;
        let mut batches = Vec::new();
        for _ in 0..4 {
            batches.push(batch_now(&mut rx, &mut carry, 10, 250, |n| *n).await);
        }
        // 100+100 fit 250; the third 100 waits; 1000 alone; then the small ones.
        assert_eq!(batches, vec![vec![100, 100], vec![100], vec![1000], vec![50, 50]]);
        tx.send(1).await.unwrap();
        tx.send(1).await.unwrap();
        tx.send(1).await.unwrap();
        assert_eq!(batch_now(&mut rx, &mut carry, 2, 250, |n| *n).await, vec![1, 1], "the count bound holds too");
        drop(tx);
        assert_eq!(batch_now(&mut rx, &mut carry, 2, 250, |n| *n).await, vec![1]);
        assert!(batch_now(&mut rx, &mut carry, 2, 250, |n| *n).await.is_empty());
    }

    #[test]
    fn admission_bounds_pending_bytes_and_the_leaders_apply_lag() {
        let limits = WriteLimits { max_entry_bytes: 64 * 1024, max_pending_bytes: 200_000, max_apply_lag: 10 };
        let admission = Admission::new(limits);
        let a = admission.reserve(100_000).unwrap();
        let b = admission.reserve(90_000).unwrap();
        assert_eq!(admission.pending_bytes(), 190_000);
        assert_eq!(admission.reserve(20_000).err(), Some(Refusal::PendingBytes));
        drop(a);
        let c = admission.reserve(20_000).unwrap();
        drop((b, c));
        // A write larger than the whole budget goes when nothing else waits.
        let huge = admission.reserve(10_000_000).unwrap();
        assert_eq!(admission.reserve(1).err(), Some(Refusal::PendingBytes));
        drop(huge);
        assert_eq!(admission.pending_bytes(), 0);

        let mut m = raftcast_raft::typ::RaftMetrics::new_initial(1);
        m.current_leader = Some(1);
        m.last_log_index = Some(100);
        m.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 90));
        assert_eq!(admission.check_lag(&m), Ok(()));
        m.last_log_index = Some(101);
        assert_eq!(admission.check_lag(&m), Err(Refusal::ApplyLag));
        // A follower's own lag is not its writers' business: the leader decides.
        m.current_leader = Some(2);
        assert_eq!(admission.check_lag(&m), Ok(()));
        let ForwardReply::Failed { kind, message } = Refusal::ApplyLag.reply(&limits) else { panic!() };
        assert_eq!(kind, FailKind::Overloaded);
        assert!(message.contains("10 log entries"), "{message}");
    }

    #[test]
    fn a_live_pinned_origin_wins_over_load() {
        let load = HashMap::from([(1, 0), (2, 0), (3, 9)]);
        assert_eq!(place(&key("a"), 1, &[1, 2, 3], &load, Some(3)), Placement::Pinned(3));
    }

    #[test]
    fn a_pinned_origin_that_is_not_live_falls_back_to_the_least_loaded() {
        let load = HashMap::from([(1, 4), (2, 1), (3, 0)]);
        // Origin 3 is pinned but not live (down, lagging or only a learner).
        assert_eq!(
            place(&key("a"), 1, &[1, 2], &load, Some(3)),
            Placement::ByLoad { owner: 2, pinned_not_live: Some(3) }
        );
        assert_eq!(place(&key("a"), 1, &[1, 2], &load, None), Placement::ByLoad { owner: 2, pinned_not_live: None });
    }

    #[test]
    fn without_pins_streams_spread_by_load() {
        let mut load = HashMap::new();
        for i in 0..30 {
            let Placement::ByLoad { owner, .. } = place(&key(&format!("s{i}")), 1, &[1, 2, 3], &load, None) else {
                panic!()
            };
            *load.entry(owner).or_default() += 1;
        }
        assert_eq!(load, HashMap::from([(1, 10), (2, 10), (3, 10)]));
        // With nothing live, this node takes it.
        assert_eq!(place(&key("x"), 7, &[], &load, None), Placement::ByLoad { owner: 7, pinned_not_live: None });
    }
}
