//! The state machine store: the replicated [`StateMachine`] in memory, its snapshots
//! on disk, and a feed of committed changes.
//!
//! The state machine itself is not written per entry: the durable log is the source of
//! truth. On restart the store loads the latest snapshot and openraft re-applies the
//! log from there up to the persisted committed index. Snapshots are one file, written
//! to a temporary name, fsynced and renamed, and carry a SHA-256 of their data
//! ([`crate::snapshot_file`]). Snapshot bytes are never held in memory whole: the state
//! is encoded straight into the file, openraft reads and writes snapshots as files
//! ([`SnapshotData`]), and installing decodes from the file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use raftcast_raft::rpc::{decode_from, encode_into, DecodeError};
use raftcast_raft::state::{Event, StateMachineV1, StateMachineV2, StateMachineV3, StateMachineV4, StateMachineV5};
use raftcast_raft::typ::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership};
use raftcast_raft::{NodeId, Responses, SnapshotData, StateMachine, TypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::feed::{Feed, NoticeReceiver};
use crate::snapshot_file;

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

/// [`Image`] as snapshots held it before recordings.
#[derive(Deserialize)]
struct ImageV5 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sm: StateMachineV5,
}

/// [`Image`] as snapshots held it before draining origins.
#[derive(Deserialize)]
struct ImageV4 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sm: StateMachineV4,
}

/// Decodes snapshot data in the current layout or, failing that, the layouts before
/// recordings, before draining origins, before app token rules, before token keys and before pin rules
/// (snapshots taken by an older build, on disk or sent by an older leader). No two
/// decode the same bytes: each newer layout is the older one plus trailing fields.
/// `data` opens the data from its start, once per layout tried.
fn decode_image<R: Read>(mut data: impl FnMut() -> std::io::Result<R>) -> Result<Image, DecodeError> {
    let current = match whole::<Image, R>(data()) {
        Ok(image) => return Ok(image),
        Err(e) => e,
    };
    if let Ok(old) = whole::<ImageV5, R>(data()) {
        return Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() });
    }
    if let Ok(old) = whole::<ImageV4, R>(data()) {
        return Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() });
    }
    if let Ok(old) = whole::<ImageV3, R>(data()) {
        return Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() });
    }
    if let Ok(old) = whole::<ImageV2, R>(data()) {
        return Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() });
    }
    match whole::<ImageV1, R>(data()) {
        Ok(old) => Ok(Image { last_applied: old.last_applied, membership: old.membership, sm: old.sm.into() }),
        Err(_) => Err(current),
    }
}

/// Decodes a `T` that must end exactly where `input` does.
fn whole<T: DeserializeOwned, R: Read>(input: std::io::Result<R>) -> Result<T, DecodeError> {
    let mut input = input.map_err(DecodeError::Io)?;
    let value = decode_from(&mut input)?;
    match std::io::copy(&mut input, &mut std::io::sink()).map_err(DecodeError::Io)? {
        0 => Ok(value),
        trailing => Err(DecodeError::Trailing(trailing as usize)),
    }
}

/// Observes the duration of each applied batch (for metrics).
pub type ApplyObserver = Arc<dyn Fn(Duration, usize) + Send + Sync>;

struct Shared {
    image: RwLock<Image>,
    notices: Feed,
    observer: RwLock<Option<ApplyObserver>>,
    /// Held while a snapshot file is written: building and installing may overlap, and
    /// they share the temporary file name.
    writing: Mutex<()>,
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

fn snapshot_err(meta: Option<&SnapshotMeta>, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Loads the current snapshot, if any.
    pub(crate) fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let image = match snapshot_file::open(dir)? {
            Some((file, header)) => {
                let data = || snapshot_file::window(&file, header.data_start, header.data_len);
                let mut image = decode_image(data).map_err(|e| format!("snapshot does not decode: {e}"))?;
                image.last_applied = header.meta.last_log_id;
                image.membership = header.meta.last_membership.clone();
                image
            }
            None => Image::default(),
        };
        let shared = Arc::new(Shared {
            image: RwLock::new(image),
            notices: Feed::new(),
            observer: RwLock::new(None),
            writing: Mutex::new(()),
        });
        Ok(StateMachineStore { shared, dir: dir.to_owned() })
    }

    /// A handle for reading the state and following its changes.
    pub fn handle(&self) -> StateHandle {
        StateHandle { shared: self.shared.clone() }
    }
}

/// Runs blocking snapshot file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    meta: Option<&SnapshotMeta>,
    work: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    tokio::task::spawn_blocking(work).await.map_err(|e| snapshot_err(meta, e))?
}

