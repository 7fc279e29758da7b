//! The state machine store: the replicated [`StateMachine`] in memory, its snapshots
//! on disk, and a feed of committed changes.
//!
//! The state machine itself is not written per entry: the durable log is the source of
//! truth. On restart the store loads the latest snapshot and openraft re-applies the
//! log from there up to the persisted committed index. Snapshots are one file, written
//! to a temporary name, fsynced and renamed, and carry a SHA-256 of their data.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use raftcast_raft::rpc::{decode, encode, DecodeError};
use raftcast_raft::state::{Event, StateMachineV1, StateMachineV2, StateMachineV3};
use raftcast_raft::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use raftcast_raft::{NodeId, Responses, StateMachine, TypeConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::feed::{Feed, NoticeReceiver};

const SNAPSHOT_FILE: &str = "current.snap";

/// What watchers of the state machine hear, in commit order.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The entry at `index` applied and produced these changes.
    Applied { index: u64, events: Arc<Vec<Event>> },
    /// The whole state was replaced by a snapshot up to `index`: re-read everything.
    Replaced { index: u64 },
}

/// The state and what openraft needs to know about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Image {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sm: StateMachine,
}

/// [`Image`] as snapshots held it before the state machine had pin rules.
#[derive(Deserialize)]
struct ImageV1 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sm: StateMachineV1,
}

/// [`Image`] as snapshots held it before token keys and client quotas.
#[derive(Deserialize)]
struct ImageV2 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sm: StateMachineV2,
}

/// [`Image`] as snapshots held it before app token rules.
#[derive(Deserialize)]
struct ImageV3 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sm: StateMachineV3,
}

/// Decodes snapshot data in the current layout or, failing that, the layouts before
/// app token rules, before token keys and before pin rules (snapshots taken by an older build, on disk or sent
/// by an older leader). No two decode the same bytes: each newer layout is the older
/// one plus trailing fields.
fn decode_image(data: &[u8]) -> Result<Image, DecodeError> {
    let current = match decode::<Image>(data) {
        Ok(image) => return Ok(image),
        Err(e) => e,
    };
    if let Ok(old) = decode::<ImageV3>(data) {
        return Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() });
    }
    if let Ok(old) = decode::<ImageV2>(data) {
        return Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() });
    }
    match decode::<ImageV1>(data) {
        Ok(old) => Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() }),
        Err(_) => Err(current),
    }
}

/// A snapshot as stored on disk.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    sha256: Vec<u8>,
    data: Vec<u8>,
}

/// Observes the duration of each applied batch (for metrics).
pub type ApplyObserver = Arc<dyn Fn(Duration, usize) + Send + Sync>;

struct Shared {
    image: RwLock<Image>,
    notices: Feed,
    observer: RwLock<Option<ApplyObserver>>,
}

/// Read access to the applied state and its change feed; cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    shared: Arc<Shared>,
}

impl StateHandle {
    /// Runs `f` on the applied state. Never hold on to work here: apply waits.
    pub fn read<T>(&self, f: impl FnOnce(&StateMachine) -> T) -> T {
        let image = self.shared.image.read().unwrap_or_else(|p| p.into_inner());
        f(&image.sm)
    }

    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        let image = self.shared.image.read().unwrap_or_else(|p| p.into_inner());
        image.last_applied.map_or(0, |l| l.index)
    }

    /// Subscribes to committed changes from now on.
    pub fn subscribe(&self) -> NoticeReceiver {
        self.shared.notices.subscribe()
    }

    /// Installs a callback that observes each apply batch's duration and size.
    pub fn set_apply_observer(&self, observer: ApplyObserver) {
        *self.shared.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }
}

/// openraft's state machine over [`StateMachine`].
pub struct StateMachineStore {
    shared: Arc<Shared>,
    dir: PathBuf,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(meta: Option<&SnapshotMeta>, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Loads the current snapshot, if any.
    pub(crate) fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let image = match read_snapshot(dir)? {
            Some(file) => {
                let mut image = decode_image(&file.data).map_err(|e| format!("snapshot does not decode: {e}"))?;
                image.last_applied = file.meta.last_log_id;
                image.membership = file.meta.last_membership.clone();
                image
            }
            None => Image::default(),
        };
        let shared = Arc::new(Shared { image: RwLock::new(image), notices: Feed::new(), observer: RwLock::new(None) });
        Ok(StateMachineStore { shared, dir: dir.to_owned() })
    }

    /// A handle for reading the state and following its changes.
    pub fn handle(&self) -> StateHandle {
        StateHandle { shared: self.shared.clone() }
    }
}

/// Reads and verifies the snapshot file. A file that exists but does not verify is an
/// error, never ignored.
fn read_snapshot(dir: &Path) -> Result<Option<SnapshotFile>, String> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let file: SnapshotFile = decode(&bytes).map_err(|e| format!("{} does not decode: {e}", path.display()))?;
    if Sha256::digest(&file.data).as_slice() != file.sha256.as_slice() {
        return Err(format!("{} fails its checksum", path.display()));
    }
    Ok(Some(file))
}

/// Writes the snapshot durably: temp file, fsync, rename, fsync the directory.
fn write_snapshot(dir: &Path, meta: &SnapshotMeta, data: Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    let sha256 = Sha256::digest(&data).to_vec();
    let bytes = encode(&SnapshotFile { meta: meta.clone(), sha256, data });
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    crate::sync::fsync(dir)
}

