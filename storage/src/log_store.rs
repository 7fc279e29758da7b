//! The Raft log and vote in sled.
//!
//! Trees: `log` holds each bincode entry in chunks of at most [`CHUNK_BYTES`], under
//! the big-endian index followed by the big-endian chunk number (a log written before
//! chunks holds whole entries under the bare index; both are read); `meta` holds the
//! vote, the committed log id and the last purged log id. Appends become durable
//! through one flusher task that group-commits every append queued while it syncs,
//! and reports them to openraft in order.
//!
//! Why chunks: sled 0.34 writes a page fragment larger than a quarter of its 512 KiB
//! segment as a file of its own (a "blob"), and a page that is a single blob, when
//! replaced (a leaf split or merged as the log is appended and purged), does not get
//! that file removed. With whole entries of up to 256 KiB every log leaf became such a
//! blob: under 64 KiB slot writes each origin's data directory grew by ~13 MB/s and
//! never shrank (4 GB after five minutes, with a log purged to 1 MiB). Chunks keep
//! every leaf (at most 17 keys) under the blob threshold, so sled's own segment
//! cleaner reclaims the space.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageError, StorageIOError};
use raftcast_raft::rpc::{decode, encode};
use raftcast_raft::typ::{Entry, LogId, Vote};
use raftcast_raft::{NodeId, TypeConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::sync::Syncer;
use crate::tail::Tail;

/// Appends waiting for the flusher. When full, `append` waits: the disk sets the pace.
pub const FLUSH_QUEUE: usize = 1024;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Most bytes of an entry under one key. sled splits a leaf past 16 keys, so a leaf
/// holds at most 17 × 4 KiB, under sled's blob threshold (a quarter of a 512 KiB
/// segment, less a header); see the module docs.
///
/// 4 KiB less the 8-byte reference count sled puts before every value it keeps in
/// memory: each chunk is then one 4,096-byte allocation, a size jemalloc serves from
/// slabs of exactly one page, so a chunk freed returns its page whole. At 4 KiB each was
/// 4,104 bytes, served from 5,120-byte regions four to a 20 KiB slab, and the chunks an
/// origin still held after a write flood pinned half-empty slabs (1.5 MB of chunks in
/// 3 MB of slabs in one statistics dump). Logs written with 4 KiB chunks read the same:
/// chunks are joined whatever their size.
pub const CHUNK_BYTES: usize = 4 * 1024 - 8;

/// Reads log entries; cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
    /// Most encoded bytes of entries one AppendEntries carries (at least one entry
    /// goes, however large): see [`RaftLogReader::limited_get_log_entries`] below.
    max_append_bytes: usize,
    /// The newest entries appended, for the reads that follow each write.
    tail: Tail,
}

/// The log store openraft writes through.
pub struct LogStore {
    reader: LogReader,
    /// Encoded bytes of every entry appended since this store was opened (see
    /// [`LogStore::appended_bytes`]).
    appended: Arc<AtomicU64>,
    meta: sled::Tree,
    syncer: Syncer,
    flushes: mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

/// Appends of at most this many encoded bytes are applied on the async worker.
const INLINE_APPEND_BYTES: u64 = 64 * 1024;

/// Runs `work` (sled calls, range scans) on the blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    tokio::task::spawn_blocking(work).await.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?
}

/// Removes every key of the log in `range` (whole entries: chunk keys sort under their
/// entry's index), in one batch.
fn remove_range<R: std::ops::RangeBounds<[u8; 8]>>(log: &sled::Tree, range: R) -> Result<(), StorageError<NodeId>> {
    let mut batch = sled::Batch::default();
    for item in log.range(range) {
        let (key, _) = item.map_err(read_logs_err)?;
        batch.remove(key);
    }
    log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
}

