//! The store keeps what it acknowledged: across close and reopen, across SIGKILL, and
//! it refuses to start on a damaged store instead of recreating it.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, Vote};
use raftcast_raft::{Command, Proposal, Request, RequestId, TypeConfig, Value};
use raftcast_storage::{OpenError, StoreOptions};
use tempfile::TempDir;

fn entry(index: u64, slot: &str) -> Entry<TypeConfig> {
    let req = Request {
        id: RequestId(index as u128),
        at_ms: 0,
        command: Command::SetSlots {
            object: "o".into(),
            slots: vec![(slot.into(), Value::Number(index as f64))],
            if_version: None,
            persistent: true,
        },
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal::single(req)),
    }
}

fn slots(state: &raftcast_storage::StateHandle) -> BTreeSet<String> {
    state.read(|sm| sm.objects.get("o").map(|o| o.slots.keys().cloned().collect()).unwrap_or_default())
}

#[tokio::test]
async fn close_and_reopen_keeps_vote_log_and_snapshot_state() {
    let dir = TempDir::new().unwrap();
    let vote = Vote::new_committed(3, 2);
    {
        let (mut log, mut sm) = raftcast_storage::open(dir.path(), &StoreOptions::default()).unwrap();
        log.save_vote(&vote).await.unwrap();
        log.blocking_append((1..=5).map(|i| entry(i, &format!("s{i}")))).await.unwrap();
        log.save_committed(Some(entry(5, "").log_id)).await.unwrap();
        sm.apply((1..=3).map(|i| entry(i, &format!("s{i}")))).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply((4..=5).map(|i| entry(i, &format!("s{i}")))).await.unwrap();
    }
    // Let the flusher task notice its channel closed and drop its database handle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut log, mut sm) = raftcast_storage::open(dir.path(), &StoreOptions::default()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    let entries = log.try_get_log_entries(1..=5).await.unwrap();
    assert_eq!(entries, (1..=5).map(|i| entry(i, &format!("s{i}"))).collect::<Vec<_>>());
    assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(5));
    // The state machine resumes from its snapshot; openraft re-applies 4..=5 from the log.
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(3));
    let expected: BTreeSet<String> = ["s1", "s2", "s3"].map(String::from).into();
    assert_eq!(slots(&sm.handle()), expected);
    assert!(sm.get_current_snapshot().await.unwrap().is_some());
}