/// A fresh, unnamed file in `dir` (created, then unlinked: nothing is left behind if the
/// process stops), for a snapshot being received.
fn anonymous_file(dir: &Path) -> std::io::Result<std::fs::File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("incoming-{}-{}.tmp", unique_suffix(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let file = std::fs::File::options().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        let dir = self.dir.clone();
        let file = blocking(None, move || anonymous_file(&dir).map_err(|e| snapshot_err(None, e))).await?;
        Ok(Box::new(SnapshotData::new(file, 0)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        let (file, start) = snapshot.into_std().await;
        let (shared, dir, m) = (self.shared.clone(), self.dir.clone(), meta.clone());
        let image = blocking(Some(meta), move || {
            let len = file.metadata().map_err(|e| snapshot_err(Some(&m), e))?.len().saturating_sub(start);
            let data = || snapshot_file::window(&file, start, len);
            let mut image = decode_image(data).map_err(|e| snapshot_err(Some(&m), e))?;
            image.last_applied = m.last_log_id;
            image.membership = m.last_membership.clone();
            // Durable first: once installed, openraft may purge the log it replaces.
            let _writing = shared.writing.lock().unwrap_or_else(|p| p.into_inner());
            snapshot_file::write(&dir, &m, len, |out| {
                std::io::copy(&mut snapshot_file::window(&file, start, len)?, out).map(drop)
            })
            .map_err(|e| snapshot_err(Some(&m), e))?;
            Ok(image)
        })
        .await?;
        // Replace everything: no key of the old state survives.
        *self.shared.image.write().unwrap_or_else(|p| p.into_inner()) = image;
        self.shared.notices.send(Notice::Replaced { index: meta.last_log_id.map_or(0, |l| l.index) });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<NodeId>> {
        let dir = self.dir.clone();
        let current = blocking(None, move || {
            snapshot_file::open(&dir)
                .map_err(|e| -> StorageError<NodeId> { StorageIOError::read_snapshot(None, AnyError::error(e)).into() })
        })
        .await?;
        Ok(current.map(|(file, header)| Snapshot {
            meta: header.meta,
            snapshot: Box::new(SnapshotData::new(file, header.data_start)),
        }))
    }
}

/// Builds a snapshot by encoding the state, under its read lock, straight into the
/// snapshot file.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<NodeId>> {
        let (shared, dir) = (self.shared.clone(), self.dir.clone());
        let (meta, file, start) = blocking(None, move || {
            let _writing = shared.writing.lock().unwrap_or_else(|p| p.into_inner());
            // Encode under the read lock: apply runs concurrently and must not interleave.
            // It is released once the state is encoded, before the file is synced.
            let image = shared.image.read().unwrap_or_else(|p| p.into_inner());
            let snapshot_id = match image.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, unique_suffix()),
                None => format!("empty-{}", unique_suffix()),
            };
            let meta = SnapshotMeta {
                last_log_id: image.last_applied,
                last_membership: image.membership.clone(),
                snapshot_id,
            };
            let len = snapshot_file::data_len(&*image);
            let written = snapshot_file::write(&dir, &meta, len, move |out| {
                let encoded = encode_into(&*image, out);
                drop(image);
                encoded.map(drop)
            });
            let (file, start) = written.map_err(|e| snapshot_err(Some(&meta), e))?;
            Ok((meta, file, start))
        })
        .await?;
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotData::new(file, start)) })
    }
}

