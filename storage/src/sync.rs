//! Making sled's writes durable: flush, then `fsync` the files sled wrote.
//!
//! sled 0.34's `flush` ends in `sync_file_range`, which neither persists the disk cache
//! nor file metadata, and it never syncs blob files (values too large for a page).
//! [`Syncer::sync_blocking`] therefore flushes and then `fsync`s the database file, the
//! blob files and the directories. It blocks: call it through [`Syncer::sync`], which
//! runs it on tokio's blocking pool.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Flushes and fsyncs one sled database.
#[derive(Clone)]
pub struct Syncer {
    db: sled::Db,
    dir: PathBuf,
}

impl Syncer {
    pub fn new(db: sled::Db, dir: PathBuf) -> Self {
        Syncer { db, dir }
    }

    /// Flushes and fsyncs, blocking the calling thread.
    pub fn sync_blocking(&self) -> io::Result<()> {
        self.db.flush().map_err(sled_io)?;
        fsync(&self.dir.join("db"))?;
        let blobs = self.dir.join("blobs");
        if blobs.is_dir() {
            for entry in std::fs::read_dir(&blobs)? {
                fsync(&entry?.path())?;
            }
            fsync(&blobs)?;
        }
        fsync(&self.dir)
    }

    /// Flushes and fsyncs on the blocking pool.
    pub async fn sync(&self) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync_blocking())
            .await
            .unwrap_or_else(|join| Err(io::Error::other(format!("sync task failed: {join}"))))
    }
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
