//! The leader's failover supervisor: moves the streams of an origin that stopped
//! answering to live origins, so player edges follow the new owner even when no
//! publishing edge asks; and the streams of a draining origin to origins that are not
//! draining, by the same planned moves an operator makes.
//!
//! While this node leads, every [`TICK`] it asks [`Liveness`] which voters have left
//! its Raft RPCs unanswered for longer than `--owner-dead-after-ms` (counted from when
//! it became leader at the earliest), and re-assigns every stream such an origin owns
//! in the applied state, at the claim's current epoch, to an owner chosen by the same
//! placement as claims (never an unreachable origin). Then, with what the bound on
//! moves in flight leaves, it moves the streams of draining origins that are alive
//! ([`drained_origins`]). The expected epoch makes every proposal safe to repeat and to
//! race: under a leader change, against an edge's own `Reassign`, or against the owner
//! coming back (its stream then stays moved).
//!
//! With `--rebalance`, when no origin is dead or drained and no move is in flight, it
//! also moves one stream at a time off an origin that stays hot ([`super::rebalance`]).
//!
//! [`dead_voters`], [`drained_origins`] and the rebalancing [`Hysteresis`] and
//! [`choose`] decide (pure); [`supervise`] feeds them and proposes.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftcast_raft::typ::Raft;
use raftcast_raft::{ForwardReply, NodeId, RequestId, Response, StreamKey};
use raftcast_storage::StateHandle;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::liveness::Liveness;
use super::ownership::{Ownership, Reason, Target};
use super::rebalance::{choose, Hysteresis, RebalanceConfig};

/// How often the leader looks for dead owners.
pub const TICK: Duration = Duration::from_millis(100);

/// How often the leader looks at the load scores for a hot origin (the reports behind
/// them come once a second).
pub const REBALANCE_LOOK: Duration = Duration::from_secs(1);

/// Re-assignments proposed at once; streams beyond wait for the next tick. Each is one
/// log entry, so a dead origin with many streams costs this many entries in flight.
pub const REASSIGNS_IN_FLIGHT: usize = 16;

/// The voters other than `me` that have been silent for longer than `bound`, as a
/// leader leading since `leading_since` judges them at `now` (`silence` gives each
/// node's silence; see [`super::liveness::silence`]).
pub fn dead_voters(
    me: NodeId,
    voters: impl IntoIterator<Item = NodeId>,
    silence: impl Fn(NodeId) -> Duration,
    bound: Duration,
) -> BTreeSet<NodeId> {
    voters.into_iter().filter(|v| *v != me && silence(*v) > bound).collect()
}

/// The draining origins whose streams the leader moves away now: voters that are not
/// `dead` (a dead one's streams move as unreachable), and only while some `live` origin
/// is not draining. Without one, placement could only put the streams on another
/// draining origin, which would move them on again: they stay where they are.
pub fn drained_origins(
    voters: &[NodeId],
    dead: &BTreeSet<NodeId>,
    draining: &BTreeSet<NodeId>,
    live: &[NodeId],
) -> BTreeSet<NodeId> {
    if live.iter().all(|n| draining.contains(n)) {
        return BTreeSet::new();
    }
    draining.iter().copied().filter(|d| voters.contains(d) && !dead.contains(d)).collect()
}

/// Everything the supervisor needs.
pub struct Supervisor {
    pub id: NodeId,
    pub raft: Raft,
    pub state: StateHandle,
    pub ownership: Ownership,
    pub liveness: Liveness,
    /// `--rebalance`: `None` when off.
    pub rebalance: Option<RebalanceConfig>,
}