fn unique_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use raftcast_raft::rpc::{decode, encode};
    use raftcast_raft::{Command, PinScope, Proposal, Request, RequestId, StreamKey};
    use sha2::{Digest, Sha256};
    use std::io::SeekFrom;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    /// Writes a snapshot file the way builds before streamed snapshots did: one bincode
    /// struct encoded in memory.
    fn write_old_way(dir: &Path, meta: &SnapshotMeta, data: Vec<u8>) {
        #[derive(Serialize)]
        struct SnapshotFile {
            meta: SnapshotMeta,
            sha256: Vec<u8>,
            data: Vec<u8>,
        }
        let sha256 = Sha256::digest(&data).to_vec();
        let bytes = encode(&SnapshotFile { meta: meta.clone(), sha256, data });
        std::fs::write(dir.join(snapshot_file::SNAPSHOT_FILE), bytes).unwrap();
    }

    /// Everything in a snapshot's data.
    async fn bytes_of(mut data: Box<SnapshotData>) -> Vec<u8> {
        data.seek(SeekFrom::Start(0)).await.unwrap();
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).await.unwrap();
        bytes
    }

    /// Snapshot data holding `bytes`, as a follower receives it.
    fn received(dir: &Path, bytes: &[u8]) -> Box<SnapshotData> {
        use std::io::Write;
        let mut file = anonymous_file(dir).unwrap();
        file.write_all(bytes).unwrap();
        Box::new(SnapshotData::new(file, 0))
    }

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
            (bytes_of(snap.snapshot).await, snap.meta)
        };
        // The old layout is the current one without the trailing empty maps (pins,
        // token keys, client objects, subjects, app token rules, app hooks, draining
        // origins, recording rules, the recording catalog: one zero byte each, their
        // lengths; then the recording retention, two `None`s).
        let mut old = current.clone();
        for _ in 0..4 {
            assert_eq!(old.pop(), Some(0));
        }
        assert!(decode::<Image>(&old).is_err());
        assert!(decode_image(|| Ok(&old[..])).is_ok(), "the layout before recordings");
        assert_eq!(old.pop(), Some(0));
        assert!(decode::<Image>(&old).is_err());
        assert!(decode_image(|| Ok(&old[..])).is_ok(), "the layout before draining origins");
        for _ in 0..2 {
            assert_eq!(old.pop(), Some(0));
        }
        assert!(decode::<Image>(&old).is_err());
        assert!(decode_image(|| Ok(&old[..])).is_ok(), "the layout before app token rules");
        for _ in 0..3 {
            assert_eq!(old.pop(), Some(0));
        }
        assert!(decode::<Image>(&old).is_err());
        assert!(decode_image(|| Ok(&old[..])).is_ok(), "the layout before token keys");
        assert_eq!(old.pop(), Some(0));
        assert!(decode::<Image>(&old).is_err());
        write_old_way(dir.path(), &meta, old.clone());
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(sm.handle().read(|s| s.streams[&stream].owner), 2);
        assert!(sm.handle().read(|s| s.pins.is_empty()));
        // An older leader may also send one.
        sm.install_snapshot(&meta, received(dir.path(), &old)).await.unwrap();
        assert_eq!(sm.handle().read(|s| s.streams[&stream].owner), 2);
        // Garbage is still refused.
        write_old_way(dir.path(), &meta, vec![7; 16]);
        assert!(StateMachineStore::open(dir.path()).is_err());
        assert!(sm.install_snapshot(&meta, received(dir.path(), &[7; 16])).await.is_err());
    }

    fn big_value(object: &str, slot: usize) -> Command {
        let value = raftcast_raft::Value::String(char::from(b'a' + slot as u8).to_string().repeat(60_000));
        Command::SetSlots {
            object: object.into(),
            slots: vec![(format!("s{slot}"), value)],
            if_version: None,
            persistent: true,
        }
    }

    #[tokio::test]
    async fn a_large_snapshot_goes_from_file_to_file_and_reopens() {
        let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = StateMachineStore::open(leader_dir.path()).unwrap();
        let entries: Vec<_> = (1..=20).map(|i| entry(i, big_value(&format!("o{i}"), i as usize))).collect();
        leader.apply(entries).await.unwrap();
        let built = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let data = bytes_of(built.snapshot).await;
        assert!(data.len() > 20 * 60_000);
        let image = leader.shared.image.read().unwrap().clone();
        assert_eq!(data, encode(&image), "the data is the encoded state, as sent to older nodes");
        // What the leader sends is the stored file's data, checked.
        let current = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(bytes_of(current.snapshot).await, data);
        // The follower receives it in chunks written at their offsets, out of order too.
        let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        {
            use tokio::io::AsyncWriteExt;
            let half = data.len() / 2;
            incoming.seek(SeekFrom::Start(half as u64)).await.unwrap();
            incoming.write_all(&data[half..]).await.unwrap();
            incoming.seek(SeekFrom::Start(0)).await.unwrap();
            incoming.write_all(&data[..half]).await.unwrap();
            incoming.shutdown().await.unwrap();
        }
        follower.install_snapshot(&built.meta, incoming).await.unwrap();
        let value = |sm: &StateMachineStore| sm.handle().read(|s| format!("{:?}", s.objects));
        assert_eq!(value(&follower), value(&leader));
        assert_eq!(follower.handle().applied_index(), 20);
        let reopened = StateMachineStore::open(follower_dir.path()).unwrap();
        assert_eq!(value(&reopened), value(&leader));
        assert_eq!(reopened.handle().applied_index(), 20);
        // Nothing but the snapshot is left in either directory.
        for dir in [leader_dir.path(), follower_dir.path()] {
            let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, [snapshot_file::SNAPSHOT_FILE], "{}", dir.display());
        }
        let _ = decode::<Image>(&data).unwrap();
    }
}
