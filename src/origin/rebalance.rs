//! Rebalancing, decided on the leader (`--rebalance`): when one open origin's load
//! score ([`super::load::scores`]) stays above the mean of the open origins by both
//! `--rebalance-ratio` and `--rebalance-slack-kbps` for `--rebalance-after`, the failover
//! supervisor moves ONE of its streams to the least loaded open origin by a planned
//! move. The hot streak then starts afresh, so two moves are at least
//! `--rebalance-after` apart, long enough for the reports to show the first one.
//!
//! No flapping: a move is made only if it leaves the target no hotter than the hot
//! origin ([`choose`]), so the pair only ever gets closer and the next decision cannot
//! send the stream back; a stream moved within [`REST`] (for any reason) is not moved,
//! and pinned streams are never moved. Pure: scores, candidates and `now` in, a decision
//! out; the supervisor does the I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raftcast_raft::{NodeId, StreamKey};

/// Default of `--rebalance-ratio`: an origin is hot above 1.5 times the mean.
pub const DEFAULT_RATIO: f64 = 1.5;

/// Default of `--rebalance-slack-kbps`: and more than this above the mean (ten idle
/// streams' worth), so a cluster of nearly idle origins never rebalances.
pub const DEFAULT_SLACK_KBPS: u64 = 1_000;

/// Default of `--rebalance-after`: how long an origin must stay hot before a move, and
/// so the least time between two moves.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(10);

/// A stream moved within this long is not moved by rebalancing.
pub const REST: Duration = Duration::from_secs(60);

/// When an origin counts as hot, and for how long it must stay so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceConfig {
    pub ratio: f64,
    pub slack_kbps: u64,
    pub after: Duration,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig { ratio: DEFAULT_RATIO, slack_kbps: DEFAULT_SLACK_KBPS, after: DEFAULT_AFTER }
    }
}

/// The origin with the highest score, when that score exceeds the mean of `scores` (the
/// open origins) both `ratio` times and by `slack_kbps`; `None` with fewer than two
/// origins. Ties go to the lowest id, so the choice is stable.
pub fn hottest(scores: &HashMap<NodeId, u64>, config: &RebalanceConfig) -> Option<NodeId> {
    if scores.len() < 2 {
        return None;
    }
    let mean = scores.values().sum::<u64>() as f64 / scores.len() as f64;
    let (hot, score) = scores.iter().max_by_key(|(id, score)| (**score, std::cmp::Reverse(**id)))?;
    let score = *score as f64;
    (score > mean * config.ratio && score - mean > config.slack_kbps as f64).then_some(*hot)
}

/// The origin with the lowest score other than `hot` (ties: the lowest id).
pub fn coolest(scores: &HashMap<NodeId, u64>, hot: NodeId) -> Option<NodeId> {
    scores.iter().filter(|(id, _)| **id != hot).min_by_key(|(id, score)| (**score, **id)).map(|(id, _)| *id)
}

/// Tracks how long the same origin has been hot, as the leader sees it.
#[derive(Debug)]
pub struct Hysteresis {
    config: RebalanceConfig,
    /// The hot origin and since when it has been hot without a break.
    streak: Option<(NodeId, Instant)>,
}

impl Hysteresis {
    pub fn new(config: RebalanceConfig) -> Self {
        Hysteresis { config, streak: None }
    }

    /// Feeds the scores of the open origins at `now`; returns `(hot, target)` once the
    /// same origin has been hot for `after` without a break, the target being the
    /// coolest other origin. A break, or another origin becoming the hot one, starts
    /// the streak afresh.
    pub fn observe(&mut self, scores: &HashMap<NodeId, u64>, now: Instant) -> Option<(NodeId, NodeId)> {
        let Some(hot) = hottest(scores, &self.config) else {
            self.streak = None;
            return None;
        };
        let since = match self.streak {
            Some((origin, since)) if origin == hot => since,
            _ => {
                self.streak = Some((hot, now));
                now
            }
        };
        if now.saturating_duration_since(since) < self.config.after {
            return None;
        }
        Some((hot, coolest(scores, hot)?))
    }

    /// A move off the hot origin was decided (made or not), failover moves are under
    /// way, or this node stopped leading: the streak starts afresh.
    pub fn restart(&mut self) {
        self.streak = None;
    }
}

/// A stream the hot origin owns that rebalancing may move.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub stream: StreamKey,
    pub epoch: u64,
    /// What it costs its owner now ([`super::load::stream_cost`]).
    pub cost_kbps: f64,
}

