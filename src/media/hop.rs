//! How long frames wait inside one process — a *hop*: from the moment the process got
//! a frame (decoded from a publisher's RTMP or from a link) to the moment it handed the
//! frame to the next socket's writer. Lock-free fixed buckets, rendered in the
//! Prometheus text format by hand after each process's registry (the bounds keep their
//! spelling, see [`crate::metrics::encode`]); `raftcast bench` and
//! `scripts/bench-compare.sh` read them to report the latency each hop adds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, in µs (the last bucket is +Inf).
/// Fine below 5 ms (the per-hop target) and around 100 ms (the default merge window).
pub const BUCKETS_US: [u64; 28] = [
    50, 100, 250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000,
    75_000, 100_000, 105_000, 110_000, 125_000, 150_000, 200_000, 300_000, 500_000, 1_000_000, 2_000_000, 5_000_000,
];

/// A histogram of waits.
#[derive(Debug, Default)]
pub struct HopLatency {
    /// Non-cumulative counts: `counts[i]` holds waits in `(BUCKETS_US[i-1], BUCKETS_US[i]]`,
    /// the last one everything above the last bound.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl HopLatency {
    pub fn observe(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|bound| *bound < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn observe_since(&self, arrived: Instant) {
        self.observe(arrived.elapsed());
    }

    /// Appends the histogram as `name` with `labels` (e.g. `hop="relay"`, or empty).
    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        if !out.contains(&format!("# TYPE {name} ")) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        }
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS_US.get(i).map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}\n{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_land_in_cumulative_buckets() {
        let h = HopLatency::default();
        for ms in [0, 1, 4, 4, 90, 2_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "x_hop_seconds", "help", "hop=\"relay\"");
        h.render(&mut out, "x_hop_seconds", "help", "hop=\"other\"");
        assert_eq!(out.matches("# TYPE x_hop_seconds histogram").count(), 1, "{out}");
        for line in [
            "x_hop_seconds_bucket{hop=\"relay\",le=\"0.00005\"} 1",
            "x_hop_seconds_bucket{hop=\"relay\",le=\"0.001\"} 2",
            "x_hop_seconds_bucket{hop=\"relay\",le=\"0.004\"} 4",
            "x_hop_seconds_bucket{hop=\"relay\",le=\"0.1\"} 5",
            "x_hop_seconds_bucket{hop=\"relay\",le=\"1\"} 5",
            "x_hop_seconds_bucket{hop=\"relay\",le=\"2\"} 6",
            "x_hop_seconds_bucket{hop=\"relay\",le=\"+Inf\"} 6",
            "x_hop_seconds_sum{hop=\"relay\"} 2.099",
            "x_hop_seconds_count{hop=\"relay\"} 6",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
