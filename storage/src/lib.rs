//! Durable storage of an origin's Raft state in sled: the log and vote
//! ([`LogStore`]) and the state machine with its snapshots ([`StateMachineStore`]).
//!
//! Durability rule: nothing is reported to openraft as written before it is on disk.
//! sled's `flush` alone only calls `sync_file_range`, so every durable point also
//! `fsync`s sled's files, always on the blocking pool ([`sync`]). Appends are
//! group-committed by one flusher task; votes and snapshots sync before returning.
//! The newest entries are also kept decoded (`tail`) for the reads every write makes.
//!
//! Storage never recreates a store it cannot read: a damaged store is
//! [`OpenError::Corrupted`] and the node refuses to start.
//!
//! This crate knows nothing of HTTP, media or the admin API.

// openraft's storage traits return its `StorageError` (224 bytes) by value; our helpers
// return the same type so `?` works without conversions.
#![allow(clippy::result_large_err)]

pub mod feed;
mod log_store;
mod snapshot_file;
mod state_machine;
pub mod sync;
mod tail;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use feed::{NoticeReceiver, RecvError};
pub use log_store::{LogReader, LogStore, CHUNK_BYTES};
pub use state_machine::{Notice, SnapshotBuilder, StateHandle, StateMachineStore};

/// How often one thread hands sled's deferred frees on ([`release_deferred`]).
pub const RELEASE_EVERY: Duration = Duration::from_millis(100);

/// Hands the calling thread's deferred frees to sled's epoch collector and runs what is
/// due there; call it on a thread that is going idle (origins call it when a runtime
/// worker parks), at most every [`RELEASE_EVERY`] per thread.
///
/// sled frees what it replaces (old versions of tree nodes, and with them the log
/// chunks only those still reference, after a purge) through crossbeam-epoch's deferred
/// destruction. Each thread keeps what it deferred in a bag of its own, handed to the
/// collector only once the bag is full or when the thread pins again with room to
/// spare; a runtime worker that appended and purged log entries during a burst and has
/// not touched sled since keeps its bag, chunks and all, until the next burst. 60 s
/// after `raftcast-chaos abuse --attack write-flood-edge` an origin still held ~790 log
/// chunks (3.2 MB) for a log purged to 1 MiB (~260 chunks).
pub fn release_deferred() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < RELEASE_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        crossbeam_epoch::pin().flush();
    }
}

/// Marker stored in every store; a store without it is not ours (or is damaged).
const FORMAT_MARKER: &[u8] = b"raftcast-storage/1";

/// Where the pieces of a node's storage live inside its data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    /// sled database of the log, vote and metadata.
    pub sled: PathBuf,
    /// The current snapshot, one file.
    pub snapshots: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Layout { sled: data_dir.join("raft-log"), snapshots: data_dir.join("snapshots") }
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store exists but cannot be read consistently. It is left untouched.
    #[error(
        "the raft store at {path} is damaged ({reason}); refusing to start. Keep the directory for \
         inspection, then remove this node from the cluster and re-add it with an empty data dir"
    )]
    Corrupted { path: PathBuf, reason: String },
    /// The store was written by an incompatible version of raftcast.
    #[error("the raft store at {path} has format {found:?}, this build reads {FORMAT_MARKER:?}", FORMAT_MARKER = String::from_utf8_lossy(FORMAT_MARKER))]
    Incompatible { path: PathBuf, found: String },
    /// The file system refused (permissions, disk full, ...).
    #[error("cannot open the raft store at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes (sled's default of 1 GiB is far more than needed).
    pub cache_bytes: u64,
    /// Most encoded bytes of log entries the leader puts into one AppendEntries (at
    /// least one entry goes, however large).
    pub max_append_bytes: usize,
}

/// Default of [`StoreOptions::max_append_bytes`].
pub const DEFAULT_MAX_APPEND_BYTES: usize = 512 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 64 * 1024 * 1024, max_append_bytes: DEFAULT_MAX_APPEND_BYTES }
    }
}

/// Makes `dir` 0700 and everything under it 0700 (directories) or 0600 (files).
fn owner_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            owner_only(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Opens (or on first use creates) the store in `data_dir`. Must run inside a tokio
/// runtime: it starts the log's flusher task.
pub fn open(data_dir: &Path, options: &StoreOptions) -> Result<(LogStore, StateMachineStore), OpenError> {
    let layout = Layout::new(data_dir);
    let fresh = !layout.sled.exists();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| OpenError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    // The log holds every shared-object value and publish key: only the origin's own
    // user may enter the directory, and what is already inside (from a release that
    // followed the umask) becomes owner-only too; the origin's umask (077) covers what
    // sled and the snapshots create from now on.
    owner_only(data_dir).map_err(io(data_dir))?;
    if !fresh && !layout.sled.join("db").exists() {
        return Err(OpenError::Corrupted {
            path: layout.sled.clone(),
            reason: "the directory exists but holds no sled database file".into(),
        });
    }
    let db =
        sled::Config::new().path(&layout.sled).cache_capacity(options.cache_bytes).open().map_err(|e| match e {
            sled::Error::Io(source) if !fresh => OpenError::Io { path: layout.sled.clone(), source },
            sled::Error::Io(source) => OpenError::Io { path: layout.sled.clone(), source },
            other => OpenError::Corrupted { path: layout.sled.clone(), reason: other.to_string() },
        })?;
    let corrupted = |reason: String| OpenError::Corrupted { path: layout.sled.clone(), reason };
    let meta = db.open_tree("meta").map_err(|e| corrupted(e.to_string()))?;
    match meta.get("format").map_err(|e| corrupted(e.to_string()))? {
        Some(found) if found.as_ref() == FORMAT_MARKER => {}
        Some(found) => {
            return Err(OpenError::Incompatible {
                path: layout.sled.clone(),
                found: String::from_utf8_lossy(&found).into_owned(),
            })
        }
        None if fresh => {
            meta.insert("format", FORMAT_MARKER).map_err(|e| corrupted(e.to_string()))?;
            sync::Syncer::new(db.clone(), layout.sled.clone()).sync_blocking().map_err(io(&layout.sled))?;
        }
        None => return Err(corrupted("the format marker is missing".into())),
    }
    let syncer = sync::Syncer::new(db.clone(), layout.sled.clone());
    let log = LogStore::open(&db, syncer.clone(), options.max_append_bytes).map_err(corrupted)?;
    let sm = StateMachineStore::open(&layout.snapshots)
        .map_err(|reason| OpenError::Corrupted { path: layout.snapshots.clone(), reason })?;
    Ok((log, sm))
}
