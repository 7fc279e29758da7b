//! What the process's allocator holds, for `/metrics`: the bytes the program has
//! allocated and the bytes of memory the allocator keeps resident for them. Their
//! difference is what the allocator has not yet given back after a burst.
//!
//! The `raftcast` binary runs on jemalloc (see `main.rs`); a process on another
//! allocator (the library's tests) reads jemalloc's own, unused statistics.

/// The allocator's statistics, refreshed when read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes allocated by the program and not yet freed.
    pub allocated: u64,
    /// Bytes in pages the allocator keeps resident (allocated, its metadata, and freed
    /// pages not yet purged).
    pub resident: u64,
}

/// Reads the statistics now; `None` when the allocator does not tell.
pub fn stats() -> Option<HeapStats> {
    // jemalloc caches its statistics; advancing the epoch refreshes them.
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    let allocated = tikv_jemalloc_ctl::stats::allocated::read().ok()? as u64;
    let resident = tikv_jemalloc_ctl::stats::resident::read().ok()? as u64;
    Some(HeapStats { allocated, resident })
}
