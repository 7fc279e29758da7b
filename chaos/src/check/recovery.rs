//! Recovery after an attack, as issue 12 states it: the cluster commits a write within
//! 5 s, a new publisher and player work on every edge, the canary stream never stalls
//! longer than 1 s, and every process's resident memory comes back within 20 % of where
//! it stood before the attack within a minute. Pure: fed the probes' records.

use serde::{Deserialize, Serialize};

/// A write must commit within this long after the attack ends.
pub const COMMIT_WITHIN_MS: u64 = 5_000;
/// Longest gap between two canary frames allowed in a schedule with attacks.
pub const CANARY_MAX_STALL_MS: u64 = 1_000;
/// How long after the attack RSS has to come back.
pub const RSS_WINDOW_MS: u64 = 60_000;
/// How far above its pre-attack RSS a process may stay, in percent.
pub const RSS_TOLERANCE_PERCENT: u64 = 20;

/// What one edge's media probe saw: a new publisher on the edge and a new player of
/// that stream on the same edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeProbe {
    pub edge: String,
    /// Time to the player's first frame, when it came.
    pub first_frame_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One node's RSS around an attack: before it, then `(ms after the attack ended, KiB)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RssTrace {
    pub node: String,
    pub before_kib: u64,
    pub samples: Vec<(u64, u64)>,
}

/// Everything probed after one attack window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub after: String,
    /// Time from the attack's end to the first committed probe write; `None`: none
    /// committed while probing.
    pub commit_ms: Option<u64>,
    pub edges: Vec<EdgeProbe>,
    pub rss: Vec<RssTrace>,
}

/// When (ms after the attack) `t`'s RSS was first back within the tolerance of its
/// pre-attack figure inside the window; `None`: it never was.
pub fn rss_back_at(t: &RssTrace) -> Option<u64> {
    let limit = t.before_kib + t.before_kib * RSS_TOLERANCE_PERCENT / 100;
    t.samples.iter().find(|(ms, kib)| *ms <= RSS_WINDOW_MS && *kib <= limit).map(|(ms, _)| *ms)
}

/// The problems in one record (empty: it recovered).
pub fn check(r: &RecoveryRecord) -> Vec<String> {
    let mut problems = Vec::new();
    match r.commit_ms {
        Some(ms) if ms <= COMMIT_WITHIN_MS => {}
        Some(ms) => {
            problems.push(format!("after {}: the first write committed after {ms} ms (> {COMMIT_WITHIN_MS})", r.after))
        }
        None => problems.push(format!("after {}: no write committed", r.after)),
    }
    for e in &r.edges {
        if e.first_frame_ms.is_none() {
            let why = e.error.as_deref().unwrap_or("no frame");
            problems.push(format!("after {}: a new publisher and player on {} failed: {why}", r.after, e.edge));
        }
    }
    for t in &r.rss {
        if rss_back_at(t).is_none() {
            let peak = t.samples.iter().map(|s| s.1).max().unwrap_or(0);
            let last = t.samples.last().map_or(0, |s| s.1);
            problems.push(format!(
                "after {}: {} RSS {:.1} MiB before, {:.1} MiB at worst, still {:.1} MiB after {} s (> +{RSS_TOLERANCE_PERCENT} %)",
                r.after,
                t.node,
                t.before_kib as f64 / 1024.0,
                peak as f64 / 1024.0,
                last as f64 / 1024.0,
                t.samples.last().map_or(0, |s| s.0) / 1000
            ));
        }
    }
    problems
}

/// The canary's stall against [`CANARY_MAX_STALL_MS`].
pub fn canary(max_stall_ms: u64) -> Option<String> {
    (max_stall_ms > CANARY_MAX_STALL_MS)
        .then(|| format!("the canary stream stalled {max_stall_ms} ms (> {CANARY_MAX_STALL_MS} ms)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> RecoveryRecord {
        RecoveryRecord {
            after: "http-idle".into(),
            commit_ms: Some(40),
            edges: vec![EdgeProbe { edge: "edge-1".into(), first_frame_ms: Some(300), error: None }],
            rss: vec![RssTrace {
                node: "origin-1".into(),
                before_kib: 20_000,
                samples: vec![(0, 90_000), (5_000, 23_000)],
            }],
        }
    }

    #[test]
    fn a_cluster_that_recovered_passes() {
        assert_eq!(check(&good()), Vec::<String>::new());
        assert_eq!(rss_back_at(&good().rss[0]), Some(5_000));
        assert_eq!(canary(1_000), None);
    }

    #[test]
    fn memory_that_never_comes_back_within_a_minute_is_flagged() {
        let mut r = good();
        // 2.6 GB and staying: the write flood.
        r.rss[0].samples = (0..=60).map(|s| (s * 1_000, 2_600_000)).collect();
        let p = check(&r);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("origin-1 RSS"), "{p:?}");
        // Back, but only after the window: still flagged.
        r.rss[0].samples = vec![(0, 90_000), (61_000, 20_000)];
        assert_eq!(check(&r).len(), 1);
        // Just above +20 %: flagged; at +20 %: fine.
        r.rss[0].samples = vec![(1_000, 24_001)];
        assert_eq!(check(&r).len(), 1);
        r.rss[0].samples = vec![(1_000, 24_000)];
        assert!(check(&r).is_empty());
    }

    #[test]
    fn a_slow_commit_a_dead_edge_and_a_stalled_canary_are_flagged() {
        let mut r = good();
        r.commit_ms = Some(5_001);
        r.edges[0] = EdgeProbe { edge: "edge-1".into(), first_frame_ms: None, error: Some("connect refused".into()) };
        let p = check(&r);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[1].contains("connect refused"));
        r.commit_ms = None;
        assert!(check(&r)[0].contains("no write committed"));
        assert!(canary(1_001).is_some());
    }
}