#[tokio::test]
async fn a_restarted_node_has_every_write_it_acknowledged() {
    let dir = TempDir::new().unwrap();
    {
        let (raft, _) = common::single_node(dir.path()).await;
        common::lead(&raft).await;
        for i in 0..50 {
            common::write_slot(&raft, "o", &format!("w{i}"), i as f64).await;
        }
        raft.shutdown().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (raft, state) = common::single_node(dir.path()).await;
    common::lead(&raft).await;
    let last = raft.metrics().borrow().last_log_index.unwrap();
    raft.wait(Some(Duration::from_secs(10))).applied_index_at_least(Some(last), "replayed").await.unwrap();
    assert_eq!(slots(&state).len(), 50);
    raft.shutdown().await.unwrap();
}

/// Child half of the crash test: acknowledge writes on stdout until killed.
#[tokio::test]
#[ignore = "child process of acknowledged_writes_survive_sigkill"]
async fn crash_child() {
    let dir = std::env::var("RAFTCAST_CRASH_CHILD_DIR").expect("started by acknowledged_writes_survive_sigkill");
    let (raft, _) = common::single_node(Path::new(&dir)).await;
    common::lead(&raft).await;
    let mut out = std::io::stdout();
    for i in 0.. {
        common::write_slot(&raft, "o", &format!("k{i}"), i as f64).await;
        writeln!(out, "ack k{i}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = TempDir::new().unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("RAFTCAST_CRASH_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = BTreeSet::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 300 {
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(slot) = line.strip_prefix("ack ") {
            acked.insert(slot.to_owned());
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();
    // Count what arrived between our last read and the kill as acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(slot) = line.strip_prefix("ack ") {
            acked.insert(slot.to_owned());
        }
    }

    let (raft, state) = common::single_node(dir.path()).await;
    common::lead(&raft).await;
    let last = raft.metrics().borrow().last_log_index.unwrap();
    raft.wait(Some(Duration::from_secs(10))).applied_index_at_least(Some(last), "replayed").await.unwrap();
    let present = slots(&state);
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost: {lost:?}", lost.len());
    raft.shutdown().await.unwrap();
}

async fn store_with_data(dir: &Path) {
    let (mut log, mut sm) = raftcast_storage::open(dir, &StoreOptions::default()).unwrap();
    log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    log.blocking_append((1..=20).map(|i| entry(i, "s"))).await.unwrap();
    sm.apply((1..=20).map(|i| entry(i, "s"))).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    drop((log, sm));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn assert_refused(dir: &Path, what: &str) {
    match raftcast_storage::open(dir, &StoreOptions::default()) {
        Err(e @ OpenError::Corrupted { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("refusing to start"), "{what}: unclear error: {msg}");
        }
        Err(other) => panic!("{what}: expected Corrupted, got {other}"),
        Ok(_) => panic!("{what}: a damaged store was opened"),
    }
}

#[tokio::test]
async fn a_garbled_database_file_is_refused() {
    let dir = TempDir::new().unwrap();
    store_with_data(dir.path()).await;
    let db = dir.path().join("raft-log/db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0xA5u8; len]).unwrap();
    assert_refused(dir.path(), "garbled db");
    // The refusal sticks: the first attempt did not "repair" the store into an empty one.
    assert_refused(dir.path(), "garbled db, second attempt");
}

#[tokio::test]
async fn a_missing_database_file_is_refused() {
    let dir = TempDir::new().unwrap();
    store_with_data(dir.path()).await;
    std::fs::remove_file(dir.path().join("raft-log/db")).unwrap();
    assert_refused(dir.path(), "missing db");
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused() {
    let dir = TempDir::new().unwrap();
    store_with_data(dir.path()).await;
    let snap = dir.path().join("snapshots/current.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&snap, bytes).unwrap();
    assert_refused(dir.path(), "flipped snapshot byte");
}

/// An entry carrying one slot of `bytes` characters.
fn big_entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
    let mut e = entry(index, "big");
    if let EntryPayload::Normal(p) = &mut e.payload {
        if let Command::SetSlots { slots, .. } = &mut p.requests[0].command {
            slots[0].1 = Value::String("x".repeat(bytes));
        }
    }
    e
}

#[tokio::test]
async fn one_append_entries_carries_at_most_the_byte_budget_and_at_least_one_entry() {
    let dir = TempDir::new().unwrap();
    let options = StoreOptions { max_append_bytes: 200 * 1024, ..StoreOptions::default() };
    let (mut log, _sm) = raftcast_storage::open(dir.path(), &options).unwrap();
    // Ten entries of about 64 KiB, one of 1 MiB, then small ones.
    log.blocking_append((1..=10).map(|i| big_entry(i, 64 * 1024))).await.unwrap();
    log.blocking_append([big_entry(11, 1024 * 1024)]).await.unwrap();
    log.blocking_append((12..=20).map(|i| entry(i, "s"))).await.unwrap();
    let mut reader = log.get_log_reader().await;
    let first = reader.limited_get_log_entries(1, 21).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "three 64 KiB entries fit 200 KiB"
    );
    // An entry larger than the whole budget still goes, alone.
    let alone = reader.limited_get_log_entries(11, 21).await.unwrap();
    assert_eq!(alone.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![11]);
    // Small entries all fit; the range end is exclusive.
    let small = reader.limited_get_log_entries(12, 20).await.unwrap();
    assert_eq!(small.len(), 8);
    assert_eq!(small, (12..20).map(|i| entry(i, "s")).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_data_directory_is_private_to_the_origin_user() {
    use std::os::unix::fs::PermissionsExt;
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("origin-1");
    std::fs::create_dir(&dir).unwrap();
    // Made readable by everyone beforehand (a umask of 022, or an operator's mkdir).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = raftcast_storage::open(&dir, &StoreOptions::default()).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the log holds every value and key: {mode:o}");
    drop(store);
    // sled made its files under this test's umask (022): the next open tightens them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store_with_data(&dir).await;
    let walk = |dir: &std::path::Path| -> Vec<(std::path::PathBuf, u32)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                }
                out.push((e.path(), mode));
            }
        }
        out
    };
    let before = walk(&dir);
    assert!(before.iter().any(|(_, mode)| mode & 0o044 != 0), "sled's files start world-readable here");
    let store = raftcast_storage::open(&dir, &StoreOptions::default()).unwrap();
    // What existed before the open (sled may add files of its own, under the umask,
    // which is 077 in an origin).
    let after: std::collections::BTreeMap<_, _> = walk(&dir).into_iter().collect();
    // (sled may also replace its own snapshot files: those left are checked.)
    let kept: Vec<_> = before.into_iter().filter(|(path, _)| after.contains_key(path)).collect();
    assert!(kept.iter().any(|(path, _)| path.ends_with("db")), "{kept:?}");
    for (path, _) in kept {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(after[&path], want, "{}", path.display());
    }
    drop(store);
}
