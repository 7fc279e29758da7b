//! Making sled's writes durable: flush, then sync the files sled wrote.
//!
//! sled 0.34's `flush` ends in `sync_file_range`, which neither persists the disk cache
//! nor file metadata, and it never syncs blob files (values too large for a page).
//! [`Syncer::sync_blocking`] therefore flushes and then:
//!
//! - `fdatasync`s the database file through a handle kept open. sled only writes into
//!   that one file (and grows it); `fdatasync` persists the data and the metadata needed
//!   to read it back, its size included. Timestamps are not needed.
//! - `fsync`s each blob file it has not synced before (blobs are written once), and the
//!   blob directory when its listing changed.
//! - `fsync`s the store's directory when its listing changed (sled writes `conf` and its
//!   own snapshot files there).
//!
//! Each `fsync` costs a device cache flush even when nothing is dirty, so a sync with
//! nothing new but log pages is one flush instead of four. It blocks: call it through
//! [`Syncer::sync`], which runs it on tokio's blocking pool.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Flushes and syncs one sled database.
#[derive(Clone)]
pub struct Syncer {
    db: sled::Db,
    dir: PathBuf,
    synced: Arc<Mutex<Synced>>,
}

/// What earlier syncs already made durable.
#[derive(Default)]
struct Synced {
    db_file: Option<File>,
    dir_listing: Option<BTreeSet<OsString>>,
    blob_listing: Option<BTreeSet<OsString>>,
}

impl Syncer {
    pub fn new(db: sled::Db, dir: PathBuf) -> Self {
        Syncer { db, dir, synced: Arc::default() }
    }

    /// Flushes and syncs, blocking the calling thread.
    pub fn sync_blocking(&self) -> io::Result<()> {
        self.db.flush().map_err(sled_io)?;
        // One sync at a time: a second caller waits and then finds little left to do.
        let mut synced = self.synced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let synced = &mut *synced;
        let db_file = match &mut synced.db_file {
            Some(file) => file,
            none => none.insert(File::open(self.dir.join("db"))?),
        };
        db_file.sync_data()?;
        let blobs = self.dir.join("blobs");
        if blobs.is_dir() {
            let listing = listing(&blobs)?;
            if synced.blob_listing.as_ref() != Some(&listing) {
                let known = synced.blob_listing.take().unwrap_or_default();
                sync_new_blobs(&blobs, &listing, &known)?;
                fsync(&blobs)?;
                synced.blob_listing = Some(listing);
            }
        }
        let listing = listing(&self.dir)?;
        if synced.dir_listing.as_ref() != Some(&listing) {
            fsync(&self.dir)?;
            synced.dir_listing = Some(listing);
        }
        Ok(())
    }

    /// Flushes and syncs on the blocking pool.
    pub async fn sync(&self) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync_blocking())
            .await
            .unwrap_or_else(|join| Err(io::Error::other(format!("sync task failed: {join}"))))
    }
}

/// The names in a directory.
fn listing(dir: &Path) -> io::Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)?.map(|entry| entry.map(|e| e.file_name())).collect()
}

/// fsyncs each blob in `listing` that is not in `known`. sled removes blobs on its own
/// threads (a value overwritten or deleted, a log entry purged), so a blob listed a
/// moment ago may be gone by the time it is opened: it was removed, there is nothing
/// left to make durable, and that is not an error (it once stopped a leader's Raft
/// core with `LogFlush error: No such file or directory`).
fn sync_new_blobs(dir: &Path, listing: &BTreeSet<OsString>, known: &BTreeSet<OsString>) -> io::Result<()> {
    for name in listing.difference(known) {
        match fsync(&dir.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::trace!(blob = ?name, "blob removed before its sync");
            }
            other => other?,
        }
    }
    Ok(())
}

/// fsyncs a file or directory.
pub fn fsync(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// sled's error as an I/O error.
pub fn sled_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(listing: &Option<BTreeSet<OsString>>, name: &str) -> bool {
        listing.as_ref().is_some_and(|l| l.contains(&OsString::from(name)))
    }

    #[test]
    fn a_sync_takes_in_files_that_appeared_since_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let db = sled::Config::new().path(&path).open().unwrap();
        let syncer = Syncer::new(db.clone(), path.clone());
        db.insert("k", "v").unwrap();
        syncer.sync_blocking().unwrap();
        {
            let synced = syncer.synced.lock().unwrap();
            assert!(synced.db_file.is_some(), "the database file handle is kept");
            assert!(listed(&synced.dir_listing, "db") && !listed(&synced.dir_listing, "snap.new"));
        }
        // A file sled might add (its own snapshot) and a new blob: the next sync
        // must see both, or their directory entries could be lost in a crash.
        std::fs::write(path.join("snap.new"), b"x").unwrap();
        std::fs::create_dir_all(path.join("blobs")).unwrap();
        std::fs::write(path.join("blobs").join("42"), b"blob").unwrap();
        db.insert("k2", "v2").unwrap();
        syncer.sync_blocking().unwrap();
        let synced = syncer.synced.lock().unwrap();
        assert!(listed(&synced.dir_listing, "snap.new"));
        assert!(listed(&synced.blob_listing, "42"));
    }

    #[test]
    fn a_blob_removed_between_listing_and_sync_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1"), b"kept").unwrap();
        std::fs::write(dir.path().join("2"), b"removed").unwrap();
        let listing = listing(dir.path()).unwrap();
        // sled removes blob 2 after the listing, before its fsync.
        std::fs::remove_file(dir.path().join("2")).unwrap();
        sync_new_blobs(dir.path(), &listing, &BTreeSet::new()).expect("a vanished blob is nothing to sync");
        // Any other failure still is an error: a "blob" that cannot be opened for
        // another reason (here a name under a file, not a directory).
        let mut bad = BTreeSet::new();
        bad.insert(OsString::from("1/x"));
        assert!(sync_new_blobs(dir.path(), &bad, &BTreeSet::new()).is_err());
    }
}
