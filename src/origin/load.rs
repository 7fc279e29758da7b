//! An origin's load as placement weighs it: what each origin reports about itself
//! ([`LoadReport`]), the leader's latest reports ([`LoadBoard`]) and the score that
//! placement and rebalancing compare ([`scores`]).
//!
//! Load is soft state: never replicated, measured by each origin for itself and polled
//! by the leader (`load_probe`). This module is pure apart from the board's clock
//! reads by its callers; it knows no sockets, no Raft and no media.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftcast_raft::command::StreamClaim;
use raftcast_raft::NodeId;
use serde::{Deserialize, Serialize};

/// The ingest an idle or not yet measured stream counts as, in kbit/s: a claim with no
/// publisher yet, or one between keyframes, still costs a hub, a claim and a slot in
/// every feed, so a hundred idle streams are not free.
pub const FLOOR_KBPS: f64 = 100.0;

/// Process CPU (in cores) below which an origin's CPU does not count: background work
/// (Raft heartbeats, the leader's own polling) would otherwise tilt placement between
/// idle origins.
pub const CPU_QUIET: f64 = 0.2;

/// CPU (in cores) beyond which more does not count: one runaway reading must not make
/// an origin look infinitely loaded.
pub const CPU_CAP: f64 = 4.0;

/// A report older than this is ignored: its origin is placed by its stream count.
pub const REPORT_FRESH: Duration = Duration::from_secs(3);

/// What an origin measures about itself and answers on `load_probe::LOAD_ROUTE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub origin: NodeId,
    /// Streams this origin owns in its applied state (with a publisher or not).
    pub streams: u32,
    /// Their summed ingest bitrate (raw, without the floor).
    pub ingest_kbps: f64,
    /// Their summed subscribed edges (each receives the stream once from here).
    pub subscriber_edges: u32,
    /// What their traffic costs: the sum of [`stream_cost`].
    pub traffic_kbps: f64,
    /// CPU time the process used per second over the last few seconds (1.0 = one core).
    pub cpu: f64,
}

impl LoadReport {
    /// The report of `origin` owning streams of (ingest kbit/s, subscribed edges).
    pub fn new(origin: NodeId, streams: impl IntoIterator<Item = (f64, usize)>, cpu: f64) -> Self {
        let mut report =
            LoadReport { origin, streams: 0, ingest_kbps: 0.0, subscriber_edges: 0, traffic_kbps: 0.0, cpu };
        for (kbps, edges) in streams {
            report.streams += 1;
            report.ingest_kbps += kbps;
            report.subscriber_edges += edges as u32;
            report.traffic_kbps += stream_cost(kbps, edges);
        }
        report
    }
}

/// What one stream costs its owner, in kbit/s: its ingest (at least [`FLOOR_KBPS`]) in
/// once and out once per subscribed edge. Bitrate dominates; a stream watched through
/// many edges weighs more than an unwatched one.
pub fn stream_cost(ingest_kbps: f64, subscriber_edges: usize) -> f64 {
    ingest_kbps.max(FLOOR_KBPS) * (1 + subscriber_edges) as f64
}

/// How many of `claims` each origin owns (the stream counts of [`scores`]).
pub fn claims_per_origin<'a>(claims: impl IntoIterator<Item = &'a StreamClaim>) -> HashMap<NodeId, usize> {
    let mut per_origin = HashMap::new();
    for claim in claims {
        *per_origin.entry(claim.owner).or_default() += 1;
    }
    per_origin
}

/// The leader's latest report from each origin. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct LoadBoard(Arc<Mutex<HashMap<NodeId, (LoadReport, Instant)>>>);

impl LoadBoard {
    /// Keeps `report`, received at `at`, as its origin's latest.
    pub fn record(&self, report: LoadReport, at: Instant) {
        let mut board = self.0.lock().unwrap_or_else(|p| p.into_inner());
        board.insert(report.origin, (report, at));
    }

    /// The reports younger than [`REPORT_FRESH`] at `now` (older ones are dropped).
    pub fn fresh(&self, now: Instant) -> HashMap<NodeId, LoadReport> {
        let mut board = self.0.lock().unwrap_or_else(|p| p.into_inner());
        board.retain(|_, (_, at)| now.saturating_duration_since(*at) < REPORT_FRESH);
        board.iter().map(|(origin, (report, _))| (*origin, report.clone())).collect()
    }
}