/// Runs until `shutdown`: while this node leads, moves the streams of dead owners, then
/// those of draining ones.
pub async fn supervise(s: Supervisor, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(REASSIGNS_IN_FLIGHT));
    // Streams (at an epoch) with a re-assignment in flight; each holds a permit until
    // its end is sent, so this channel never fills up.
    let mut in_flight: HashSet<(StreamKey, u64)> = HashSet::new();
    let (done_tx, mut done) = mpsc::channel::<(StreamKey, u64)>(REASSIGNS_IN_FLIGHT);
    // Draining origins already reported as owning no stream (logged once per drain).
    let mut emptied: BTreeSet<NodeId> = BTreeSet::new();
    // Rebalancing: how long the hot origin has been hot, the one move it may have under
    // way, and when the scores were last looked at.
    let mut hysteresis = s.rebalance.map(Hysteresis::new);
    let mut rebalancing: Option<tokio::task::JoinHandle<()>> = None;
    let mut looked = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(finished) = done.recv() => {
                in_flight.remove(&finished);
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let now = Instant::now();
        let (leading_since, voters) = {
            let m = s.raft.metrics().borrow().clone();
            (s.liveness.observe(&m, now), m.membership_config.membership().voter_ids().collect::<Vec<_>>())
        };
        let Some(since) = leading_since else {
            if let Some(h) = hysteresis.as_mut() {
                h.restart();
            }
            continue;
        };
        let dead = dead_voters(s.id, voters.iter().copied(), |v| s.liveness.silence(v, since, now), s.liveness.bound());
        let draining = s.state.read(|sm| sm.draining.clone());
        let drained = if draining.is_empty() {
            BTreeSet::new()
        } else {
            drained_origins(&voters, &dead, &draining, &s.ownership.live_voters().1)
        };
        emptied.retain(|o| draining.contains(o));
        if let Some(h) = hysteresis.as_mut() {
            // Only in a quiet cluster: failover and drains move load around themselves.
            if !dead.is_empty() || !drained.is_empty() || !in_flight.is_empty() {
                h.restart();
            } else if now.duration_since(looked) >= REBALANCE_LOOK
                && rebalancing.as_ref().is_none_or(|task| task.is_finished())
            {
                looked = now;
                let scores = s.ownership.open_scores();
                if let Some((hot, target)) = h.observe(&scores, now) {
                    // Decided: the next move needs a full streak again, made or not.
                    h.restart();
                    let (hot_score, target_score) = (scores[&hot], scores[&target]);
                    let ownership = s.ownership.clone();
                    rebalancing = Some(tokio::spawn(tracing::Instrument::in_current_span(rebalance_one(
                        ownership,
                        (hot, hot_score),
                        (target, target_score),
                    ))));
                }
            }
        }
        if dead.is_empty() && drained.is_empty() {
            continue;
        }
        // The streams to move, a dead owner's first: they are the ones nobody receives.
        let (mut owed, drains, owners): (Vec<_>, Vec<_>, BTreeSet<NodeId>) = s.state.read(|sm| {
            let of = |owners: &BTreeSet<NodeId>, reason: Reason| -> Vec<(StreamKey, u64, NodeId, Reason)> {
                sm.streams
                    .iter()
                    .filter(|(_, c)| owners.contains(&c.owner))
                    .map(|(k, c)| (k.clone(), c.epoch, c.owner, reason))
                    .collect()
            };
            (
                of(&dead, Reason::Unreachable),
                of(&drained, Reason::Drain),
                sm.streams.values().map(|c| c.owner).collect(),
            )
        });
        owed.extend(drains);
        for origin in &drained {
            if owners.contains(origin) {
                emptied.remove(origin);
            } else if emptied.insert(*origin) {
                tracing::info!(origin, "the draining origin owns no stream any more");
            }
        }
        for (stream, epoch, owner, reason) in owed {
            if in_flight.contains(&(stream.clone(), epoch)) {
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            in_flight.insert((stream.clone(), epoch));
            let silent = s.liveness.silence(owner, since, now);
            let (ownership, done_tx) = (s.ownership.clone(), done_tx.clone());
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                match reason {
                    Reason::Drain => tracing::debug!(%stream, owner, epoch, "the owner is draining; moving its stream"),
                    _ => {
                        tracing::debug!(%stream, owner, epoch, ?silent, "the owner does not answer; moving its stream")
                    }
                }
                // Only here: if this node no longer leads (or lost its quorum), the
                // leader judges for itself. Success is logged at info by `reassign`.
                match ownership.reassign(RequestId::random(), &stream, epoch, owner, reason).await {
                    ForwardReply::Written(Response::Claimed(_)) => {}
                    ForwardReply::Written(Response::Rejected(why)) => {
                        tracing::debug!(%stream, epoch, %why, "the claim changed meanwhile; nothing to move");
                    }
                    ForwardReply::NotLeader { .. } => {
                        tracing::debug!(%stream, epoch, "not leading with a quorum; not moving the stream");
                    }
                    // A drain is not urgent and is retried at the next tick: no warning
                    // every 100 ms while, say, no other origin can take the stream.
                    other if reason == Reason::Drain => {
                        tracing::debug!(%stream, epoch, ?other, "moving a stream off a draining origin failed; retrying")
                    }
                    other => {
                        tracing::warn!(%stream, epoch, ?other, ?silent, "moving the stream of a dead owner failed")
                    }
                }
                let _ = done_tx.send((stream, epoch)).await;
                drop(permit);
            }));
        }
    }
}

