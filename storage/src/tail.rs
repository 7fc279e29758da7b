//! The newest log entries this process appended, decoded, for the reads that follow
//! every write: a leader's AppendEntries to each follower, and the state machine's
//! apply on every origin, each read the entries just appended. From here such a read
//! is a copy under a lock on the async worker; from sled it is a range scan, a decode
//! and a hop to the blocking pool (a thread woken) on the write's path.
//!
//! The cache only ever holds a contiguous run of indexes that sled also holds: an
//! append that does not follow the newest cached entry starts it afresh, a truncation
//! or a purge cuts it as it cuts the log, and a read it cannot answer whole (an older
//! range, a follower catching up) goes to sled as before. Bounded by entries and by
//! encoded bytes, the oldest evicted first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use raftcast_raft::typ::Entry;

/// Most entries kept.
pub const TAIL_ENTRIES: usize = 256;

/// Most encoded bytes kept (a larger single entry is not cached).
pub const TAIL_BYTES: usize = 1024 * 1024;

/// The cache; cheap to clone (clones share it).
#[derive(Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    /// Entries by consecutive index, with each one's encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Inner {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, n)) = self.entries.pop_front() {
            self.bytes -= n;
        }
    }
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation leaves the deque consistent before it can panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records entries sled now holds (in index order, with their encoded sizes).
    pub(crate) fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut tail = self.lock();
        for (entry, size) in entries {
            if tail.last().is_some_and(|last| last.checked_add(1) != Some(entry.log_id.index)) {
                tail.clear();
            }
            if size > TAIL_BYTES {
                // Not kept; what follows it starts a new run.
                tail.clear();
                continue;
            }
            tail.bytes += size;
            tail.entries.push_back((entry, size));
            while tail.entries.len() > TAIL_ENTRIES || tail.bytes > TAIL_BYTES {
                tail.pop_front();
            }
        }
    }

    /// The log lost every entry from `index` on (a follower's conflicting suffix).
    pub(crate) fn truncated(&self, index: u64) {
        let mut tail = self.lock();
        while tail.last().is_some_and(|last| last >= index) {
            if let Some((_, n)) = tail.entries.pop_back() {
                tail.bytes -= n;
            }
        }
    }

    /// The log lost every entry up to and including `index`.
    pub(crate) fn purged(&self, index: u64) {
        let mut tail = self.lock();
        while tail.first().is_some_and(|first| first <= index) {
            tail.pop_front();
        }
    }

    /// The entries `start..end` while their encoded sizes stay within `budget` (always
    /// the first), when the cache holds the whole range; `None` sends the read to sled.
    pub(crate) fn get(&self, start: u64, end: u64, budget: usize) -> Option<Vec<Entry>> {
        let tail = self.lock();
        let (first, last) = (tail.first()?, tail.last()?);
        if start < first || end == 0 || end - 1 > last || start >= end {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (entry, size) in tail.entries.iter().skip(skip).take_while(|(e, _)| e.log_id.index < end) {
            bytes = bytes.saturating_add(*size);
            if bytes > budget && !out.is_empty() {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64) -> (Entry, usize) {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        (Entry { log_id, payload: EntryPayload::Blank }, 100)
    }

    fn indexes(got: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        got.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let tail = Tail::default();
        tail.appended((5..10).map(entry));
        assert_eq!(indexes(tail.get(5, 10, usize::MAX)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(tail.get(7, 9, usize::MAX)), Some(vec![7, 8]));
        assert_eq!(tail.get(4, 6, usize::MAX), None, "starts before the cache");
        assert_eq!(tail.get(8, 11, usize::MAX), None, "ends after it");
        assert_eq!(tail.get(7, 7, usize::MAX), None, "empty range");
        // The byte budget stops the read, but the first entry always goes.
        assert_eq!(indexes(tail.get(5, 10, 250)), Some(vec![5, 6]));
        assert_eq!(indexes(tail.get(5, 10, 1)), Some(vec![5]));
    }

    #[test]
    fn follows_the_log_through_gaps_truncation_and_purge() {
        let tail = Tail::default();
        tail.appended((1..=4).map(entry));
        // A follower's conflicting suffix goes, and the new entries follow on.
        tail.truncated(3);
        assert_eq!(tail.get(3, 4, usize::MAX), None);
        tail.appended((3..=6).map(entry));
        assert_eq!(indexes(tail.get(1, 7, usize::MAX)), Some(vec![1, 2, 3, 4, 5, 6]));
        tail.purged(2);
        assert_eq!(tail.get(2, 4, usize::MAX), None);
        assert_eq!(indexes(tail.get(3, 5, usize::MAX)), Some(vec![3, 4]));
        // An append that does not follow (a snapshot installed) starts afresh.
        tail.appended((100..=101).map(entry));
        assert_eq!(tail.get(3, 5, usize::MAX), None);
        assert_eq!(indexes(tail.get(100, 102, usize::MAX)), Some(vec![100, 101]));
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let tail = Tail::default();
        tail.appended((0..TAIL_ENTRIES as u64 + 10).map(entry));
        assert_eq!(tail.get(9, 10, usize::MAX), None, "the oldest were evicted");
        assert!(tail.get(10, 11, usize::MAX).is_some());
        let big = |index| {
            let (e, _) = entry(index);
            (e, TAIL_BYTES / 2)
        };
        tail.appended((TAIL_ENTRIES as u64 + 10..TAIL_ENTRIES as u64 + 13).map(big));
        assert_eq!(tail.lock().entries.len(), 2, "two halves of the byte bound");
        // An entry over the bound is not kept, and breaks the run.
        tail.appended([(entry(TAIL_ENTRIES as u64 + 13).0, TAIL_BYTES + 1)]);
        assert_eq!(tail.lock().entries.len(), 0);
    }
}
