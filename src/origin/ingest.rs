//! What one stream's publisher delivered to its owner origin: bytes and frames since
//! the stream's hub was created, and the bitrate over the last few seconds.
//!
//! Lock-free, because it is updated for every media frame on the link's read loop: a
//! frame costs three relaxed atomic adds and a clock read. Readers (the admin API)
//! compute the rate. The clock is a parameter, so the arithmetic is tested without
//! sleeping; this module knows no sockets and no streams.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Seconds the bitrate is averaged over: the current (partial) second and the ones
/// before it.
pub const WINDOW_SECS: u64 = 5;

/// Ring of per-second byte counts; longer than the window, so a slot is not reused
/// while a reader may still count it.
const SLOTS: usize = 8;

/// Ingest counters of one stream.
#[derive(Debug)]
pub struct IngestStats {
    /// Second 0 of the ring.
    origin: Instant,
    bytes: AtomicU64,
    frames: AtomicU64,
    /// Slot `s % SLOTS` holds the bytes of second `s` (counted from `origin`), when
    /// `slot_second` of that slot says `s`.
    slot_bytes: [AtomicU64; SLOTS],
    slot_second: [AtomicU64; SLOTS],
}

impl IngestStats {
    pub fn new(origin: Instant) -> Self {
        IngestStats {
            origin,
            bytes: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            slot_bytes: Default::default(),
            // No slot holds second 0 until something is recorded in it.
            slot_second: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        }
    }

    /// Counts one frame of `bytes` payload bytes received at `now`.
    ///
    /// A stream has one writer at a time (the read loop of its publisher's link). When
    /// a fenced publisher's last frames race a new one, a bucket can be miscounted by
    /// a frame; the totals stay exact.
    pub fn record(&self, bytes: usize, now: Instant) {
        let bytes = bytes as u64;
        self.bytes.fetch_add(bytes, Relaxed);
        self.frames.fetch_add(1, Relaxed);
        let second = now.saturating_duration_since(self.origin).as_secs();
        let slot = (second % SLOTS as u64) as usize;
        if self.slot_second[slot].load(Relaxed) != second {
            // The first frame of a new second in this slot: restart the slot.
            self.slot_bytes[slot].store(0, Relaxed);
            self.slot_second[slot].store(second, Relaxed);
        }
        self.slot_bytes[slot].fetch_add(bytes, Relaxed);
    }

    /// Payload bytes and frames received so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes.load(Relaxed), self.frames.load(Relaxed))
    }

    /// Average bitrate in kbit/s over the last [`WINDOW_SECS`] seconds (fewer for a
    /// young stream, but never less than one second, so one large keyframe right after
    /// the start does not read as a huge rate).
    pub fn bitrate_kbps(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.origin);
        let second = elapsed.as_secs();
        let first = second.saturating_sub(WINDOW_SECS - 1);
        let bytes: u64 = (first..=second)
            .filter_map(|s| {
                let slot = (s % SLOTS as u64) as usize;
                (self.slot_second[slot].load(Relaxed) == s).then(|| self.slot_bytes[slot].load(Relaxed))
            })
            .sum();
        let span = (elapsed.as_secs_f64() - first as f64).max(1.0);
        bytes as f64 * 8.0 / 1000.0 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_steady_stream_reads_its_bitrate() {
        let t0 = Instant::now();
        let stats = IngestStats::new(t0);
        // 250 kB/s = 2000 kbit/s, in 25 frames of 10 kB per second, for 12 seconds.
        for i in 0..300u64 {
            stats.record(10_000, at(t0, i * 40));
        }
        assert_eq!(stats.totals(), (3_000_000, 300));
        let kbps = stats.bitrate_kbps(at(t0, 12_000));
        assert!((kbps - 2000.0).abs() < 2000.0 * 0.25, "{kbps}");
        let kbps = stats.bitrate_kbps(at(t0, 11_990));
        assert!((kbps - 2000.0).abs() < 2000.0 * 0.1, "{kbps}");
    }

    #[test]
    fn the_rate_falls_to_zero_once_the_publisher_stops() {
        let t0 = Instant::now();
        let stats = IngestStats::new(t0);
        for i in 0..50u64 {
            stats.record(1_000, at(t0, i * 100));
        }
        assert!(stats.bitrate_kbps(at(t0, 5_000)) > 0.0);
        // Far beyond the window, and also after the ring has wrapped around.
        assert_eq!(stats.bitrate_kbps(at(t0, 5_000 + WINDOW_SECS * 1000 + 1000)), 0.0);
        assert_eq!(stats.bitrate_kbps(at(t0, 5_000 + 8_000)), 0.0);
        assert_eq!(stats.totals(), (50_000, 50), "totals stay");
    }

    #[test]
    fn a_young_stream_is_averaged_over_at_least_one_second() {
        let t0 = Instant::now();
        let stats = IngestStats::new(t0);
        stats.record(125_000, at(t0, 10)); // one 1 Mbit keyframe
        assert_eq!(stats.bitrate_kbps(at(t0, 20)), 1000.0);
        assert_eq!(stats.bitrate_kbps(at(t0, 2_000)), 500.0);
    }

    #[test]
    fn slots_of_old_seconds_are_not_counted_after_a_gap() {
        let t0 = Instant::now();
        let stats = IngestStats::new(t0);
        stats.record(1_000, at(t0, 500)); // second 0
                                          // Second 8 uses the same slot as second 0: that slot restarts.
        stats.record(2_000, at(t0, 8_500));
        let kbps = stats.bitrate_kbps(at(t0, 8_600));
        // Window: seconds 4..=8 (4.6 s), holding only the 2,000 bytes of second 8.
        assert!((kbps - 2_000.0 * 8.0 / 1000.0 / 4.6).abs() < 1e-9, "{kbps}");
    }
}