/// The stream to move from the hot origin (score `hot`) to the target (score `target`):
/// the costliest one that leaves the target no hotter than the hot origin after the
/// move (`target + cost <= hot - cost`). `None` when none fits, such as an origin hot
/// with one heavy stream: moving it would only make the target the hot one.
pub fn choose(hot: u64, target: u64, candidates: &[Candidate]) -> Option<&Candidate> {
    let room = hot.saturating_sub(target) as f64 / 2.0;
    candidates
        .iter()
        .filter(|c| c.cost_kbps <= room)
        .max_by(|a, b| a.cost_kbps.total_cmp(&b.cost_kbps).then_with(|| b.stream.cmp(&a.stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RebalanceConfig {
        RebalanceConfig { ratio: 1.5, slack_kbps: 1_000, after: Duration::from_secs(10) }
    }

    fn candidate(name: &str, cost_kbps: f64) -> Candidate {
        Candidate { stream: StreamKey::new("live", name).unwrap(), epoch: 1, cost_kbps }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn hot_means_above_the_mean_by_both_the_ratio_and_the_slack() {
        let c = config();
        // Mean 4,000: 6,500 is 1.625 times and 2,500 above it.
        assert_eq!(hottest(&HashMap::from([(1, 6_500), (2, 3_000), (3, 2_500)]), &c), Some(1));
        // Mean 4,500: 5,500 is only 1.22 times.
        assert_eq!(hottest(&HashMap::from([(1, 5_500), (2, 4_500), (3, 3_500)]), &c), None);
        // Nearly idle: 900 is three times the mean of 300 but only 600 above it.
        assert_eq!(hottest(&HashMap::from([(1, 900), (2, 0), (3, 0)]), &c), None);
        // One open origin: nowhere to move to.
        assert_eq!(hottest(&HashMap::from([(1, 90_000)]), &c), None);
        assert_eq!(coolest(&HashMap::from([(1, 6_500), (2, 3_000), (3, 2_500)]), 1), Some(3));
    }

    #[test]
    fn an_origin_must_stay_hot_for_the_whole_period_and_moves_are_spaced_by_it() {
        let t0 = Instant::now();
        let mut h = Hysteresis::new(config());
        let hot = HashMap::from([(1, 9_000), (2, 1_000), (3, 2_000)]);
        let calm = HashMap::from([(1, 4_000), (2, 3_000), (3, 2_000)]);
        assert_eq!(h.observe(&hot, t0), None);
        assert_eq!(h.observe(&hot, at(t0, 9)), None);
        // A calm reading breaks the streak: a burst shorter than the period moves nothing.
        assert_eq!(h.observe(&calm, at(t0, 10)), None);
        assert_eq!(h.observe(&hot, at(t0, 11)), None);
        assert_eq!(h.observe(&hot, at(t0, 20)), None);
        assert_eq!(h.observe(&hot, at(t0, 21)), Some((1, 2)), "hot from 11 s to 21 s");
        // After a move, a full period again before the next.
        h.restart();
        assert_eq!(h.observe(&hot, at(t0, 22)), None);
        assert_eq!(h.observe(&hot, at(t0, 31)), None);
        assert_eq!(h.observe(&hot, at(t0, 32)), Some((1, 2)));
        // Another origin becoming the hot one starts afresh.
        h.restart();
        assert_eq!(h.observe(&hot, at(t0, 40)), None);
        let other = HashMap::from([(1, 1_000), (2, 9_000), (3, 2_000)]);
        assert_eq!(h.observe(&other, at(t0, 45)), None);
        assert_eq!(h.observe(&other, at(t0, 54)), None);
        assert_eq!(h.observe(&other, at(t0, 55)), Some((2, 1)));
    }

    #[test]
    fn the_move_chosen_never_makes_the_target_the_hottest() {
        // Hot at 9,000, target at 1,000: room for a stream of at most 4,000.
        let streams = [candidate("a", 5_000.0), candidate("b", 3_000.0), candidate("c", 500.0)];
        assert_eq!(choose(9_000, 1_000, &streams).map(|c| c.stream.name.as_str()), Some("b"));
        // One heavy stream: moving it only moves the heat. Nothing moves (no flapping).
        assert_eq!(choose(6_000, 1_000, &[candidate("solo", 6_000.0)]), None);
        // Even at exactly half the gap the two end level, never reversed.
        assert_eq!(choose(6_000, 2_000, &[candidate("x", 2_000.0)]).map(|c| c.cost_kbps), Some(2_000.0));
        assert_eq!(choose(1_000, 2_000, &streams), None, "the target is hotter already");
        assert_eq!(choose(9_000, 1_000, &[]), None);
    }

    #[test]
    fn repeated_decisions_converge_and_then_stop() {
        // Origin 1 holds eight 1 Mbit/s streams, 2 and 3 nothing. Each decision moves one
        // stream to the coolest; the loop ends with no further move, and no stream ever
        // goes back to origin 1.
        let c = config();
        let mut owned: HashMap<NodeId, Vec<Candidate>> = HashMap::from([
            (1, (0..8).map(|i| candidate(&format!("s{i}"), 1_000.0)).collect()),
            (2, vec![]),
            (3, vec![]),
        ]);
        let mut moves = Vec::new();
        loop {
            let scores: HashMap<NodeId, u64> =
                owned.iter().map(|(o, s)| (*o, s.iter().map(|c| c.cost_kbps).sum::<f64>() as u64)).collect();
            let Some(hot) = hottest(&scores, &c) else { break };
            let target = coolest(&scores, hot).unwrap();
            let Some(pick) = choose(scores[&hot], scores[&target], &owned[&hot]).cloned() else { break };
            owned.get_mut(&hot).unwrap().retain(|s| s.stream != pick.stream);
            owned.get_mut(&target).unwrap().push(pick);
            moves.push((hot, target));
            assert!(moves.len() < 20, "no convergence: {moves:?}");
        }
        assert!(moves.iter().all(|(from, to)| *from == 1 && *to != 1), "{moves:?}");
        let counts: Vec<usize> = [1, 2, 3].iter().map(|o| owned[o].len()).collect();
        // Stops once origin 1 is within the ratio/slack of the mean: 4, 2, 2.
        assert_eq!(counts, vec![4, 2, 2], "{moves:?}");
    }
}
