//! Availability and leadership: the longest window in which no write was committed
//! (measured at the acknowledgements clients received), and how often the leader
//! changed as the origins reported it.

use std::collections::BTreeMap;

use crate::history::StatusSeen;

/// Longest gap, in ms, between consecutive acknowledgements, counting from `start_us`
/// to the first and from the last to `end_us`.
pub fn max_unavailable_ms(mut acks_us: Vec<u64>, start_us: u64, end_us: u64) -> u64 {
    acks_us.retain(|t| (start_us..=end_us).contains(t));
    acks_us.sort_unstable();
    let mut last = start_us;
    let mut worst = 0;
    for t in acks_us.into_iter().chain([end_us]) {
        worst = worst.max(t.saturating_sub(last));
        last = t;
    }
    worst / 1_000
}

/// Leader changes: how many times the leader of the newest term seen changed, over
/// the statuses in time order (elections that produced no leader are not counted).
pub fn leader_changes(statuses: &[StatusSeen]) -> u64 {
    let mut leaders: BTreeMap<u64, u32> = BTreeMap::new();
    for s in statuses {
        if let Some(l) = s.leader {
            leaders.entry(s.term).or_insert(l);
        }
    }
    // Terms with a leader, in order; a change is a new term whose leader differs or a
    // new election the same node won again (a term change is an election either way).
    (leaders.len() as u64).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_the_edges_of_the_window() {
        assert_eq!(max_unavailable_ms(vec![1_000_000, 1_500_000, 4_000_000], 0, 5_000_000), 2_500);
        assert_eq!(max_unavailable_ms(vec![], 0, 3_000_000), 3_000);
    }

    #[test]
    fn leader_changes_count_terms_with_a_leader() {
        let s = |t, term, leader| StatusSeen { t_us: t, via: 1, term, leader, is_leader: false };
        assert_eq!(leader_changes(&[s(0, 1, Some(1)), s(1, 1, Some(1)), s(2, 2, None), s(3, 3, Some(2))]), 1);
        assert_eq!(leader_changes(&[]), 0);
    }
}
