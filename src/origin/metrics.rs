//! Prometheus metrics of an origin: Raft progress (refreshed from openraft's metrics at
//! scrape time), proposals, and apply latency.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use raftcast_raft::typ::RaftMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabel {
    pub follower: String,
}

/// Every metric an origin exports.
pub struct Metrics {
    registry: Registry,
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    replication_lag: Family<FollowerLabel, Gauge>,
    /// Proposals by outcome: `committed`, `rejected` (applied, refused by the state
    /// machine), `failed` (not committed: no leader, stopped).
    pub proposals: Family<ResultLabel, Counter>,
    /// Time from proposal to applied response, on the leader.
    pub proposal_seconds: Histogram,
    /// Time to apply one batch of entries to the state machine.
    pub apply_seconds: Histogram,
    pub applied_entries: Counter,
    /// Leader changes observed by this node.
    pub leader_changes: Counter,
    last_leader: Mutex<Option<u64>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("raftcast");
        let m = Metrics {
            term: Gauge::default(),
            leader: Gauge::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            replication_lag: Family::default(),
            proposals: Family::default(),
            proposal_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            apply_seconds: Histogram::new(exponential_buckets(0.000_005, 2.0, 18)),
            applied_entries: Counter::default(),
            leader_changes: Counter::default(),
            last_leader: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register("raft_leader_id", "Node id of the known leader (0: none)", m.leader.clone());
        registry.register("raft_is_leader", "1 when this node leads", m.is_leader.clone());
        registry.register("raft_last_log_index", "Index of the last log entry", m.last_log_index.clone());
        registry.register("raft_applied_index", "Index of the last applied entry", m.applied_index.clone());
        registry.register("raft_snapshot_index", "Last index covered by the snapshot", m.snapshot_index.clone());
        registry.register(
            "raft_replication_lag_entries",
            "Entries a follower is behind the leader's last log (on the leader)",
            m.replication_lag.clone(),
        );
        registry.register("raft_proposals", "Proposals by outcome", m.proposals.clone());
        registry.register(
            "raft_proposal_seconds",
            "Proposal to applied response, on the leader",
            m.proposal_seconds.clone(),
        );
        registry.register("raft_apply_seconds", "Time to apply a batch of entries", m.apply_seconds.clone());
        registry.register("raft_applied_entries", "Entries applied to the state machine", m.applied_entries.clone());
        registry.register("raft_leader_changes", "Leader changes seen by this node", m.leader_changes.clone());
        Metrics { registry, ..m }
    }

    /// Records one apply batch.
    pub fn observe_apply(&self, took: Duration, entries: usize) {
        self.apply_seconds.observe(took.as_secs_f64());
        self.applied_entries.inc_by(entries as u64);
    }

    /// Tracks leader changes from openraft's metrics stream.
    pub fn observe_raft(&self, m: &RaftMetrics) {
        let mut last = self.last_leader.lock().unwrap_or_else(|p| p.into_inner());
        if m.current_leader.is_some() && *last != m.current_leader {
            if last.is_some() {
                self.leader_changes.inc();
            }
            *last = m.current_leader;
        }
    }

    /// Refreshes the Raft gauges and renders the Prometheus text format.
    pub fn render(&self, m: &RaftMetrics) -> String {
        let set = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.term, m.current_term);
        set(&self.leader, m.current_leader.unwrap_or(0));
        set(&self.is_leader, u64::from(m.current_leader == Some(m.id)));
        set(&self.last_log_index, m.last_log_index.unwrap_or(0));
        set(&self.applied_index, m.last_applied.map_or(0, |l| l.index));
        set(&self.snapshot_index, m.snapshot.map_or(0, |l| l.index));
        self.replication_lag.clear();
        if let Some(replication) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            for (follower, matched) in replication {
                if *follower == m.id {
                    continue;
                }
                let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                set(&self.replication_lag.get_or_create(&FollowerLabel { follower: follower.to_string() }), lag);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
