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

/// How long, in ms, freed pages stay in the allocator before they go back to the
/// kernel: every arena now and every arena made later. jemalloc's default is 10 s,
/// paced by a smoothed curve, and its background threads are what purge an idle arena:
/// 60 s after a flood of refused writes the origins held 54-56 MiB with the default
/// and 41-43 MiB with 1 s, the same flood (docs/origin-cluster.md, "Memory after a
/// burst"). Origins set it, and edges since session 28: a publishing edge's freed
/// frames stayed resident with the default (`edge::DIRTY_DECAY_MS`), and purging after
/// 1 s cost its CPU nothing measurable. Errors (another allocator) are ignored.
pub fn set_dirty_decay_ms(ms: isize) {
    use tikv_jemalloc_ctl::{Access, AsName};
    let _ = b"arenas.dirty_decay_ms\0".name().write(ms);
    let arenas: u32 = b"arenas.narenas\0".name().read().unwrap_or(0);
    for i in 0..arenas {
        // Arenas not made yet refuse; `arenas.dirty_decay_ms` covers them.
        let _ = format!("arena.{i}.dirty_decay_ms\0").as_bytes().name().write(ms);
    }
}

/// Makes the calling thread allocate from arena 0 from now on. Origins call it on the
/// main thread and on every runtime thread as it starts (workers and the blocking
/// pool), so their heap is one arena instead of jemalloc's four per CPU: after a burst
/// of large writes each arena keeps its own partly used pages and metadata, and one
/// arena keeps less. `raftcast-chaos abuse --attack write-flood-edge`, 30 s, origins
/// 60 s after: 34-38 MiB with the default arenas, 32-33 with one (narenas:1 from the
/// environment, the same effect for every thread; docs/origin-cluster.md). An origin's
/// allocations are not contended enough for one arena to matter (requests, log
/// entries, media relayed to a few edges); edges keep the default. Errors (another
/// allocator) are ignored.
pub fn use_first_arena() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let _ = b"thread.arena\0".name().write(0u32);
}

/// How often a thread going idle empties its allocation cache, at most.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Empties the calling thread's jemalloc cache (what it freed and kept for its own
/// next allocations), at most every [`FLUSH_EVERY`]; origins call it when a runtime
/// worker parks. A worker that served a burst and then went idle keeps its cache until
/// it allocates again: jemalloc's own cache GC runs on allocations, not on time, and the
/// background threads do not touch a thread's cache. After the 5-minute
/// `flood-catchup` chaos schedule the leader's threads held 2.6 MB there. Switching the
/// cache off and on is how jemalloc's control interface flushes it. Errors (another
/// allocator) are ignored.
pub fn flush_thread_cache() {
    use std::cell::Cell;
    use std::time::Instant;
    use tikv_jemalloc_ctl::{Access, AsName};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < FLUSH_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        let name = b"thread.tcache.enabled\0".name();
        if name.write(false).is_ok() {
            let _ = name.write(true);
        }
    }
}
