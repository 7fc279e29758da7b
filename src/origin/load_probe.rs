//! How the leader learns every origin's load: each origin measures its own (the
//! streams it owns with their ingest bitrate and subscribed edges, from its link
//! server; its process CPU, sampled by [`sample_cpu`]) and serves it on
//! [`LOAD_ROUTE`] (cluster secret, JSON, a few hundred bytes); while this node leads,
//! [`poll`] asks every voter once per [`POLL_EVERY`], concurrently, each within
//! [`POLL_TIMEOUT`], and keeps the answers on the [`LoadBoard`] that placement reads.
//! An origin that does not answer keeps no fresh report and is placed by its stream
//! count (see [`super::load::scores`]).
//!
//! Knows nothing of placement decisions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::typ::Raft;
use raftcast_raft::{NodeId, StreamKey};
use raftcast_storage::StateHandle;
use tokio_util::sync::CancellationToken;

use super::link_server::LinkContext;
use super::load::{claims_per_origin, scores, LoadBoard, LoadReport};
use super::membership::members;
use super::metrics::Metrics;
use crate::peer::{self, BodyError, PeerClient};

/// The internal route on which an origin serves its own [`LoadReport`].
pub const LOAD_ROUTE: &str = "/internal/load";

/// How often the leader polls every voter's load, and this origin samples its CPU.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long the leader waits for one origin's report.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(300);

/// CPU samples kept: the fraction is averaged over the last `CPU_SAMPLES - 1` periods
/// of [`POLL_EVERY`] (3 s), so one busy second does not swing placement.
const CPU_SAMPLES: usize = 4;

/// Largest report accepted from a peer (a report is a few hundred bytes).
const MAX_REPORT: usize = 16 * 1024;

