//! Entries larger than a sled chunk: stored in chunks, read back whole by every read
//! path, and a log of such entries appended and purged for a while does not leave
//! sled blob files behind (sled 0.34 leaks the file of a page that is a single blob;
//! see `log_store.rs`).

use std::path::Path;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
use raftcast_raft::{Command, Proposal, Request, RequestId, TypeConfig, Value};
use raftcast_storage::{StoreOptions, CHUNK_BYTES};
use tempfile::TempDir;

fn entry(term: u64, index: u64, value_bytes: usize) -> Entry<TypeConfig> {
    let req = Request {
        id: RequestId(index as u128),
        at_ms: 0,
        command: Command::SetSlots {
            object: "o".into(),
            slots: vec![(format!("s{}", index % 16), Value::String(format!("{index}:{}", "x".repeat(value_bytes))))],
            if_version: None,
            persistent: true,
        },
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal::single(req)),
    }
}

fn encoded_len(e: &Entry<TypeConfig>) -> u64 {
    raftcast_raft::rpc::encode(e).len() as u64
}

/// Bytes and files under `dir`, recursively.
fn usage(dir: &Path) -> (u64, usize) {
    let (mut bytes, mut files) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (b, f) = usage(&e.path());
            bytes += b;
            files += f;
        } else {
            bytes += m.len();
            files += 1;
        }
    }
    (bytes, files)
}

#[tokio::test]
async fn large_entries_read_back_whole_on_every_path() {
    let dir = TempDir::new().unwrap();
    let big = |i| entry(1, i, 5 * CHUNK_BYTES + 123);
    {
        let (mut log, _) = raftcast_storage::open(dir.path(), &StoreOptions::default()).unwrap();
        log.blocking_append((1..=6).map(big)).await.unwrap();
        assert_eq!(log.try_get_log_entries(2..5).await.unwrap(), (2..5).map(big).collect::<Vec<_>>());
        // A conflicting entry at 6 (another term) replaces every chunk of the old one.
        log.truncate(big(6).log_id).await.unwrap();
        log.blocking_append([entry(2, 6, 10)]).await.unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(entry(2, 6, 10).log_id));
        log.purge(big(2).log_id).await.unwrap();
        // The byte budget counts whole entries: two fit, the third's chunks do not.
        let budget = encoded_len(&big(5)) + encoded_len(&entry(2, 6, 10));
        assert_eq!(log.reader().keep_from(6, budget).unwrap(), 5);
        assert_eq!(log.reader().keep_from(6, budget - 1).unwrap(), 6);
        assert_eq!(log.reader().keep_from(6, u64::MAX).unwrap(), 3);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut log, _) = raftcast_storage::open(dir.path(), &StoreOptions::default()).expect("reopens and validates");
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(state.last_log_id, Some(entry(2, 6, 10).log_id));
    let expected: Vec<_> = (3..=5).map(big).chain([entry(2, 6, 10)]).collect();
    assert_eq!(log.try_get_log_entries(3..).await.unwrap(), expected);
    let mut reader = log.get_log_reader().await;
    assert_eq!(reader.limited_get_log_entries(3, 7).await.unwrap(), expected);
}

#[tokio::test]
async fn appending_and_purging_large_entries_leaves_no_disk_behind() {
    let dir = TempDir::new().unwrap();
    let (mut log, _) = raftcast_storage::open(dir.path(), &StoreOptions::default()).unwrap();
    // 600 entries of ~200 KiB (120 MB), appended 8 at a time, the log purged to its
    // last 16 entries after each append: what a leader does under a 64 KiB write flood.
    let mut index = 0;
    for _ in 0..75 {
        log.blocking_append((1..=8).map(|i| entry(1, index + i, 200 * 1024))).await.unwrap();
        index += 8;
        if index > 16 {
            log.purge(entry(1, index - 16, 0).log_id).await.unwrap();
        }
    }
    let (bytes, files) = usage(dir.path());
    eprintln!("after 120 MB appended and purged: {files} files, {} MB", bytes / 1_000_000);
    // 16 entries stay (3.3 MB); sled's segments and cache add some. Leaked blob files
    // would be most of the 120 MB.
    assert!(bytes < 40_000_000, "{} MB on disk for 3.3 MB of log ({files} files)", bytes / 1_000_000);
}