impl LogStore {
    /// Opens the trees and checks that what is stored decodes and has no gaps.
    pub(crate) fn open(db: &sled::Db, syncer: Syncer, max_append_bytes: usize) -> Result<Self, String> {
        let log = db.open_tree("log").map_err(|e| e.to_string())?;
        let meta = db.open_tree("meta").map_err(|e| e.to_string())?;
        for key in [VOTE, COMMITTED, LAST_PURGED] {
            if let Some(bytes) = meta.get(key).map_err(|e| e.to_string())? {
                let ok = match key {
                    VOTE => decode::<Vote>(&bytes).is_ok(),
                    _ => decode::<Option<LogId>>(&bytes).is_ok(),
                };
                if !ok {
                    return Err(format!("the stored {key} does not decode"));
                }
            }
        }
        let mut expected: Option<u64> = None;
        for item in Entries::new(log.iter()) {
            let (index, value) = item.map_err(|e| e.to_string())?;
            let entry: Entry = decode(&value).map_err(|e| format!("log entry {index} does not decode: {e}"))?;
            if entry.log_id.index != index {
                return Err(format!("log entry stored at {index} claims index {}", entry.log_id.index));
            }
            if let Some(expected) = expected {
                if index != expected {
                    return Err(format!("the log has a gap: expected index {expected}, found {index}"));
                }
            }
            expected = Some(index + 1);
        }
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE);
        tokio::spawn(flusher(syncer.clone(), rx));
        Ok(LogStore {
            reader: LogReader { log, max_append_bytes, tail: Tail::default() },
            appended: Arc::default(),
            meta,
            syncer,
            flushes: tx,
        })
    }

    /// A reader of this log (for the compaction task's purge point, [`LogReader::keep_from`]).
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// A counter of the encoded bytes appended to this log since it was opened, for
    /// taking snapshots (and so purging the log) by bytes as well as by entries.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<NodeId>> {
        match self.meta.get(key).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))? {
            Some(bytes) => decode(&bytes).map(Some).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
            None => Ok(None),
        }
    }
}

