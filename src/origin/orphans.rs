//! Releases claims this origin owns whose publisher stays away longer than the grace
//! period: a claim left by an edge that died, or one whose release failed.
//!
//! Only the owner acts, only on claims in its applied state, and never while a
//! publisher is attached under the claim. A claim that never had a publisher here is
//! absent from when this origin first saw it — also after a restart, which gives the
//! edges a full grace period to re-publish. The release names the claim's epoch, so
//! it can never remove a newer claim; and before proposing it, the owner makes sure its
//! applied state is current (a read barrier), so an origin coming back from a crash
//! or a partition never acts on a claim it merely remembers (one that has moved).
//!
//! [`OrphanTracker`] decides (pure: the caller passes the clock and what it sees);
//! [`supervise`] feeds it and proposes the releases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftcast_raft::{Command, NodeId, Response, StreamKey};
use raftcast_storage::StateHandle;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::link_server::LinkContext;
use super::metrics::Metrics;
use super::proposer::Proposer;

/// Releases proposed at once; streams beyond wait for the next tick.
pub const RELEASES_IN_FLIGHT: usize = 16;

/// How a release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The claim is gone (released by us, or by someone else meanwhile).
    Done,
    /// A publisher showed up, or the claim changed: nothing to do.
    Moot,
    /// Not proposed, or no answer (no leader): try again later.
    Retry,
}

/// Since when each owned claim has had no publisher.
#[derive(Debug)]
pub struct OrphanTracker {
    grace: Duration,
    absent: HashMap<StreamKey, Absence>,
}

#[derive(Debug)]
struct Absence {
    epoch: u64,
    since: Instant,
    releasing: bool,
}

impl OrphanTracker {
    pub fn new(grace: Duration) -> Self {
        OrphanTracker { grace, absent: HashMap::new() }
    }

    /// Looks at the claims this origin owns (`owned`: stream and epoch, from its
    /// applied state) and the publishers attached here (`attached`: stream → epoch) at
    /// `now`; returns the claims to release now. Each is returned once, until
    /// [`OrphanTracker::settled`] says how its release went.
    pub fn tick(
        &mut self,
        now: Instant,
        owned: &[(StreamKey, u64)],
        attached: &HashMap<StreamKey, u64>,
    ) -> Vec<(StreamKey, u64)> {
        let current: HashMap<&StreamKey, u64> = owned.iter().map(|(s, e)| (s, *e)).collect();
        // Claims no longer owned here (released, moved, superseded) are forgotten.
        self.absent.retain(|stream, a| current.get(stream) == Some(&a.epoch));
        let mut due = Vec::new();
        for (stream, epoch) in owned {
            if attached.get(stream).is_some_and(|e| e >= epoch) {
                self.absent.remove(stream);
                continue;
            }
            let absence =
                self.absent.entry(stream.clone()).or_insert(Absence { epoch: *epoch, since: now, releasing: false });
            if !absence.releasing && now.saturating_duration_since(absence.since) >= self.grace {
                absence.releasing = true;
                due.push((stream.clone(), *epoch));
            }
        }
        due
    }

    /// How the release of `stream` at `epoch` went.
    pub fn settled(&mut self, stream: &StreamKey, epoch: u64, outcome: Outcome) {
        match outcome {
            Outcome::Done | Outcome::Moot => {
                self.absent.remove(stream);
            }
            Outcome::Retry => {
                if let Some(a) = self.absent.get_mut(stream).filter(|a| a.epoch == epoch) {
                    a.releasing = false;
                }
            }
        }
    }
}

/// How often the supervisor looks: a quarter of the grace period, within 100 ms..1 s.
fn tick_period(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Everything the supervisor needs.
pub struct Supervisor {
    pub id: NodeId,
    pub grace: Duration,
    pub state: StateHandle,
    pub links: LinkContext,
    pub proposer: Proposer,
    pub metrics: Arc<Metrics>,
}

/// Runs until `shutdown`: every tick, releases the owned claims that have been
/// without a publisher for the grace period.
pub async fn supervise(s: Supervisor, shutdown: CancellationToken) {
    let mut tracker = OrphanTracker::new(s.grace);
    let permits = Arc::new(Semaphore::new(RELEASES_IN_FLIGHT));
    // Each release in flight holds a permit until its outcome is sent, so this never
    // fills up.
    let (done_tx, mut done) = mpsc::channel::<(StreamKey, u64, Outcome)>(RELEASES_IN_FLIGHT);
    let mut ticks = tokio::time::interval(tick_period(s.grace));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some((stream, epoch, outcome)) = done.recv() => {
                tracker.settled(&stream, epoch, outcome);
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let owned: Vec<(StreamKey, u64)> = s
            .state
            .read(|sm| sm.streams.iter().filter(|(_, c)| c.owner == s.id).map(|(k, c)| (k.clone(), c.epoch)).collect());
        let attached = s.links.attached_publishers();
        for (stream, epoch) in tracker.tick(Instant::now(), &owned, &attached) {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracker.settled(&stream, epoch, Outcome::Retry);
                continue;
            };
            let (links, proposer, metrics, done_tx) =
                (s.links.clone(), s.proposer.clone(), s.metrics.clone(), done_tx.clone());
            let grace = s.grace;
            tokio::spawn(async move {
                let outcome = release(&stream, epoch, grace, &links, &proposer, &metrics).await;
                let _ = done_tx.send((stream, epoch, outcome)).await;
                drop(permit);
            });
        }
    }
}