/// The load of each of `origins` that placement compares, in kbit/s (rounded): its
/// reported traffic, plus one *unit* for each stream it owns (`claims`, from the
/// applied state) beyond those its report covers and for each placement on it still
/// in flight (`in_flight`), all scaled up by its CPU beyond [`CPU_QUIET`]:
///
/// `score = (traffic + (unreported + in_flight) × unit) × (1 + clamp(cpu − CPU_QUIET, 0, CPU_CAP))`
///
/// The unit is what an average reported stream costs (at least [`FLOOR_KBPS`]): a
/// stream claimed or moved since its origin's report (the report counts every stream
/// its origin owned then, publishing or not) is not measured yet, and is expected to
/// be average. An origin
/// without a fresh report counts every stream it owns as a unit, so with no reports at
/// all the score orders origins by stream count, as placement did before load was
/// measured.
pub fn scores(
    origins: &[NodeId],
    claims: &HashMap<NodeId, usize>,
    reports: &HashMap<NodeId, LoadReport>,
    in_flight: &HashMap<NodeId, usize>,
) -> HashMap<NodeId, u64> {
    let (streams, traffic) =
        reports.values().fold((0u64, 0.0), |(n, t), r| (n + u64::from(r.streams), t + r.traffic_kbps));
    let unit = if streams == 0 { FLOOR_KBPS } else { (traffic / streams as f64).max(FLOOR_KBPS) };
    origins
        .iter()
        .map(|origin| {
            let owned = claims.get(origin).copied().unwrap_or(0);
            let pending = in_flight.get(origin).copied().unwrap_or(0);
            let (traffic, covered, cpu) = match reports.get(origin) {
                Some(r) => (r.traffic_kbps, r.streams as usize, r.cpu),
                None => (0.0, 0, 0.0),
            };
            let unmeasured = owned.saturating_sub(covered) + pending;
            let busy = 1.0 + (cpu - CPU_QUIET).clamp(0.0, CPU_CAP);
            (*origin, ((traffic + unmeasured as f64 * unit) * busy).round() as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(origin: NodeId, streams: &[(f64, usize)], cpu: f64) -> LoadReport {
        LoadReport::new(origin, streams.iter().copied(), cpu)
    }

    #[test]
    fn a_stream_costs_its_bitrate_in_and_out_to_each_edge_with_a_floor() {
        assert_eq!(stream_cost(3000.0, 0), 3000.0);
        assert_eq!(stream_cost(3000.0, 2), 9000.0);
        assert_eq!(stream_cost(0.0, 0), FLOOR_KBPS, "an idle stream is not free");
        assert_eq!(stream_cost(20.0, 1), 2.0 * FLOOR_KBPS);
        let r = report(1, &[(3000.0, 1), (0.0, 0)], 0.5);
        assert_eq!((r.streams, r.ingest_kbps, r.subscriber_edges, r.traffic_kbps), (2, 3000.0, 1, 6100.0));
    }

    #[test]
    fn without_reports_scores_order_origins_by_stream_count() {
        let claims = HashMap::from([(1, 4), (2, 1)]);
        let s = scores(&[1, 2, 3], &claims, &HashMap::new(), &HashMap::from([(3, 2)]));
        assert_eq!(s, HashMap::from([(1, 400), (2, 100), (3, 200)]));
    }

    #[test]
    fn a_few_heavy_streams_outweigh_many_idle_ones_and_unmeasured_streams_count_as_average() {
        // Origin 1: 3 streams at 4 Mbit/s; origin 2: 30 idle streams; origin 3 has no
        // fresh report and owns 5 streams.
        let heavy: Vec<(f64, usize)> = vec![(4000.0, 0); 3];
        let idle: Vec<(f64, usize)> = vec![(0.0, 0); 30];
        let reports = HashMap::from([(1, report(1, &heavy, 0.0)), (2, report(2, &idle, 0.0))]);
        let claims = HashMap::from([(1, 3), (2, 30), (3, 5)]);
        let s = scores(&[1, 2, 3], &claims, &reports, &HashMap::new());
        assert_eq!((s[&1], s[&2]), (12_000, 3_000));
        // The unit: 15,000 kbit/s over 33 reported streams.
        let unit = 15_000.0_f64 / 33.0;
        assert_eq!(s[&3], (5.0 * unit).round() as u64);
        // A claim committed since origin 1 reported counts as one more unit.
        let claims = HashMap::from([(1, 4), (2, 30)]);
        assert_eq!(scores(&[1], &claims, &reports, &HashMap::new())[&1], (12_000.0 + unit).round() as u64);
    }

    #[test]
    fn cpu_counts_only_beyond_the_quiet_level_and_up_to_the_cap() {
        let one = |cpu: f64| {
            let reports = HashMap::from([(1, report(1, &[(1000.0, 0)], cpu))]);
            scores(&[1], &HashMap::from([(1, 1)]), &reports, &HashMap::new())[&1]
        };
        assert_eq!(one(0.0), 1000);
        assert_eq!(one(CPU_QUIET), 1000, "background work does not tilt placement");
        assert_eq!(one(1.2), 2000, "a busy core doubles the score");
        assert_eq!(one(100.0), 5000, "capped");
    }

    #[test]
    fn stale_reports_are_forgotten() {
        let t0 = Instant::now();
        let board = LoadBoard::default();
        board.record(report(1, &[], 0.0), t0);
        board.record(report(2, &[], 0.0), t0 + Duration::from_secs(2));
        assert_eq!(board.fresh(t0 + Duration::from_millis(2_999)).len(), 2);
        let fresh = board.fresh(t0 + REPORT_FRESH);
        assert_eq!(fresh.keys().copied().collect::<Vec<_>>(), vec![2]);
    }
}
