//! Snapshots by bytes: openraft 0.9 takes a snapshot (and then purges the log behind
//! it) every `--snapshot-every` entries, whatever their size. With 64 KiB slot values an
//! entry holds up to `--max-entry-bytes`, and 10,000 of them kept a couple of GB of log in
//! sled, whose memory grew with it (docs/origin-cluster.md). This task also asks for a
//! snapshot once `--snapshot-every-bytes` of entries were appended since the last ask.
//!
//! It only triggers; building, purging and what to keep stay openraft's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::typ::Raft;
use tokio_util::sync::CancellationToken;

/// How often the appended bytes are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Triggers a snapshot whenever `every` more bytes were appended to the log, until
/// shutdown or until the Raft core stops.
pub async fn snapshot_by_bytes(raft: Raft, appended: Arc<AtomicU64>, every: u64, shutdown: CancellationToken) {
    let mut last = appended.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = appended.load(Ordering::Relaxed);
        if due(last, now, every) {
            last = now;
            tracing::debug!(appended = now, "snapshot by bytes");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// Whether `every` bytes were appended between the `last` trigger and `now`.
fn due(last: u64, now: u64, every: u64) -> bool {
    now.saturating_sub(last) >= every
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_once_enough_bytes_were_appended() {
        assert!(!due(0, 0, 100));
        assert!(!due(0, 99, 100));
        assert!(due(0, 100, 100));
        assert!(!due(100, 150, 100));
        assert!(due(100, 250, 100));
    }
}