/// Group commit: take every queued append, sync once, complete them in order.
async fn flusher(syncer: Syncer, mut rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, FLUSH_QUEUE).await > 0 {
        let started = std::time::Instant::now();
        let result = syncer.sync().await;
        tracing::debug!(appends = batch.len(), took_us = started.elapsed().as_micros() as u64, "log sync");
        for callback in batch.drain(..) {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn key_of(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The key of chunk `chunk` of the entry at `index`.
fn chunk_key(index: u64, chunk: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// The index a key belongs to: a bare index (a whole entry) or an index and a chunk.
fn index_of(key: &[u8]) -> Option<u64> {
    match key.len() {
        8 | 12 => Some(u64::from_be_bytes(key[..8].try_into().ok()?)),
        _ => None,
    }
}

/// Stores encoded entries. Entries of one chunk each are single inserts: each is
/// atomic, and sled recovers a prefix of its writes, so a crash before the flush leaves
/// a prefix of the append, which Raft allows (nothing was acknowledged). An append with
/// a larger entry is one batch, so no entry is ever recovered in part. A sled batch
/// costs two more log-buffer writes, each with its own `sync_file_range`, before the
/// flush: on a leader that flush comes before replication (openraft 0.9 awaits it).
fn write_entries(log: &sled::Tree, encoded: Vec<(u64, Vec<u8>)>) -> sled::Result<()> {
    if encoded.iter().all(|(_, e)| e.len() <= CHUNK_BYTES) {
        for (index, e) in encoded {
            log.insert(chunk_key(index, 0), e)?;
        }
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for (index, e) in &encoded {
        insert_chunks(&mut batch, *index, e);
    }
    log.apply_batch(batch)
}

/// The inserts that store `encoded` (the entry at `index`) in chunks.
fn insert_chunks(batch: &mut sled::Batch, index: u64, encoded: &[u8]) {
    if encoded.is_empty() {
        batch.insert(&chunk_key(index, 0), &[][..]);
    }
    for (n, chunk) in encoded.chunks(CHUNK_BYTES).enumerate() {
        batch.insert(&chunk_key(index, n as u32), chunk);
    }
}

/// Whole entries `(index, encoded bytes)` from a scan of the `log` tree in key order:
/// a bare-index key is a whole entry; consecutive chunk keys of one index are joined.
/// A chunk out of sequence (a missing or repeated chunk number) is an error.
struct Entries<I: Iterator> {
    items: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> Entries<I> {
    fn new(items: I) -> Self {
        Entries { items: items.peekable() }
    }
}

impl<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> Iterator for Entries<I> {
    type Item = Result<(u64, Vec<u8>), std::io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let bad = |what: String| Some(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, what)));
        let (key, value) = match self.items.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(crate::sync::sled_io(e))),
        };
        let Some(index) = index_of(&key) else { return bad(format!("a log key of {} bytes", key.len())) };
        if key.len() == 8 {
            return Some(Ok((index, value.to_vec())));
        }
        if key[8..] != [0, 0, 0, 0] {
            return bad(format!("log entry {index} starts at a chunk other than 0"));
        }
        let mut bytes = value.to_vec();
        let mut next_chunk = 1u32;
        while let Some(Ok((key, _))) = self.items.peek() {
            if key.len() != 12 || index_of(key) != Some(index) {
                break;
            }
            let Some(Ok((key, value))) = self.items.next() else { break };
            if key[8..] != next_chunk.to_be_bytes() {
                return bad(format!("log entry {index} has chunk {:?} where {next_chunk} belongs", &key[8..]));
            }
            bytes.extend_from_slice(&value);
            next_chunk += 1;
        }
        Some(Ok((index, bytes)))
    }
}

impl LogReader {
    /// The first index to keep when at most `max_bytes` of encoded entries up to and
    /// including `last` stay in the log (at least `last` itself stays): everything
    /// before it may be purged. Reads keys and value lengths only.
    pub fn keep_from(&self, last: u64, max_bytes: u64) -> Result<u64, sled::Error> {
        let mut held = 0u64;
        let mut keep = last;
        for item in self.log.range(..key_of(last.saturating_add(1))).rev() {
            let (key, value) = item?;
            let Some(index) = index_of(&key) else { break };
            held += value.len() as u64;
            if held > max_bytes && index != last {
                // Part of `index` is over the budget: it goes, and everything before.
                return Ok(keep.max(index + 1));
            }
            keep = index;
        }
        Ok(keep)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end {
            if let Some(entries) = self.tail.get(start, end, usize::MAX) {
                return Ok(entries);
            }
        }
        let log = self.log.clone();
        // A range scan may touch the disk: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let iter = match end {
                Some(end) => log.range(key_of(start)..key_of(end)),
                None => log.range(key_of(start)..),
            };
            Entries::new(iter)
                .map(|item| {
                    let (_, value) = item.map_err(read_logs_err)?;
                    decode::<Entry>(&value).map_err(read_logs_err)
                })
                .collect()
        })
        .await
        .map_err(read_logs_err)?
    }

    /// What the leader sends a follower in one AppendEntries: the entries from `start`
    /// up to `end` (exclusive) while their encoded size stays within the byte budget,
    /// and always at least one. openraft 0.9 gives an AppendEntries only the heartbeat
    /// interval to be sent, appended and synced by the follower; an unbounded range
    /// (megabytes of 64 KiB slot values) never fits and the follower never catches up.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError<NodeId>> {
        if let Some(entries) = self.tail.get(start, end, self.max_append_bytes) {
            return Ok(entries);
        }
        let (log, budget) = (self.log.clone(), self.max_append_bytes);
        tokio::task::spawn_blocking(move || {
            let mut entries = Vec::new();
            let mut bytes = 0usize;
            for item in Entries::new(log.range(key_of(start)..key_of(end.max(start)))) {
                let (_, value) = item.map_err(read_logs_err)?;
                bytes = bytes.saturating_add(value.len());
                if bytes > budget && !entries.is_empty() {
                    break;
                }
                entries.push(decode::<Entry>(&value).map_err(read_logs_err)?);
            }
            Ok(entries)
        })
        .await
        .map_err(read_logs_err)?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId> = self.meta_get::<Option<LogId>>(LAST_PURGED)?.flatten();
        let log = &self.reader.log;
        let last_index = match log.last().map_err(read_logs_err)? {
            Some((key, _)) => index_of(&key),
            None => None,
        };
        let last = match last_index {
            Some(i) => match Entries::new(log.range(key_of(i)..key_of(i.saturating_add(1)))).next() {
                Some(item) => Some(decode::<Entry>(&item.map_err(read_logs_err)?.1).map_err(read_logs_err)?.log_id),
                None => last_purged,
            },
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<NodeId>> {
        let write_err = |e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        self.meta.insert(VOTE, encode(vote)).map_err(|e| write_err(crate::sync::sled_io(e)))?;
        // A vote must be on disk before it is acted on.
        self.syncer.sync().await.map_err(write_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<NodeId>> {
        self.meta_get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<NodeId>> {
        // Not synced: a lost committed index is re-learned from the leader.
        self.meta
            .insert(COMMITTED, encode(&committed))
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        Ok(self.meta_get::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.log_id.index, encode(e))).collect();
        let sizes: Vec<usize> = encoded.iter().map(|(_, e)| e.len()).collect();
        let bytes: u64 = sizes.iter().map(|&n| n as u64).sum();
        let apply = {
            let log = self.reader.log.clone();
            move || write_entries(&log, encoded).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
        };
        // sled copies a batch into its write buffer and may wait for one to drain: a
        // large append goes to the blocking pool (openraft awaits each append before the
        // next, so order holds). A small one is microseconds of memory work, and the
        // hop to the pool cost 4-15 % of a single client's write latency (bench so,
        // p50 1.61-1.68 -> 1.67-1.93 ms): applied here.
        if bytes <= INLINE_APPEND_BYTES {
            apply()?;
        } else {
            blocking(apply).await?;
        }
        self.appended.fetch_add(bytes, Ordering::Relaxed);
        self.reader.tail.appended(entries.into_iter().zip(sizes));
        // Durable when the flusher's next sync completes; it then calls back.
        self.flushes.send(callback).await.map_err(|e| {
            io_err(ErrorSubject::Logs, ErrorVerb::Write, std::io::Error::other(format!("flusher stopped: {e}")))
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.reader.tail.truncated(log_id.index);
        let log = self.reader.log.clone();
        blocking(move || remove_range(&log, key_of(log_id.index)..)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first, so a crash in between never shows a gap.
        self.meta
            .insert(LAST_PURGED, encode(&Some(log_id)))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        self.reader.tail.purged(log_id.index);
        let log = self.reader.log.clone();
        blocking(move || remove_range(&log, ..key_of(log_id.index.saturating_add(1)))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        sled::Config::new().temporary(true).open().unwrap().open_tree("log").unwrap()
    }

    fn entries(t: &sled::Tree) -> Result<Vec<(u64, Vec<u8>)>, std::io::Error> {
        Entries::new(t.iter()).collect()
    }

    #[test]
    fn whole_entries_from_chunks_and_from_a_log_written_before_chunks() {
        let t = tree();
        // Written before chunks: whole entries under the bare index.
        t.insert(key_of(1), &b"one"[..]).unwrap();
        t.insert(key_of(2), &b""[..]).unwrap();
        let mut batch = sled::Batch::default();
        let big: Vec<u8> = (0..CHUNK_BYTES * 2 + 5).map(|i| i as u8).collect();
        insert_chunks(&mut batch, 3, &big);
        insert_chunks(&mut batch, 4, b"");
        insert_chunks(&mut batch, 5, b"five");
        t.apply_batch(batch).unwrap();
        let got = entries(&t).unwrap();
        let want = vec![(1, b"one".to_vec()), (2, vec![]), (3, big), (4, vec![]), (5, b"five".to_vec())];
        assert_eq!(got, want);
        assert_eq!(t.len(), 2 + 3 + 1 + 1, "the big entry takes three chunks");
    }

    #[test]
    fn chunks_of_the_earlier_size_still_read() {
        let t = tree();
        let big: Vec<u8> = (0..4096 * 2 + 7).map(|i| (i % 251) as u8).collect();
        for (n, chunk) in big.chunks(4096).enumerate() {
            t.insert(chunk_key(9, n as u32), chunk).unwrap();
        }
        let mut batch = sled::Batch::default();
        insert_chunks(&mut batch, 10, &big);
        t.apply_batch(batch).unwrap();
        assert_eq!(entries(&t).unwrap(), vec![(9, big.clone()), (10, big)]);
    }

    #[test]
    fn a_missing_or_stray_chunk_is_an_error() {
        let t = tree();
        t.insert(chunk_key(7, 0), &b"a"[..]).unwrap();
        t.insert(chunk_key(7, 2), &b"c"[..]).unwrap();
        assert!(entries(&t).is_err(), "chunk 1 missing");
        let t = tree();
        t.insert(chunk_key(8, 1), &b"b"[..]).unwrap();
        assert!(entries(&t).is_err(), "no chunk 0");
        let t = tree();
        t.insert(&b"short"[..], &b"x"[..]).unwrap();
        assert!(entries(&t).is_err(), "not an index");
    }
}
