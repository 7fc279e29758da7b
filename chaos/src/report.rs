//! The verdict of one schedule: `report.json`'s fields (exactly those the issue names),
//! what failed and why, per-node resource figures, and the table for humans.

use serde::Serialize;

/// One object of `report.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScheduleReport {
    pub schedule: String,
    /// Node-level faults injected (a rolling restart counts one per origin).
    pub faults: u64,
    /// Register operations and set adds attempted.
    pub operations: u64,
    /// Register writes/CAS and set adds acknowledged (including unknown outcomes
    /// resolved as applied by their idempotent retry).
    pub acked_writes: u64,
    /// Acknowledged set adds missing from a final read.
    pub lost_writes: u64,
    /// Every register key's history is linearizable.
    pub linearizable: bool,
    /// Longest window with no acknowledged write, in ms.
    pub max_unavailable_ms: u64,
    /// Longest time any player went without a new frame, in ms.
    pub max_media_stall_ms: u64,
    /// Frames the publisher sent that some player never got.
    pub frames_lost: u64,
    /// RTMP publisher and player disconnects.
    pub client_disconnects: u64,
    pub leader_changes: u64,
    /// Most distinct owners seen for one stream at one epoch.
    pub owners_per_epoch_max: u64,
}

/// Resident memory and data-dir size of one node, at the start and end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    pub node: String,
    pub rss_kib_start: Option<u64>,
    pub rss_kib_end: Option<u64>,
    pub data_bytes_start: Option<u64>,
    pub data_bytes_end: Option<u64>,
}

/// A schedule's report plus what the table and the exit code need.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub report: ScheduleReport,
    /// Why it failed (empty when it passed).
    pub problems: Vec<String>,
    pub nodes: Vec<NodeStats>,
    pub wall_secs: f64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The human table, one row per schedule.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<16} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}  {}\n",
        "schedule",
        "faults",
        "ops",
        "acked",
        "lost",
        "lin",
        "unavail",
        "stall",
        "flost",
        "disc",
        "leadch",
        "own/ep",
        "secs",
        "verdict"
    );
    for o in outcomes {
        let r = &o.report;
        out += &format!(
            "{:<16} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6.0}  {}\n",
            r.schedule,
            r.faults,
            r.operations,
            r.acked_writes,
            r.lost_writes,
            r.linearizable,
            r.max_unavailable_ms,
            r.max_media_stall_ms,
            r.frames_lost,
            r.client_disconnects,
            r.leader_changes,
            r.owners_per_epoch_max,
            o.wall_secs,
            if o.passed() { "PASS".to_string() } else { format!("FAIL: {}", o.problems.join("; ")) }
        );
    }
    out
}

/// Per-node figures as a small table.
pub fn node_table(o: &Outcome) -> String {
    let mut out = String::new();
    for n in &o.nodes {
        let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e6));
        out += &format!(
            "  {:<9} rss {} -> {} MiB, data {} -> {} MB\n",
            n.node,
            mib(n.rss_kib_start),
            mib(n.rss_kib_end),
            mb(n.data_bytes_start),
            mb(n.data_bytes_end)
        );
    }
    out
}