/// Moves one stream from `hot` to `target` (each with its load score) if one fits
/// ([`choose`]), by a planned move to exactly `target`.
async fn rebalance_one(ownership: Ownership, (hot, hot_score): (NodeId, u64), (target, target_score): (NodeId, u64)) {
    let candidates = ownership.rebalance_candidates(hot).await;
    let Some(pick) = choose(hot_score, target_score, &candidates) else {
        tracing::debug!(
            hot,
            hot_score,
            target,
            target_score,
            candidates = candidates.len(),
            "the origin stays hot, but moving any of its streams would make the target hotter; nothing moves"
        );
        return;
    };
    tracing::info!(
        stream = %pick.stream, hot, hot_score, target, target_score, cost_kbps = pick.cost_kbps,
        "the origin stays hot; moving one stream to the least loaded origin"
    );
    match ownership
        .move_claim(RequestId::random(), &pick.stream, pick.epoch, Target::To(target), Reason::Rebalance)
        .await
    {
        ForwardReply::Written(Response::Claimed(_)) => {}
        other => tracing::debug!(stream = %pick.stream, ?other, "rebalancing move not made"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::liveness::silence;

    const BOUND: Duration = Duration::from_millis(1000);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn only_voters_silent_past_the_bound_are_dead_and_never_the_leader_itself() {
        let t0 = Instant::now();
        let since = t0;
        let last = |v: NodeId| match v {
            1 => None,                // the leader itself: never judged
            2 => Some(ms(t0, 1_950)), // answered 50 ms ago
            3 => Some(ms(t0, 700)),   // silent for 1.3 s
            4 => Some(ms(t0, 1_000)), // silent for exactly the bound: still alive
            _ => None,                // never answered in 2 s of leadership
        };
        let now = ms(t0, 2_000);
        let dead = dead_voters(1, [1, 2, 3, 4, 5], |v| silence(last(v), since, now), BOUND);
        assert_eq!(dead, BTreeSet::from([3, 5]));
    }

    #[test]
    fn a_short_pause_is_never_judged_but_a_long_one_is() {
        let t0 = Instant::now();
        // Heartbeats every 50 ms until the node pauses at 10 s.
        let paused_at = ms(t0, 10_000);
        let judge = |now: Instant| dead_voters(1, [2], |_| silence(Some(paused_at), t0, now), BOUND);
        // A 300 ms pause, seen at every 100 ms tick: never dead.
        for tick in (10_000..=10_300).step_by(100) {
            assert!(judge(ms(t0, tick)).is_empty());
        }
        // A pause past the bound: dead at the first tick after it.
        assert!(judge(ms(t0, 11_000)).is_empty());
        assert_eq!(judge(ms(t0, 11_100)), BTreeSet::from([2]));
    }

    #[test]
    fn only_live_draining_voters_are_drained_and_only_while_another_origin_is_open() {
        let voters = [1, 2, 3];
        let none = BTreeSet::new();
        // Origin 3 drains; 1 and 2 are live and open.
        assert_eq!(drained_origins(&voters, &none, &BTreeSet::from([3]), &[1, 2, 3]), BTreeSet::from([3]));
        // Dead: its streams move as unreachable, not as drained.
        assert_eq!(drained_origins(&voters, &BTreeSet::from([3]), &BTreeSet::from([3]), &[1, 2]), none);
        // Not a voter (removed, or a learner): the supervisor looks at voters only.
        assert_eq!(drained_origins(&voters, &none, &BTreeSet::from([4]), &[1, 2, 3]), none);
        // Every live origin drains: nothing moves (it would only go round them).
        assert_eq!(drained_origins(&voters, &none, &BTreeSet::from([1, 2, 3]), &[1, 2, 3]), none);
        // The only open origin is down (not live): the same.
        assert_eq!(drained_origins(&voters, &BTreeSet::from([1]), &BTreeSet::from([2, 3]), &[2, 3]), none);
        // Two drain, one is open: both are drained onto it.
        assert_eq!(drained_origins(&voters, &none, &BTreeSet::from([1, 3]), &[1, 2, 3]), BTreeSet::from([1, 3]));
    }

    #[test]
    fn a_new_leader_waits_a_full_bound_even_for_nodes_it_never_heard() {
        let t0 = Instant::now();
        let became_leader = ms(t0, 5_000);
        let judge = |now: Instant| dead_voters(2, [1, 2, 3], |_| silence(None, became_leader, now), BOUND);
        assert!(judge(ms(t0, 5_999)).is_empty());
        assert_eq!(judge(ms(t0, 6_001)), BTreeSet::from([1, 3]));
    }
}