/// Why a peer's report was not taken (logged at debug; the origin is then placed by
/// its stream count).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The request failed or timed out.
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The peer answered with an error status.
    #[error("status {0}")]
    Status(StatusCode),
    /// The answer was larger than `MAX_REPORT`, or did not arrive whole.
    #[error("{0}")]
    Body(#[from] BodyError),
    /// The answer was not a report.
    #[error("not a load report: {0}")]
    Decode(#[from] serde_json::Error),
    /// Another origin answered at that address.
    #[error("origin {0} answered")]
    WrongOrigin(NodeId),
    /// No answer within [`POLL_TIMEOUT`].
    #[error("no answer within {POLL_TIMEOUT:?}")]
    Timeout,
}

/// This process's CPU time at a few recent instants. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CpuMeter(Arc<Mutex<VecDeque<(Instant, Duration)>>>);

impl CpuMeter {
    /// Notes that the process had used `cpu` of CPU time at `at`.
    pub fn record(&self, at: Instant, cpu: Duration) {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == CPU_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((at, cpu));
    }

    /// CPU time used per second of wall time between the oldest and newest sample (1.0 =
    /// one core busy); 0 before two samples.
    pub fn fraction(&self) -> f64 {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match (samples.front(), samples.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                c1.saturating_sub(*c0).as_secs_f64() / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The CPU time this process has used: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, every
/// thread included (a vDSO call or a syscall; no file is read).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Samples this process's CPU time into `meter` every [`POLL_EVERY`] until `shutdown`.
pub async fn sample_cpu(meter: CpuMeter, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => meter.record(Instant::now(), process_cpu()),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Measures this origin's load and fetches other origins'. Cheap to clone.
#[derive(Clone)]
pub struct LoadProbe {
    id: NodeId,
    links: LinkContext,
    state: StateHandle,
    cpu: CpuMeter,
    peers: PeerClient,
}

impl LoadProbe {
    pub fn new(id: NodeId, links: LinkContext, state: StateHandle, cpu: CpuMeter, peers: PeerClient) -> Self {
        LoadProbe { id, links, state, cpu, peers }
    }

    /// This origin's load: every stream it owns in its applied state, with the bitrate
    /// and subscribed edges of its hub here (none yet: an idle stream); a hub left
    /// behind by a move does not count. And its CPU.
    pub fn local(&self) -> LoadReport {
        let live: HashMap<StreamKey, (f64, usize)> = self
            .links
            .live_streams(Instant::now())
            .into_iter()
            .filter_map(|s| Some((s.key()?, (s.bitrate_kbps, s.subscribers.len()))))
            .collect();
        let owned: Vec<(f64, usize)> = self.state.read(|sm| {
            sm.streams
                .iter()
                .filter(|(_, claim)| claim.owner == self.id)
                .map(|(key, _)| live.get(key).copied().unwrap_or((0.0, 0)))
                .collect()
        });
        LoadReport::new(self.id, owned, self.cpu.fraction())
    }

    async fn fetch(&self, origin: NodeId, http: &str) -> Result<LoadReport, ProbeError> {
        let attempt = async {
            let res = self.peers.get(self.peers.url(http, LOAD_ROUTE)).timeout(POLL_TIMEOUT).send().await?;
            if !res.status().is_success() {
                return Err(ProbeError::Status(res.status()));
            }
            let body = peer::body_within(res, MAX_REPORT).await?;
            let report: LoadReport = serde_json::from_slice(&body)?;
            if report.origin != origin {
                return Err(ProbeError::WrongOrigin(report.origin));
            }
            Ok(report)
        };
        tokio::time::timeout(POLL_TIMEOUT, attempt).await.unwrap_or(Err(ProbeError::Timeout))
    }
}

/// [`LOAD_ROUTE`]: this origin's load, for origins presenting the cluster secret.
pub async fn route(State(probe): State<LoadProbe>, headers: HeaderMap) -> Response {
    if !probe.peers.secret().admits(&headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    Json(probe.local()).into_response()
}

/// Until `shutdown`: while this node leads, records every voter's load on `board` once
/// per [`POLL_EVERY`] (its own without a request) and exports the reports and the
/// scores placement would use now (`raftcast_origin_*`). A poll waits for the previous
/// one, so at most one request per voter is in flight.
pub async fn poll(probe: LoadProbe, raft: Raft, board: LoadBoard, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if raft.metrics().borrow().state != openraft::ServerState::Leader {
            metrics.set_origin_loads(&HashMap::new(), &HashMap::new());
            continue;
        }
        board.record(probe.local(), Instant::now());
        let (voters, nodes) = members(&raft);
        let fetches = voters.into_iter().filter(|v| *v != probe.id).filter_map(|v| {
            let http = nodes.get(&v)?.http.clone();
            let probe = &probe;
            Some(async move { (v, probe.fetch(v, &http).await) })
        });
        for (origin, answer) in futures::future::join_all(fetches).await {
            match answer {
                Ok(report) => board.record(report, Instant::now()),
                Err(error) => tracing::debug!(origin, %error, "no load report; placing by stream count"),
            }
        }
        let reports = board.fresh(Instant::now());
        let (voters, _) = members(&raft);
        let voters: Vec<NodeId> = voters.into_iter().collect();
        let claims = probe.state.read(|sm| claims_per_origin(sm.streams.values()));
        metrics.set_origin_loads(&reports, &scores(&voters, &claims, &reports, &HashMap::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_averaged_over_the_kept_samples() {
        let t0 = Instant::now();
        let meter = CpuMeter::default();
        assert_eq!(meter.fraction(), 0.0);
        meter.record(t0, Duration::from_millis(0));
        assert_eq!(meter.fraction(), 0.0, "one sample says nothing");
        // Half a core for 2 s, then a full core for 1 s.
        meter.record(t0 + Duration::from_secs(2), Duration::from_millis(1000));
        assert!((meter.fraction() - 0.5).abs() < 1e-9);
        meter.record(t0 + Duration::from_secs(3), Duration::from_millis(2000));
        assert!((meter.fraction() - 2.0 / 3.0).abs() < 1e-9);
        // Only the last CPU_SAMPLES are kept: the first second's samples fall out.
        meter.record(t0 + Duration::from_secs(4), Duration::from_millis(3000));
        meter.record(t0 + Duration::from_secs(5), Duration::from_millis(4000));
        assert!((meter.fraction() - 1.0).abs() < 1e-9, "{}", meter.fraction());
    }

    #[test]
    fn the_process_cpu_clock_advances_with_work() {
        let before = process_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu() > before);
    }
}
