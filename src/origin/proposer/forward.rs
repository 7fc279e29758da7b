//! A follower's side of writes: requests it sends to the leader's `/raft/forward`.
//! Writes go in batches ([`Forward::WriteBatch`]): at most [`FORWARDS_IN_FLIGHT`]
//! requests to the leader at a time, each carrying every write that arrived while the
//! previous ones were out. Under load that is one HTTP exchange for many writes instead
//! of one each (the leader puts them in one log entry anyway); a lone write goes out at
//! once, alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::typ::Raft;
use raftcast_raft::{rpc, Forward, ForwardReply, NodeId, Request};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::ATTEMPT_TIMEOUT;
use crate::origin::commit::batch::{next_batch, BATCH_QUEUE, MAX_BATCH};
use crate::origin::commit::{admitted_by_budget, encoded_len, Committer};
use crate::origin::membership::node_addr;
use crate::origin::metrics::Metrics;
use crate::peer::{self, PeerClient};

/// Batches of writes a follower has on their way to the leader at once; writes that
/// arrive meanwhile wait and leave together in the next.
const FORWARDS_IN_FLIGHT: usize = 2;

/// Largest `/raft/forward` body. Forwarded writes come from admin requests of at most
/// 256 KiB of JSON, which bincode never makes more than about 5 times larger; edges'
/// requests are a few hundred bytes. Checked after the cluster secret, so nobody
/// without it makes an origin buffer anything.
pub const MAX_FORWARD_BODY: usize = 4 * 1024 * 1024;

/// Marks a `/raft/forward` request one origin sent to the leader on behalf of a client:
/// the receiver executes it or says who leads, and never forwards it again.
pub const FORWARDED_HEADER: &str = "x-raftcast-forwarded";

/// A write this follower passes on to `leader`, and where the answer goes (with
/// whether the write may have reached the leader).
struct Outgoing {
    leader: NodeId,
    request: Request,
    /// Encoded size of `request`.
    bytes: usize,
    reply: oneshot::Sender<(ForwardReply, bool)>,
}

/// Sends requests to the leader. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    raft: Raft,
    /// Requests to the leader (with the cluster secret, which also checks requests).
    peers: PeerClient,
    metrics: Arc<Metrics>,
    /// This node's admission control: a forwarded write holds its bytes until answered.
    committer: Committer,
    /// Writes on their way to the leader, batched (see [`forward_loop`]).
    queue: mpsc::Sender<Outgoing>,
}

impl Forwarder {
    /// Starts the loop that batches forwarded writes.
    pub fn new(raft: Raft, peers: PeerClient, metrics: Arc<Metrics>, committer: Committer) -> Self {
        let (queue, outgoing) = mpsc::channel(BATCH_QUEUE);
        let forwarder = Forwarder { raft, peers, metrics, committer, queue };
        tokio::spawn(forward_loop(forwarder.clone(), outgoing));
        forwarder
    }

    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// Sends `req` to `leader`'s `/raft/forward`. Transport failures read as "no
    /// leader known", so the caller retries; the flag says whether the request may
    /// have reached the leader (anything but a refused connection).
    pub async fn forward(&self, leader: NodeId, req: &Forward, remaining: Duration) -> (ForwardReply, bool) {
        self.forward_encoded(leader, rpc::encode(req), remaining).await
    }

    /// [`Forwarder::forward`] of a request already encoded.
    async fn forward_encoded(&self, leader: NodeId, body: Vec<u8>, remaining: Duration) -> (ForwardReply, bool) {
        let not_leader = ForwardReply::NotLeader { leader: None };
        let Some(addr) = node_addr(&self.raft, leader) else { return (not_leader, false) };
        let res = self
            .peers
            .post(self.peers.url(&addr.http, "/raft/forward"))
            .header(FORWARDED_HEADER, "1")
            .timeout(remaining.max(Duration::from_millis(50)))
            .body(body)
            .send()
            .await;
        let body = match res {
            Ok(res) if res.status().is_success() => peer::body_within(res, rpc::MAX_RPC_BODY).await,
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
    /// like [`Forwarder::forward`].
    pub async fn forward_write(&self, leader: NodeId, request: Request, remaining: Duration) -> (ForwardReply, bool) {
        let bytes = encoded_len(&request);
        // Held until the answer comes (or this attempt gives up): the bytes waiting on
        // this follower are bounded, and a flood is refused here, before the leader.
        let _permit = if admitted_by_budget(&request.command) {
            match self.committer.admission().reserve(bytes) {
                Ok(permit) => Some(permit),
                Err(refusal) => return (self.committer.refuse(refusal), false),
            }
        } else {
            None
        };
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing { leader, request, bytes, reply };
        if tokio::time::timeout(remaining, self.queue.send(outgoing)).await.is_err() {
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
}

/// Collects writes this follower passes on to the leader: waits for a free slot among
/// [`FORWARDS_IN_FLIGHT`], then sends what is queued (up to [`MAX_BATCH`] and
/// `--max-entry-bytes`, at least one) as one request.
async fn forward_loop(forwarder: Forwarder, mut outgoing: mpsc::Receiver<Outgoing>) {
    let slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    let max_bytes = forwarder.committer.admission().limits().max_entry_bytes;
    let mut carry = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let batch = next_batch(&mut outgoing, &mut carry, MAX_BATCH, max_bytes, |o| o.bytes).await;
        if batch.is_empty() {
            return;
        }
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            forwarder.send_batch(batch).await;
            drop(slot);
        });
    }
}
