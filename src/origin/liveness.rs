//! Which origins count as alive, from the leader's seat: a follower is reachable while
//! its last answered Raft RPC ([`Reachability`], fed by the Raft network) is at most
//! `--owner-dead-after` old, measured from max(last answer, when this node became
//! leader) so a fresh leader waits a full bound before judging anyone.
//!
//! Knows nothing of streams: placement and the failover supervisor ask it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use raftcast_raft::network::Reachability;
use raftcast_raft::typ::RaftMetrics;
use raftcast_raft::NodeId;

/// How long `node` has been silent, as a leader that has led since `leading_since`
/// judges it: the time since its last answer, or since leadership began if that is
/// later (a new leader has had no chance to hear from anyone before).
pub fn silence(last_ok: Option<Instant>, leading_since: Instant, now: Instant) -> Duration {
    let from = last_ok.map_or(leading_since, |t| t.max(leading_since));
    now.saturating_duration_since(from)
}

/// This node's view of which origins answer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Liveness {
    id: NodeId,
    reach: Reachability,
    bound: Duration,
    /// The term in which this node leads and since when; `None` while it does not.
    leading: Arc<Mutex<Option<(u64, Instant)>>>,
}

impl Liveness {
    pub fn new(id: NodeId, reach: Reachability, bound: Duration) -> Self {
        Liveness { id, reach, bound, leading: Arc::default() }
    }

    /// The silence after which an origin counts as dead (`--owner-dead-after-ms`).
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Notes this node's role from openraft's metrics; returns since when it leads (in
    /// its current term), or `None` when it does not lead. The first observation of a
    /// term's leadership fixes its start, whoever makes it.
    pub fn observe(&self, m: &RaftMetrics, now: Instant) -> Option<Instant> {
        let mut leading = self.leading.lock().unwrap_or_else(|p| p.into_inner());
        if m.state != ServerState::Leader {
            *leading = None;
            return None;
        }
        match *leading {
            Some((term, since)) if term == m.current_term => Some(since),
            _ => {
                *leading = Some((m.current_term, now));
                Some(now)
            }
        }
    }

    /// How long `node` has been silent to a leader leading since `leading_since`.
    pub fn silence(&self, node: NodeId, leading_since: Instant, now: Instant) -> Duration {
        silence(self.reach.last_ok(node), leading_since, now)
    }

    /// Whether the cluster keeps this node's applied state current now: as leader, a
    /// majority of voters (itself included) answered within `within`; otherwise a
    /// leader's AppendEntries was accepted within `within` (`contact`). A node cut off
    /// from the others, or removed from them, stops being in touch within `within`.
    pub fn in_touch(&self, m: &RaftMetrics, contact: Option<Instant>, now: Instant, within: Duration) -> bool {
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) <= within);
        if m.state != ServerState::Leader {
            return recent(contact);
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let answered = voters.iter().filter(|v| **v == self.id || recent(self.reach.last_ok(**v))).count();
        answered > voters.len() / 2
    }

    /// Whether `node` is this node or has answered within the bound.
    pub fn reachable(&self, node: NodeId, leading_since: Instant, now: Instant) -> bool {
        node == self.id || self.silence(node, leading_since, now) <= self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_millis(1000);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_fresh_leader_waits_a_full_bound_before_judging_anyone() {
        let t0 = Instant::now();
        // Node 2 last answered long before this node led (it answered the old leader,
        // or nobody): silence counts from the start of leadership at 5 s.
        assert_eq!(silence(Some(t0), ms(t0, 5_000), ms(t0, 5_400)), Duration::from_millis(400));
        assert_eq!(silence(None, ms(t0, 5_000), ms(t0, 6_000)), BOUND);
        assert_eq!(silence(None, ms(t0, 5_000), ms(t0, 6_001)), Duration::from_millis(1001));
        // Answers after that count from the answer.
        assert_eq!(silence(Some(ms(t0, 5_950)), ms(t0, 5_000), ms(t0, 6_000)), Duration::from_millis(50));
    }

    #[test]
    fn a_node_is_reachable_within_the_bound_and_this_node_always() {
        let t0 = Instant::now();
        let reach = Reachability::default();
        let live = Liveness::new(1, reach.clone(), BOUND);
        reach.record(2, ms(t0, 100));
        assert!(live.reachable(2, t0, ms(t0, 1_100)));
        assert!(!live.reachable(2, t0, ms(t0, 1_101)));
        assert!(!live.reachable(3, t0, ms(t0, 1_001)), "never answered, leading for more than the bound");
        assert!(live.reachable(1, t0, ms(t0, 60_000)), "this node itself");
    }

    #[test]
    fn in_touch_means_a_recent_leader_for_a_follower_and_a_recent_quorum_for_a_leader() {
        use openraft::{LogId, Membership, StoredMembership};
        use std::collections::BTreeSet;
        let t0 = Instant::now();
        let within = Duration::from_secs(1);
        let reach = Reachability::default();
        let live = Liveness::new(1, reach.clone(), BOUND);
        let mut m = RaftMetrics::new_initial(1);
        assert!(!live.in_touch(&m, None, t0, within), "a follower that never heard a leader");
        assert!(live.in_touch(&m, Some(t0), ms(t0, 1_000), within));
        assert!(!live.in_touch(&m, Some(t0), ms(t0, 1_001), within), "a follower the leader stopped talking to");
        m.state = ServerState::Leader;
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let membership = Membership::new(vec![voters], None);
        let stored = StoredMembership::new(Some(LogId::default()), membership);
        m.membership_config = Arc::new(stored);
        assert!(!live.in_touch(&m, None, t0, within), "a leader alone of three");
        reach.record(3, ms(t0, 500));
        assert!(live.in_touch(&m, None, ms(t0, 1_500), within), "itself and node 3");
        assert!(!live.in_touch(&m, None, ms(t0, 1_501), within), "node 3 went quiet");
    }

    #[test]
    fn leadership_starts_when_first_seen_in_each_term() {
        let t0 = Instant::now();
        let live = Liveness::new(1, Reachability::default(), BOUND);
        let mut m = RaftMetrics::new_initial(1);
        assert_eq!(live.observe(&m, t0), None);
        m.state = ServerState::Leader;
        m.current_term = 3;
        assert_eq!(live.observe(&m, ms(t0, 10)), Some(ms(t0, 10)));
        assert_eq!(live.observe(&m, ms(t0, 500)), Some(ms(t0, 10)), "same term: same start");
        m.current_term = 5;
        assert_eq!(live.observe(&m, ms(t0, 900)), Some(ms(t0, 900)), "a new term starts again");
        m.state = ServerState::Follower;
        assert_eq!(live.observe(&m, ms(t0, 950)), None);
        m.state = ServerState::Leader;
        assert_eq!(live.observe(&m, ms(t0, 990)), Some(ms(t0, 990)), "leading again after following");
    }
}
