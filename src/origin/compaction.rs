//! Snapshots and purges by bytes. openraft 0.9 takes a snapshot (and then purges the
//! log behind it, keeping `--snapshot-keep` entries) every `--snapshot-every` entries,
//! whatever their size. With 64 KiB slot values an entry holds up to
//! `--max-entry-bytes`, and sled keeps the values of the entries it holds in memory: the
//! log is the origin's memory. So this task also
//!
//! - asks for a snapshot once `--snapshot-every-bytes` of entries were appended since
//!   the last ask (a sustained flood);
//! - asks for one when a burst is over: at least [`AFTER_BURST_BYTES`] appended since the
//!   last ask, and the last [`BURST_WINDOW`] appended less than an eighth of that. A
//!   flood's entries would otherwise stay in the log (and in memory) until 64 MiB more
//!   were written, which a quiet cluster may never do;
//! - purges the log behind each snapshot down to [`KEEP_BYTES`] of entries when
//!   openraft's `--snapshot-keep` entries hold more (64 entries of 256 KiB are 16 MiB).
//!   A follower further behind gets the snapshot, as it would anyway.
//!
//! Measured (docs/origin-cluster.md, "Memory after a burst"): 40 s of 16 writers of
//! 64 KiB, then the objects deleted; 60 s later origins held 47-68 MiB of RSS (from 17)
//! with the entry-count rules alone, 31-33 MiB with these.
//!
//! It only triggers; building and purging stay openraft's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::typ::Raft;
use raftcast_storage::LogReader;
use tokio_util::sync::CancellationToken;

/// How often the appended bytes are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A burst of at least this many appended bytes gets a snapshot once it is over.
pub const AFTER_BURST_BYTES: u64 = 4 * 1024 * 1024;
/// A burst is over when this long appended less than an eighth of it.
pub const BURST_WINDOW: Duration = Duration::from_secs(2);
/// Most bytes of entries kept behind a snapshot for followers slightly behind.
pub const KEEP_BYTES: u64 = 1024 * 1024;

/// Triggers snapshots and purges as described above, until shutdown or until the Raft
/// core stops.
pub async fn snapshot_by_bytes(
    raft: Raft,
    appended: Arc<AtomicU64>,
    reader: LogReader,
    every: u64,
    shutdown: CancellationToken,
) {
    let mut last = appended.load(Ordering::Relaxed);
    let samples = (BURST_WINDOW.as_millis() / CHECK_EVERY.as_millis()) as usize;
    let mut recent: VecDeque<u64> = VecDeque::with_capacity(samples + 1);
    let mut purged_behind: Option<u64> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = appended.load(Ordering::Relaxed);
        recent.push_back(now);
        if recent.len() > samples + 1 {
            recent.pop_front();
        }
        let lately = now.saturating_sub(recent.front().copied().unwrap_or(now));
        let full_window = recent.len() > samples;
        if due(last, now, every) || (full_window && burst_over(now.saturating_sub(last), lately)) {
            last = now;
            tracing::debug!(appended = now, "snapshot by bytes");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
        let (snapshot, purged, slowest_follower) = {
            let m = raft.metrics().borrow().clone();
            let purged = m.purged.map(|l| l.index);
            // On the leader, the least index every follower still replicating from the
            // log has (`None` elsewhere).
            let slowest = m.replication.as_ref().map(|r| {
                r.iter().filter(|(id, _)| **id != m.id).filter_map(|(_, l)| from_log(l.map(|l| l.index), purged)).min()
            });
            (m.snapshot.map(|l| l.index), purged, slowest.flatten())
        };
        let Some(snapshot) = snapshot else { continue };
        if purged_behind == Some(snapshot) {
            continue;
        }
        let r = reader.clone();
        let keep = match tokio::task::spawn_blocking(move || r.keep_from(snapshot, KEEP_BYTES)).await {
            Ok(Ok(keep)) => keep,
            _ => continue,
        };
        // Beyond what openraft's `--snapshot-keep` purge left, when that is too many bytes.
        // On the leader only once every follower has those entries: openraft defers a
        // purge replication still reads, and a purge still pending when the next
        // snapshot schedules its own, lower one trips openraft's `purge_upto` must not
        // go back (a debug assertion: `tests/raft_load.rs` panicked the leader on it).
        // A follower behind holds this purge back until it catches up, unless it is
        // already behind what openraft purged: that one gets the snapshot whatever this
        // task does (and a snapshot in flight defers no purge), so waiting for it only
        // kept the whole flood in the leader's log while a follower was down: the
        // leader's sled file grew to 235 MB in `flood-catchup`, the followers' 2.6 MB.
        if keep > 0 && slowest_follower.is_some_and(|s| s < keep - 1) {
            continue;
        }
        if keep > 0 && purged.is_none_or(|p| p < keep - 1) {
            tracing::debug!(snapshot, upto = keep - 1, "purge by bytes");
            if raft.trigger().purge_log(keep - 1).await.is_err() {
                return;
            }
        }
        purged_behind = Some(snapshot);
    }
}

/// The index a follower has matched, when it still replicates from the log: it is not
/// behind the `purged` index (a follower behind that needs the snapshot).
fn from_log(matched: Option<u64>, purged: Option<u64>) -> Option<u64> {
    match (matched, purged) {
        (_, None) => Some(matched.unwrap_or(0)),
        (Some(m), Some(p)) if m >= p => Some(m),
        _ => None,
    }
}

/// Whether `every` bytes were appended between the `last` trigger and `now`.
fn due(last: u64, now: u64, every: u64) -> bool {
    now.saturating_sub(last) >= every
}

/// Whether a burst of `since` bytes (since the last snapshot asked for) is over, with
/// `lately` bytes appended in the last [`BURST_WINDOW`].
fn burst_over(since: u64, lately: u64) -> bool {
    since >= AFTER_BURST_BYTES && lately.saturating_mul(8) <= since
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_follower_that_still_replicates_from_the_log_holds_the_purge() {
        // Nothing purged yet: every follower needs the log, one with nothing from 0.
        assert_eq!(from_log(None, None), Some(0));
        assert_eq!(from_log(Some(7), None), Some(7));
        // At or past the purged index: it reads the log.
        assert_eq!(from_log(Some(100), Some(100)), Some(100));
        assert_eq!(from_log(Some(150), Some(100)), Some(150));
        // Behind it: the snapshot catches it up; it holds nothing back.
        assert_eq!(from_log(Some(99), Some(100)), None);
        assert_eq!(from_log(None, Some(100)), None);
    }

    #[test]
    fn a_snapshot_is_due_once_enough_bytes_were_appended() {
        assert!(!due(0, 0, 100));
        assert!(!due(0, 99, 100));
        assert!(due(0, 100, 100));
        assert!(!due(100, 150, 100));
        assert!(due(100, 250, 100));
    }

    #[test]
    fn a_snapshot_is_due_when_a_burst_is_over() {
        let mib = 1024 * 1024;
        assert!(!burst_over(3 * mib, 0), "too small to be worth a snapshot");
        assert!(!burst_over(8 * mib, 2 * mib), "still writing fast");
        assert!(burst_over(8 * mib, mib), "slowed to an eighth");
        assert!(burst_over(40 * mib, 10_000), "a trickle after a flood");
    }
}
