//! Prometheus metrics of an origin: Raft progress (refreshed from openraft's metrics at
//! scrape time), proposals, apply latency, the edge links, and streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use raftcast_raft::typ::RaftMetrics;
use raftcast_raft::NodeId;

use super::link_server::LinkStats;
use super::load::LoadReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabel {
    pub follower: String,
}

/// Why a stream moved to another owner: `unreachable` (the leader's failover
/// supervisor), `edge` (an edge that cannot reach the owner asked), `planned` (an
/// operator's move), `drain` (its owner is draining) or `rebalance` (its owner stayed
/// hot); also why admission refused a write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabel {
    pub origin: String,
}

/// Values read at scrape time besides openraft's metrics.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Streams each origin owns, from this node's applied state (every member listed,
    /// with 0 for none).
    pub owned: BTreeMap<NodeId, usize>,
    /// Streams with a publisher attached on this origin, and link subscriptions.
    pub publishing: usize,
    pub subscriptions: usize,
    /// `WatchStream` requests waiting on this origin.
    pub watches: usize,
    /// Claims feeds of edge links.
    pub claim_feeds: usize,
    /// Bytes of writes waiting on this origin (admission control's budget in use).
    pub pending_write_bytes: usize,
}

/// Counters of this origin's recording (`origin::recording`), shared with the
/// recorder, which counts where it works.
#[derive(Debug, Default)]
pub struct RecordStats {
    /// Bytes of pieces written here (finished or recovered after a crash).
    pub bytes_written: Counter,
    /// Frames recorded pieces lost because their writer fell behind.
    pub frames_dropped: Counter,
    /// Pieces copied here from another origin, and their bytes.
    pub copies: Counter,
    pub bytes_copied: Counter,
    /// Live-rewind (DVR) answers given here, piece-level and stream-level alike: index
    /// answers, segment frames answers and the bytes of those frames bodies.
    pub dvr_index_requests: Counter,
    pub dvr_segment_requests: Counter,
    pub dvr_bytes_served: Counter,
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
    /// Writes this node passed on to the leader, and the requests that carried them
    /// (several writes share one request under load).
    pub forwarded_writes: Counter,
    pub forward_requests: Counter,
    /// Time to apply one batch of entries to the state machine.
    pub apply_seconds: Histogram,
    pub applied_entries: Counter,
    /// Leader changes observed by this node.
    pub leader_changes: Counter,
    last_leader: Mutex<Option<u64>>,
    /// The link server's counters (updated by the link tasks themselves).
    pub links: Arc<LinkStats>,
    streams_owned: Family<OriginLabel, Gauge>,
    /// Each origin's latest load report and score, on the leader only (see
    /// [`Metrics::set_origin_loads`]).
    origin_ingest_kbps: Family<OriginLabel, Gauge<f64, AtomicU64>>,
    origin_subscriber_edges: Family<OriginLabel, Gauge>,
    origin_cpu: Family<OriginLabel, Gauge<f64, AtomicU64>>,
    origin_load_score: Family<OriginLabel, Gauge>,
    link_publishers: Gauge,
    link_subscriptions: Gauge,
    /// Claims this origin released because their publisher stayed away.
    pub orphans_released: Counter,
    /// Streams this origin (as leader) moved to another owner, by reason.
    pub streams_reassigned: Family<ReasonLabel, Counter>,
    stream_watches: Gauge,
    claim_feeds: Gauge,
    /// Writes refused by admission control before proposal, by reason (`pending_bytes`,
    /// `apply_lag`).
    pub writes_refused: Family<ReasonLabel, Counter>,
    pending_write_bytes: Gauge,
    /// Recording at this origin.
    pub recording: Arc<RecordStats>,
    /// 1 while this node's Raft core runs, 0 once it stopped on a fatal error.
    raft_running: Gauge,
    heap_allocated: Gauge,
    heap_resident: Gauge,
    tokio_alive_tasks: Gauge,
    /// TLS handshakes from other members (with the cluster's mutual TLS): the HTTP
    /// port's (Raft RPC, edges' requests, ctl) and the media-link port's.
    pub peer_tls_http: Arc<crate::tls::HandshakeStats>,
    pub peer_tls_media: Arc<crate::tls::HandshakeStats>,
    peer_tls_handshakes: Family<HandshakeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    pub listener: &'static str,
    pub outcome: &'static str,
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
            forwarded_writes: Counter::default(),
            forward_requests: Counter::default(),
            apply_seconds: Histogram::new(exponential_buckets(0.000_005, 2.0, 18)),
            applied_entries: Counter::default(),
            leader_changes: Counter::default(),
            last_leader: Mutex::new(None),
            links: Arc::default(),
            streams_owned: Family::default(),
            origin_ingest_kbps: Family::default(),
            origin_subscriber_edges: Family::default(),
            origin_cpu: Family::default(),
            origin_load_score: Family::default(),
            link_publishers: Gauge::default(),
            link_subscriptions: Gauge::default(),
            orphans_released: Counter::default(),
            streams_reassigned: Family::default(),
            stream_watches: Gauge::default(),
            claim_feeds: Gauge::default(),
            writes_refused: Family::default(),
            pending_write_bytes: Gauge::default(),
            recording: Arc::default(),
            raft_running: Gauge::default(),
            heap_allocated: Gauge::default(),
            heap_resident: Gauge::default(),
            tokio_alive_tasks: Gauge::default(),
            peer_tls_http: Arc::default(),
            peer_tls_media: Arc::default(),
            peer_tls_handshakes: Family::default(),
            registry: Registry::default(),
        };
        // Every reason is exported from the start, at 0.
        for reason in ["unreachable", "edge", "planned", "drain", "rebalance"] {
            m.streams_reassigned.get_or_create(&ReasonLabel { reason }).inc_by(0);
        }
        for reason in ["pending_bytes", "apply_lag"] {
            m.writes_refused.get_or_create(&ReasonLabel { reason }).inc_by(0);
        }
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
        registry.register("raft_forwarded_writes", "Writes passed on to the leader", m.forwarded_writes.clone());
        registry.register(
            "raft_forward_requests",
            "Requests to the leader that carried forwarded writes",
            m.forward_requests.clone(),
        );
        registry.register("raft_applied_entries", "Entries applied to the state machine", m.applied_entries.clone());
        registry.register("raft_leader_changes", "Leader changes seen by this node", m.leader_changes.clone());
        registry.register("link_connections", "Edge links open now", m.links.links.clone());
        registry.register("link_bytes_in", "Bytes read from edge links", m.links.bytes_in.clone());
        registry.register("link_bytes_out", "Bytes written to edge links", m.links.bytes_out.clone());
        registry.register("link_refused", "Edge links refused at Hello", m.links.refused.clone());
        registry.register(
            "link_pending_dropped_frames",
            "Media frames dropped while their publish waited for its claim",
            m.links.pending_dropped.clone(),
        );
        registry.register(
            "link_handovers_completed",
            "Streams moved away whose publisher left this origin after attaching to the new owner",
            m.links.handovers_completed.clone(),
        );
        registry.register(
            "link_handovers_expired",
            "Streams moved away whose publisher was still here when the handover grace ran out",
            m.links.handovers_expired.clone(),
        );
        registry.register(
            "streams_owned",
            "Streams each origin owns (replicated claims, as applied on this node)",
            m.streams_owned.clone(),
        );
        registry.register(
            "origin_ingest_kbps",
            "Ingest bitrate of the streams each origin owns, as it last reported (on the leader)",
            m.origin_ingest_kbps.clone(),
        );
        registry.register(
            "origin_subscriber_edges",
            "Edges subscribed to the streams each origin owns, as it last reported (on the leader)",
            m.origin_subscriber_edges.clone(),
        );
        registry.register(
            "origin_cpu_cores",
            "Process CPU of each origin over its last seconds, as it last reported (on the leader)",
            m.origin_cpu.clone(),
        );
        registry.register(
            "origin_load_score",
            "The load placement compares for each live origin, kbit/s-equivalent (on the leader)",
            m.origin_load_score.clone(),
        );
        registry.register(
            "link_publishers",
            "Streams with a publisher attached on this origin",
            m.link_publishers.clone(),
        );
        registry.register(
            "link_subscriptions",
            "Edge subscriptions served by this origin",
            m.link_subscriptions.clone(),
        );
        registry.register(
            "orphans_released",
            "Claims this origin released because their publisher stayed away past the grace period",
            m.orphans_released.clone(),
        );
        registry.register(
            "streams_reassigned",
            "Streams this origin, as leader, moved to another owner: reason=unreachable (the owner left the \
             leader's Raft RPCs unanswered past --owner-dead-after-ms), edge (an edge that cannot reach the \
             owner asked), planned (an operator's move) or drain (its owner is draining)",
            m.streams_reassigned.clone(),
        );
        registry.register("stream_watches", "WatchStream requests waiting on this origin", m.stream_watches.clone());
        registry.register("link_claim_feeds", "Claims feeds open on edge links", m.claim_feeds.clone());
        let rec = &m.recording;
        registry.register(
            "recording_written_bytes",
            "Bytes of recording pieces written here",
            rec.bytes_written.clone(),
        );
        registry.register(
            "recording_frames_dropped",
            "Frames recording pieces lost because their writer fell behind",
            rec.frames_dropped.clone(),
        );
        registry.register("recording_copies", "Recording pieces copied here from another origin", rec.copies.clone());
        registry.register("recording_copied_bytes", "Bytes of recording pieces copied here", rec.bytes_copied.clone());
        registry.register(
            "recording_dvr_index_requests",
            "Live-rewind index answers given here (piece and stream level)",
            rec.dvr_index_requests.clone(),
        );
        registry.register(
            "recording_dvr_segment_requests",
            "Live-rewind segment frames answers given here (piece and stream level)",
            rec.dvr_segment_requests.clone(),
        );
        registry.register(
            "recording_dvr_served_bytes",
            "Bytes of live-rewind segment frames served here",
            rec.dvr_bytes_served.clone(),
        );
        registry.register(
            "raft_writes_refused",
            "Writes refused by admission control before proposal, by reason",
            m.writes_refused.clone(),
        );
        registry.register(
            "raft_pending_write_bytes",
            "Bytes of writes waiting on this origin (queued, proposed or forwarded, not yet answered)",
            m.pending_write_bytes.clone(),
        );
        registry.register(
            "raft_running",
            "1 while the Raft core runs, 0 once it stopped on a fatal error",
            m.raft_running.clone(),
        );
        registry.register(
            "peer_tls_handshakes",
            "TLS handshakes of other members (the cluster's mutual TLS) by listener (http, media) and outcome \
             (ok; failed: a bad hello, no certificate or one the cluster CA did not sign; timed_out)",
            m.peer_tls_handshakes.clone(),
        );
        registry.register(
            "heap_allocated_bytes",
            "Bytes the process has allocated and not freed (jemalloc stats.allocated)",
            m.heap_allocated.clone(),
        );
        registry.register(
            "heap_resident_bytes",
            "Bytes of pages the allocator keeps resident (jemalloc stats.resident)",
            m.heap_resident.clone(),
        );
        registry.register(
            "tokio_alive_tasks",
            "Tasks alive in the process's tokio runtime (spawned, not yet finished)",
            m.tokio_alive_tasks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records one apply batch.
    /// Exports the fresh load `reports` and the placement `scores` (only these: an
    /// origin without a fresh report disappears, and a node that stops leading exports
    /// none).
    pub fn set_origin_loads(&self, reports: &HashMap<NodeId, LoadReport>, scores: &HashMap<NodeId, u64>) {
        for family in [&self.origin_ingest_kbps, &self.origin_cpu] {
            family.clear();
        }
        self.origin_subscriber_edges.clear();
        self.origin_load_score.clear();
        for (origin, r) in reports {
            let label = OriginLabel { origin: origin.to_string() };
            self.origin_ingest_kbps.get_or_create(&label).set(r.ingest_kbps);
            self.origin_subscriber_edges.get_or_create(&label).set(i64::from(r.subscriber_edges));
            self.origin_cpu.get_or_create(&label).set(r.cpu);
        }
        for (origin, score) in scores {
            let label = OriginLabel { origin: origin.to_string() };
            self.origin_load_score.get_or_create(&label).set(i64::try_from(*score).unwrap_or(i64::MAX));
        }
    }

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

    /// Refreshes the gauges read at scrape time and renders the Prometheus text format.
    pub fn render(&self, m: &RaftMetrics, scrape: &Scrape) -> String {
        let set = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        self.streams_owned.clear();
        for (origin, n) in &scrape.owned {
            set(&self.streams_owned.get_or_create(&OriginLabel { origin: origin.to_string() }), *n as u64);
        }
        set(&self.link_publishers, scrape.publishing as u64);
        set(&self.link_subscriptions, scrape.subscriptions as u64);
        set(&self.stream_watches, scrape.watches as u64);
        set(&self.claim_feeds, scrape.claim_feeds as u64);
        set(&self.pending_write_bytes, scrape.pending_write_bytes as u64);
        set(&self.raft_running, u64::from(m.running_state.is_ok()));
        use std::sync::atomic::Ordering::Relaxed;
        for (listener, stats) in [("http", &self.peer_tls_http), ("media", &self.peer_tls_media)] {
            for (outcome, n) in [("ok", &stats.ok), ("failed", &stats.failed), ("timed_out", &stats.timed_out)] {
                // Counters only rise: add what was counted since the last scrape.
                let counter = self.peer_tls_handshakes.get_or_create(&HandshakeLabel { listener, outcome });
                counter.inc_by(n.load(Relaxed).saturating_sub(counter.get()));
            }
        }
        if let Some(heap) = crate::heap::stats() {
            set(&self.heap_allocated, heap.allocated);
            set(&self.heap_resident, heap.resident);
        }
        if let Some(tasks) = crate::metrics::tokio_alive_tasks() {
            set(&self.tokio_alive_tasks, tasks);
        }
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
        crate::metrics::encode(&self.registry, |out| {
            self.links.hop.render(
                out,
                "raftcast_link_hop_seconds",
                "How long live frames wait in this origin, from an ingest link to an edge's link",
                "",
            )
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_counters_and_stream_counts_are_exported() {
        let metrics = Metrics::new();
        metrics.links.links.inc();
        metrics.links.bytes_in.inc_by(1234);
        metrics.links.refused.inc();
        metrics.streams_reassigned.get_or_create(&ReasonLabel { reason: "unreachable" }).inc_by(2);
        metrics.writes_refused.get_or_create(&ReasonLabel { reason: "apply_lag" }).inc();
        let scrape = Scrape {
            owned: BTreeMap::from([(1, 2), (2, 0)]),
            publishing: 1,
            subscriptions: 3,
            watches: 4,
            claim_feeds: 2,
            pending_write_bytes: 65536,
        };
        let text = metrics.render(&RaftMetrics::new_initial(1), &scrape);
        for line in [
            "raftcast_link_connections 1",
            "raftcast_link_bytes_in_total 1234",
            "raftcast_link_bytes_out_total 0",
            "raftcast_link_refused_total 1",
            "raftcast_streams_owned{origin=\"1\"} 2",
            "raftcast_streams_owned{origin=\"2\"} 0",
            "raftcast_link_publishers 1",
            "raftcast_link_subscriptions 3",
            "raftcast_stream_watches 4",
            "raftcast_link_claim_feeds 2",
            "raftcast_streams_reassigned_total{reason=\"unreachable\"} 2",
            "raftcast_streams_reassigned_total{reason=\"edge\"} 0",
            "raftcast_streams_reassigned_total{reason=\"drain\"} 0",
            "raftcast_raft_writes_refused_total{reason=\"apply_lag\"} 1",
            "raftcast_raft_writes_refused_total{reason=\"pending_bytes\"} 0",
            "raftcast_raft_pending_write_bytes 65536",
            "raftcast_raft_running 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // A stream count of an origin that left is not kept from an earlier scrape.
        let text = metrics.render(&RaftMetrics::new_initial(1), &Scrape::default());
        assert!(!text.contains("raftcast_streams_owned{"), "{text}");
    }
}
