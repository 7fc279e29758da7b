//! The leader's batcher: requests queued while earlier batches were in flight leave
//! together as one log entry, closed at [`MAX_BATCH`] requests or `--max-entry-bytes`.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use raftcast_raft::typ::Raft;
use raftcast_raft::{FailKind, ForwardReply, Proposal, Request, Response};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{failed, now_ms};
use crate::origin::metrics::{Metrics, ResultLabel};

/// Most requests the leader puts into one log entry.
pub const MAX_BATCH: usize = 256;
/// Requests waiting for the batcher. When full, callers wait: Raft sets the pace. The
/// bytes they hold are bounded separately, by admission (`--max-pending-write-bytes`).
pub const BATCH_QUEUE: usize = 4096;
/// Batches proposed at once. openraft 0.9 appends one entry at a time anyway; a second
/// batch in flight keeps the next one ready while the first is flushed.
const BATCHES_IN_FLIGHT: usize = 2;

/// A request waiting to be proposed, and where its answer goes.
pub(super) struct Pending {
    pub request: Request,
    /// Encoded size of `request`.
    pub bytes: usize,
    pub reply: oneshot::Sender<ForwardReply>,
    /// This write's share of the pending-bytes budget, released once it is answered.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Takes the next batch from `queue`: waits for one item, then takes what is queued
/// while the batch stays within `max_items` and `max_bytes` (the first item always goes,
/// however large). An item that does not fit waits in `carry` for the next batch. Empty
/// once the queue is closed and drained.
pub async fn next_batch<T>(
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

/// Takes the requests queued while earlier batches were in flight (up to [`MAX_BATCH`]
/// and `max_entry_bytes`) and proposes them as one log entry (stream-ownership commands
/// as entries of their own).
pub(super) async fn batch_loop(
    raft: Raft,
    mut queue: mpsc::Receiver<Pending>,
    metrics: Arc<Metrics>,
    max_entry_bytes: usize,
) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