async fn persist_snapshot(dir: PathBuf, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError<NodeId>> {
    let m = meta.clone();
    tokio::task::spawn_blocking(move || write_snapshot(&dir, &m, data))
        .await
        .map_err(|e| snapshot_err(Some(&meta), e))?
        .map_err(|e| snapshot_err(Some(&meta), e))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError<NodeId>> {
        let image = self.shared.image.read().unwrap_or_else(|p| p.into_inner());
        Ok((image.last_applied, image.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Responses>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut responses = Vec::new();
        let mut notices = Vec::new();
        {
            let mut image = self.shared.image.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                image.last_applied = Some(entry.log_id);
                let answers = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Membership(m) => {
                        image.membership = StoredMembership::new(Some(entry.log_id), m);
                        Vec::new()
                    }
                    EntryPayload::Normal(proposal) => {
                        let mut events = Vec::new();
                        let answers = proposal
                            .requests
                            .iter()
                            .map(|req| {
                                let applied = image.sm.apply(entry.log_id.index, req);
                                events.extend(applied.events);
                                applied.response
                            })
                            .collect();
                        if !events.is_empty() {
                            notices.push(Notice::Applied { index: entry.log_id.index, events: Arc::new(events) });
                        }
                        answers
                    }
                };
                responses.push(answers);
            }
        }
        for notice in notices {
            self.shared.notices.send(notice);
        }
        let observer = self.shared.observer.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(observe) = observer {
            observe(started.elapsed(), responses.len());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone(), dir: self.dir.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut image = decode_image(&data).map_err(|e| snapshot_err(Some(meta), e))?;
        image.last_applied = meta.last_log_id;
        image.membership = meta.last_membership.clone();
        // Durable first: once installed, openraft may purge the log it replaces.
        persist_snapshot(self.dir.clone(), meta.clone(), data).await?;
        // Replace everything: no key of the old state survives.
        *self.shared.image.write().unwrap_or_else(|p| p.into_inner()) = image;
        self.shared.notices.send(Notice::Replaced { index: meta.last_log_id.map_or(0, |l| l.index) });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<NodeId>> {
        let dir = self.dir.clone();
        let file = tokio::task::spawn_blocking(move || read_snapshot(&dir))
            .await
            .map_err(sm_err)?
            .map_err(|e| -> StorageError<NodeId> { StorageIOError::read_snapshot(None, AnyError::error(e)).into() })?;
        Ok(file.map(|f| Snapshot { meta: f.meta, snapshot: Box::new(Cursor::new(f.data)) }))
    }
}

/// Builds a snapshot from a copy of the state taken under the lock.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<NodeId>> {
        // Encode under the read lock: apply runs concurrently and must not interleave.
        let (data, last_applied, membership) = {
            let image = self.shared.image.read().unwrap_or_else(|p| p.into_inner());
            (encode(&*image), image.last_applied, image.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, unique_suffix()),
            None => format!("empty-{}", unique_suffix()),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        persist_snapshot(self.dir.clone(), meta.clone(), data.clone()).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

fn unique_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use raftcast_raft::{Command, PinScope, Proposal, Request, RequestId, StreamKey};

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        let req = Request { id: RequestId(u128::from(index)), at_ms: 0, command };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::single(req)),
        }
    }

    fn pin(pattern: &str, origin: u64) -> Command {
        Command::SetPin { scope: PinScope::new("live", pattern).unwrap(), origin }
    }

    #[tokio::test]
    async fn pins_survive_a_snapshot_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = StateMachineStore::open(dir.path()).unwrap();
            sm.apply([entry(1, pin("vip-*", 3)), entry(2, pin("news", 2))]).await.unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        }
        let sm = StateMachineStore::open(dir.path()).unwrap();
        let vip = StreamKey::new("live", "vip-1").unwrap();
        assert_eq!(sm.handle().read(|s| s.pin_for(&vip).map(|(_, o)| o)), Some(3));
        assert_eq!(sm.handle().read(|s| s.pins.len()), 2);
        assert_eq!(sm.handle().applied_index(), 2);
    }

    #[tokio::test]
    async fn a_snapshot_written_before_pins_existed_still_opens_and_installs() {
        let dir = tempfile::tempdir().unwrap();
        let stream = StreamKey::new("live", "foo").unwrap();
        let claim = Command::ClaimStream {
            stream: stream.clone(),
            owner: 2,
            edge: "edge-1".into(),
            session: "s".into(),
            takeover: false,
        };
        let (current, meta) = {
            let mut sm = StateMachineStore::open(dir.path()).unwrap();
            sm.apply([entry(1, claim)]).await.unwrap();
            let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            (snap.snapshot.into_inner(), snap.meta)
        };
        // The old layout is the current one without the trailing empty maps (pins,
        // token keys, client objects, subjects, app token rules, app hooks: one zero
        // byte each, their lengths).
        let mut old = current.clone();
        for _ in 0..2 {
            assert_eq!(old.pop(), Some(0));
        }
        assert!(decode::<Image>(&old).is_err());
        assert!(decode_image(&old).is_ok(), "the layout before app token rules");
        for _ in 0..3 {
            assert_eq!(old.pop(), Some(0));
        }
        assert!(decode::<Image>(&old).is_err());
        assert!(decode_image(&old).is_ok(), "the layout before token keys");
        assert_eq!(old.pop(), Some(0));
        assert!(decode::<Image>(&old).is_err());
        write_snapshot(dir.path(), &meta, old.clone()).unwrap();
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(sm.handle().read(|s| s.streams[&stream].owner), 2);
        assert!(sm.handle().read(|s| s.pins.is_empty()));
        // An older leader may also send one.
        sm.install_snapshot(&meta, Box::new(Cursor::new(old))).await.unwrap();
        assert_eq!(sm.handle().read(|s| s.streams[&stream].owner), 2);
        // Garbage is still refused.
        write_snapshot(dir.path(), &meta, vec![7; 16]).unwrap();
        assert!(StateMachineStore::open(dir.path()).is_err());
    }
}