async fn release(
    stream: &StreamKey,
    epoch: u64,
    grace: Duration,
    links: &LinkContext,
    proposer: &Proposer,
    metrics: &Metrics,
) -> Outcome {
    // Narrow the race with a publisher attaching right now; one that attaches while
    // the release commits is fenced when the release applies (the link server follows
    // the claims).
    if links.attached_publishers().get(stream).is_some_and(|e| *e >= epoch) {
        return Outcome::Moot;
    }
    // Is the claim still ours, as of now and not as of our possibly stale state?
    if let Err(e) = proposer.read_barrier().await {
        tracing::debug!(%stream, epoch, error = %e, "cannot confirm an orphaned claim is current; later");
        return Outcome::Retry;
    }
    let current = links.state.read(|sm| sm.streams.get(stream).map(|c| (c.owner, c.epoch)));
    if current != Some((links.id, epoch)) {
        return Outcome::Moot;
    }
    match proposer.write(Command::ReleaseStream { stream: stream.clone(), epoch }).await {
        Ok(Response::Released) => {
            metrics.orphans_released.inc();
            tracing::info!(%stream, epoch, ?grace, "released a claim whose publisher stayed away");
            Outcome::Done
        }
        Ok(Response::Rejected(raftcast_raft::Rejection::StaleEpoch { current: None })) => Outcome::Done,
        Ok(other) => {
            tracing::debug!(%stream, epoch, ?other, "orphan release changed nothing");
            Outcome::Moot
        }
        Err(e) => {
            tracing::warn!(%stream, epoch, error = %e, "releasing an orphaned claim failed; retrying");
            Outcome::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new("live", name).unwrap()
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn a_claim_without_a_publisher_is_released_after_the_grace_from_first_sight() {
        let t0 = Instant::now();
        let mut t = OrphanTracker::new(GRACE);
        let owned = [(key("a"), 5)];
        let none = HashMap::new();
        // First seen at 3 s (say, after a restart): the grace counts from there.
        assert!(t.tick(at(t0, 3_000), &owned, &none).is_empty());
        assert!(t.tick(at(t0, 12_999), &owned, &none).is_empty());
        assert_eq!(t.tick(at(t0, 13_000), &owned, &none), vec![(key("a"), 5)]);
        // Proposed once, not again while in flight.
        assert!(t.tick(at(t0, 14_000), &owned, &none).is_empty());
        // A failed proposal is retried at the next tick.
        t.settled(&key("a"), 5, Outcome::Retry);
        assert_eq!(t.tick(at(t0, 15_000), &owned, &none), vec![(key("a"), 5)]);
    }

    #[test]
    fn an_attached_publisher_resets_the_clock_and_is_never_released() {
        let t0 = Instant::now();
        let mut t = OrphanTracker::new(GRACE);
        let owned = [(key("a"), 5)];
        let attached = HashMap::from([(key("a"), 5)]);
        assert!(t.tick(at(t0, 0), &owned, &HashMap::new()).is_empty());
        for s in 1..100 {
            assert!(t.tick(at(t0, s * 1_000), &owned, &attached).is_empty(), "released at {s} s");
        }
        // The publisher leaves at 100 s: ten more seconds of grace.
        assert!(t.tick(at(t0, 100_000), &owned, &HashMap::new()).is_empty());
        assert!(t.tick(at(t0, 109_000), &owned, &HashMap::new()).is_empty());
        assert_eq!(t.tick(at(t0, 110_000), &owned, &HashMap::new()), vec![(key("a"), 5)]);
    }

    #[test]
    fn a_publisher_of_an_older_epoch_does_not_count() {
        let t0 = Instant::now();
        let mut t = OrphanTracker::new(GRACE);
        let owned = [(key("a"), 9)];
        let stale = HashMap::from([(key("a"), 5)]);
        assert!(t.tick(at(t0, 0), &owned, &stale).is_empty());
        assert_eq!(t.tick(at(t0, 10_000), &owned, &stale), vec![(key("a"), 9)]);
    }

    #[test]
    fn a_new_claim_restarts_the_clock_and_claims_gone_are_forgotten() {
        let t0 = Instant::now();
        let mut t = OrphanTracker::new(GRACE);
        let none = HashMap::new();
        assert!(t.tick(at(t0, 0), &[(key("a"), 5), (key("b"), 6)], &none).is_empty());
        // At 8 s, a's claim was taken over (epoch 7) and b's released or moved away.
        assert!(t.tick(at(t0, 8_000), &[(key("a"), 7)], &none).is_empty());
        assert!(t.tick(at(t0, 17_000), &[(key("a"), 7)], &none).is_empty());
        assert_eq!(t.tick(at(t0, 18_000), &[(key("a"), 7)], &none), vec![(key("a"), 7)]);
        // b comes back (claimed again here): a fresh grace period.
        assert!(t.tick(at(t0, 18_000), &[(key("b"), 20)], &none).is_empty());
        t.settled(&key("a"), 7, Outcome::Done);
        assert!(t.tick(at(t0, 27_999), &[(key("b"), 20)], &none).is_empty());
        assert_eq!(t.tick(at(t0, 28_000), &[(key("b"), 20)], &none), vec![(key("b"), 20)]);
    }

    #[test]
    fn ticks_are_a_quarter_of_the_grace_within_bounds() {
        assert_eq!(tick_period(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(tick_period(Duration::from_secs(1)), Duration::from_millis(250));
        assert_eq!(tick_period(Duration::from_millis(100)), Duration::from_millis(100));
    }
}
