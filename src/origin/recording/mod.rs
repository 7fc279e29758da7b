//! Recordings at the origins (issue 16, phase 1): the owner of a recorded stream writes
//! what it receives into one FLV piece per claim epoch; a finished piece is copied to a
//! second origin; any origin serves a whole recording as one FLV file, its pieces
//! joined so that every frame appears once (`docs/recording.md`).
//!
//! - [`Recorder::attached`]: the link server accepted a publisher here; if the stream
//!   is recorded, a piece starts, reading the stream's hub like any subscriber (its
//!   bounded queue skips to a keyframe if the disk falls behind: the publisher never
//!   waits) and handing frames to a writer on the blocking pool through a bounded
//!   queue ([`WRITE_QUEUE`]).
//! - [`maintain`]: once a second, from the catalog and the recordings folder: finishes
//!   pieces whose writer died (a `.part` file after a SIGKILL), starts and stops
//!   pieces when rules change, copies finished pieces this origin should hold a
//!   replica of ([`replica`]) and removes the files of deleted recordings; on the
//!   leader, deletes the recordings the retention bounds (age, bytes) want gone.
//! - [`read`]: a recording as one FLV stream, pieces from this origin's disk or a peer.
//!
//! Knows hubs, frames and FLV tags, never the link protocol, sessions or sockets of
//! the edges; never blocks the runtime (every file operation is on the blocking pool).

pub(crate) mod dvr;
pub(crate) mod files;
pub(crate) mod flv_file;
pub(crate) mod join;
pub(crate) mod marks;
pub(crate) mod read;
pub(crate) mod replica;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use raftcast_raft::recording::{Piece, PieceFacts};
use raftcast_raft::{Command, NodeId, RequestId, Response, StreamKey};
use raftcast_storage::StateHandle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::media::queue::QueueLimits;
use crate::media::{Frame, Hub, ReaderCloser, Subscription};
use crate::origin::metrics::RecordStats;
use crate::origin::proposer::Proposer;
use crate::peer::PeerClient;
use files::Found;

/// Frames queued between a piece's hub reader and its writer on the blocking pool.
/// When it is full the reader waits, and the hub's bounded queue for it fills behind
/// and skips to the next keyframe (the drop is counted in the piece's facts): the
/// publisher never waits for the disk.
pub const WRITE_QUEUE: usize = 256;
/// Bounds of a piece's hub reader queue. A new owner gets the publishing edge's
/// retained frames in one burst (at most 30 s and 64 MiB, `RetainLimits::default`),
/// far faster than a writer takes them; a player's queue (512 frames, 4 MiB) would
/// skip to a keyframe in the middle of it and lose frames the previous piece never
/// had. This holds a whole burst, and is only filled while the writer is behind.
pub const READER_QUEUE: QueueLimits = QueueLimits { max_frames: 8192, max_bytes: 80 * 1024 * 1024 };
/// How often [`maintain`] looks at the catalog and the recordings folder.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// A complete piece file the catalog does not list (its recording was deleted, or its
/// opening never committed) is removed once it is this old.
pub const ORPHAN_AGE: Duration = Duration::from_secs(120);
/// How many origins hold each finished piece: its owner and one replica.
pub const COPIES: usize = 2;

/// Streams with a publisher attached here: (stream, epoch, hub). Given by the link
/// server, which this module does not know.
pub type LiveHubs = Arc<dyn Fn() -> Vec<(StreamKey, u64, Arc<Hub>)> + Send + Sync>;

/// How long a piece whose hub ended waits for the same epoch's publisher to attach
/// here again (its edge's link to this origin broke and came back) before it ends.
pub const LINGER: Duration = Duration::from_secs(3);

/// A piece being written here.
struct Writing {
    epoch: u64,
    /// Ends its current hub reader: no frame published after this, what was queued
    /// before still written.
    closer: ReaderCloser,
    stop: CancellationToken,
    /// A new hub reader for the same epoch (the publisher attached again).
    resume: mpsc::Sender<Subscription>,
}

/// This origin's recorder. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    dir: PathBuf,
    state: StateHandle,
    proposer: Proposer,
    peers: PeerClient,
    raft: raftcast_raft::typ::Raft,
    writing: Mutex<HashMap<StreamKey, Writing>>,
    copying: Mutex<HashSet<u64>>,
    stats: Arc<RecordStats>,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// A recorder keeping its pieces in `dir`.
    #[allow(clippy::too_many_arguments)] // each a collaborator wired once in `origin::run`
    pub fn new(
        id: NodeId,
        dir: PathBuf,
        state: StateHandle,
        proposer: Proposer,
        peers: PeerClient,
        raft: raftcast_raft::typ::Raft,
        stats: Arc<RecordStats>,
        shutdown: CancellationToken,
    ) -> Recorder {
        let inner = Inner {
            id,
            dir,
            state,
            proposer,
            peers,
            raft,
            writing: Mutex::default(),
            copying: Mutex::default(),
            stats,
            shutdown,
        };
        Recorder { inner: Arc::new(inner) }
    }

    /// The folder of this origin's piece files.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn peers(&self) -> &PeerClient {
        &self.inner.peers
    }

    /// The admin HTTP address of origin `id`, from the membership.
    pub fn http_of(&self, id: NodeId) -> Option<String> {
        self.inner.raft.metrics().borrow().membership_config.membership().get_node(&id).map(|n| n.http.clone())
    }

    /// Whether a piece is being written here under `epoch`.
    pub fn writing(&self, epoch: u64) -> bool {
        lock(&self.inner.writing).values().any(|w| w.epoch == epoch)
    }

    /// A publisher of `stream` was accepted here under `epoch`, and its frames go into
    /// `hub` from now on. Called before any of them is published, so a piece started
    /// here gets them all; what the hub held before (another epoch's frames) is not
    /// this piece's. Nothing starts when the stream is not recorded, or when a piece of
    /// this epoch runs already (the same publisher attaching again).
    pub fn attached(&self, stream: &StreamKey, epoch: u64, hub: &Arc<Hub>) {
        self.start(stream, epoch, hub, false);
    }

    fn start(&self, stream: &StreamKey, epoch: u64, hub: &Arc<Hub>, from_gop: bool) {
        let session = self.inner.state.read(|sm| {
            let claim = sm.streams.get(stream).filter(|c| c.epoch == epoch)?;
            sm.recordings.wanted(stream).then(|| (claim.edge.clone(), claim.session.clone()))
        });
        let Some((edge, session)) = session else { return };
        let mut writing = lock(&self.inner.writing);
        let subscription = hub.subscribe_with_queue(READER_QUEUE);
        if !from_gop {
            while subscription.try_recv().is_some() {}
        }
        if let Some(w) = writing.get(stream) {
            if w.epoch == epoch {
                // The same publisher attached again: the running piece goes on reading
                // the new hub (a full queue means it has one waiting already).
                let closer = subscription.closer();
                if w.resume.try_send(subscription).is_ok() {
                    if let Some(w) = writing.get_mut(stream) {
                        w.closer = closer;
                    }
                }
                return;
            }
            // A newer epoch here (on the same hub, if it was kept): the old piece gets
            // nothing published from now on — this runs before the new publisher's
            // first frame — and writes what it had queued.
            w.closer.close();
            w.stop.cancel();
        }
        let stop = CancellationToken::new();
        let (resume, resumed) = mpsc::channel(1);
        let closer = subscription.closer();
        writing.insert(stream.clone(), Writing { epoch, closer, stop: stop.clone(), resume });
        drop(writing);
        tracing::info!(%stream, epoch, "recording a piece");
        let job = PieceJob { stream: stream.clone(), epoch, edge, session, subscription, resumed, stop };
        tokio::spawn(tracing::Instrument::in_current_span(self.clone().record(job)));
    }

    /// Writes one piece until its hub ends (the publisher left, the claim moved), a
    /// newer epoch starts, recording is switched off or the origin stops; then finishes
    /// it in the catalog.
    async fn record(self, job: PieceJob) {
        let PieceJob { stream, epoch, edge, session, mut subscription, mut resumed, stop } = job;
        let (tx, rx) = mpsc::channel::<Frame>(WRITE_QUEUE);
        let dir = self.inner.dir.clone();
        let writer = tokio::task::spawn_blocking(move || files::write_piece(&dir, epoch, rx));
        let open = Command::OpenPiece { stream: stream.clone(), epoch, owner: self.inner.id, edge, session };
        let opening = tokio::spawn(self.clone().open(open));
        let mut dropped = 0;
        let mut stopping = false;
        loop {
            let frame = if stopping {
                // Closed: only what was queued before the stop is left.
                subscription.recv().await
            } else {
                tokio::select! {
                    frame = subscription.recv() => frame,
                    _ = stop.cancelled() => None,
                    _ = self.inner.shutdown.cancelled() => None,
                }
            };
            if frame.is_none() && !stopping && (stop.is_cancelled() || self.inner.shutdown.is_cancelled()) {
                // Stopped (a newer epoch, recording switched off, shutdown): take no
                // more frames, but write those queued.
                subscription.closer().close();
                stopping = true;
                continue;
            }
            if frame.is_none() && stopping {
                break;
            }
            let Some(frame) = frame else {
                // The hub ended (or this reader was closed for a newer epoch, which also
                // cancelled `stop`): the piece goes on if the same epoch attaches again.
                let next = tokio::select! {
                    next = tokio::time::timeout(LINGER, resumed.recv()) => next.ok().flatten(),
                    _ = stop.cancelled() => None,
                    _ = self.inner.shutdown.cancelled() => None,
                };
                match next {
                    Some(next) => {
                        dropped += subscription.dropped();
                        subscription = next;
                        continue;
                    }
                    None => break,
                }
            };
            if tx.send(frame).await.is_err() {
                break; // the writer failed; it says why below
            }
        }
        drop(tx);
        dropped += subscription.dropped();
        drop(subscription);
        let written = writer.await;
        {
            let mut writing = lock(&self.inner.writing);
            if writing.get(&stream).is_some_and(|w| w.epoch == epoch) {
                writing.remove(&stream);
            }
        }
        let tally = match written {
            Ok(Ok(tally)) => tally,
            Ok(Err(e)) => {
                tracing::warn!(%stream, epoch, error = %e, "a recording piece could not be written");
                return;
            }
            Err(e) => {
                tracing::warn!(%stream, epoch, error = %e, "a recording piece's writer failed");
                return;
            }
        };
        self.inner.stats.bytes_written.inc_by(tally.bytes);
        self.inner.stats.frames_dropped.inc_by(dropped);
        tracing::info!(%stream, epoch, frames = tally.frames, bytes = tally.bytes, dropped, "recording piece complete");
        let Ok(Some(recording)) = opening.await else { return };
        let facts = facts(tally, dropped);
        // If this fails (no leader now), `maintain` finishes it from the file later.
        self.propose(Command::FinishPiece { recording, epoch, facts }).await;
    }

    /// Opens the piece in the catalog: retried (one request id) until it is answered,
    /// the origin stops, or an hour passed. `None` when it could not be.
    async fn open(self, command: Command) -> Option<u64> {
        let id = RequestId::random();
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while tokio::time::Instant::now() < deadline {
            match self.inner.proposer.write_as(id, command.clone()).await {
                Ok(Response::Recording { id }) => return Some(id),
                Ok(other) => {
                    tracing::warn!(?other, "a recording piece could not be opened in the catalog");
                    return None;
                }
                Err(e) => tracing::debug!(error = %e, "opening a recording piece; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_pause()) => {}
                _ = self.inner.shutdown.cancelled() => return None,
            }
        }
        None
    }

    /// Proposes `command` once, logging a failure (callers retry from the catalog).
    async fn propose(&self, command: Command) -> bool {
        match self.inner.proposer.write(command).await {
            Ok(Response::Stored) => true,
            Ok(other) => {
                tracing::debug!(?other, "recording catalog change refused");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "recording catalog change not made");
                false
            }
        }
    }
}

/// The catalog's facts of a piece from what its writer counted.
fn facts(tally: flv_file::Tally, dropped: u64) -> PieceFacts {
    PieceFacts {
        bytes: tally.bytes,
        frames: tally.frames,
        first_ts: tally.first_ts.unwrap_or(0),
        last_ts: tally.last_ts,
        dropped,
        closed_ms: 0,
    }
}

struct PieceJob {
    stream: StreamKey,
    epoch: u64,
    edge: String,
    session: String,
    subscription: Subscription,
    resumed: mpsc::Receiver<Subscription>,
    stop: CancellationToken,
}

/// What one maintain pass needs of the catalog, read in one go: every piece's epoch,
/// and (recording, piece) of those this origin has something to do about — a local
/// file the catalog does not show as held here yet, or a finished piece it should
/// (again) hold but has no file of. In a steady state that is nothing, so the pass
/// copies no more than the epochs.
struct CatalogView {
    epochs: HashSet<u64>,
    todo: HashMap<u64, (u64, Piece)>,
}

fn catalog_view(state: &StateHandle, me: NodeId, local: &HashSet<u64>, voters: &[NodeId]) -> CatalogView {
    state.read(|sm| {
        let mut view = CatalogView { epochs: HashSet::new(), todo: HashMap::new() };
        for (id, r) in &sm.recordings.catalog {
            for p in &r.pieces {
                view.epochs.insert(p.epoch);
                let held = p.finished.is_some() && p.holders.contains(&me);
                let todo =
                    if local.contains(&p.epoch) { !held } else { held || replica::assigned(p, voters) == Some(me) };
                if todo {
                    view.todo.insert(p.epoch, (*id, p.clone()));
                }
            }
        }
        view
    })
}

/// Runs [`Recorder::maintain_once`] every [`MAINTAIN_EVERY`] until shutdown.
pub async fn maintain(recorder: Recorder, live: LiveHubs) {
    let shutdown = recorder.inner.shutdown.clone();
    loop {
        recorder.maintain_once(&live).await;
        tokio::select! {
            _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Recorder {
    /// One pass: rules, dead writers, unfinished and orphaned files, replicas.
    pub async fn maintain_once(&self, live: &LiveHubs) {
        self.follow_rules(live);
        let dir = self.inner.dir.clone();
        let found = match tokio::task::spawn_blocking(move || files::list(&dir)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return tracing::warn!(error = %e, "cannot list the recordings folder"),
            Err(_) => return,
        };
        let pieces: HashSet<u64> = found
            .iter()
            .filter_map(|f| match f {
                Found::Piece(e) | Found::Part(e) => Some(*e),
                _ => None,
            })
            .collect();
        let mut local = HashSet::new();
        for f in found {
            match f {
                Found::Part(epoch) if !self.writing(epoch) => {
                    // Its writer died with an earlier process: cut the torn tail.
                    let dir = self.inner.dir.clone();
                    match tokio::task::spawn_blocking(move || files::recover(&dir, epoch)).await {
                        Ok(Ok(tally)) => {
                            tracing::info!(epoch, frames = tally.frames, "recovered a recording piece");
                            self.inner.stats.bytes_written.inc_by(tally.bytes);
                            local.insert(epoch);
                        }
                        Ok(Err(e)) => tracing::warn!(epoch, error = %e, "cannot recover a recording piece"),
                        Err(_) => {}
                    }
                }
                Found::Copy(epoch) if !lock(&self.inner.copying).contains(&epoch) => {
                    let dir = self.inner.dir.clone();
                    let _ = tokio::task::spawn_blocking(move || files::remove(&dir, Found::Copy(epoch))).await;
                }
                Found::Piece(epoch) => {
                    local.insert(epoch);
                }
                Found::MarksCopy(epoch) if !lock(&self.inner.copying).contains(&epoch) => {
                    let dir = self.inner.dir.clone();
                    let _ = tokio::task::spawn_blocking(move || files::remove(&dir, Found::MarksCopy(epoch))).await;
                }
                Found::Marks(epoch)
                    if !pieces.contains(&epoch)
                        && !self.writing(epoch)
                        && !lock(&self.inner.copying).contains(&epoch) =>
                {
                    // Marks whose piece is gone (removed by an older build, or a
                    // crash between moving a replica's marks and its piece).
                    let dir = self.inner.dir.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let path = files::marks_path(&dir, epoch);
                        let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
                        let old = SystemTime::now().duration_since(age).ok()? > ORPHAN_AGE;
                        old.then(|| files::remove(&dir, Found::Marks(epoch)))
                    })
                    .await;
                }
                _ => {}
            }
        }
        let (voters, leader): (Vec<NodeId>, _) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            (m.membership_config.membership().voter_ids().collect(), m.current_leader)
        };
        if leader == Some(self.inner.id) {
            self.retain().await;
        }
        let view = catalog_view(&self.inner.state, self.inner.id, &local, &voters);
        for epoch in &local {
            match view.todo.get(epoch) {
                Some(listed) => self.settle(*epoch, Some(listed)).await,
                None if !view.epochs.contains(epoch) => self.settle(*epoch, None).await,
                None => {}
            }
        }
        for (epoch, (recording, piece)) in &view.todo {
            if local.contains(epoch) || self.writing(*epoch) {
                continue;
            }
            // A copy this origin should make, or one it is listed as holding but lost
            // (its files were deleted or its disk replaced): fetched from another holder.
            replica::start(self, *recording, piece.clone());
        }
    }

    /// On the leader: deletes the recordings retention wants gone (oldest first; the
    /// origins remove their files within [`ORPHAN_AGE`]).
    async fn retain(&self) {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let expired = self.inner.state.read(|sm| sm.recordings.expired(now_ms));
        for recording in expired {
            if self.propose(Command::DeleteRecording { recording }).await {
                tracing::info!(recording, "recording deleted by the retention rule");
            }
        }
    }

    /// Starts pieces of streams published here whose recording was switched on since
    /// they started (from their GOP), and stops those switched off.
    fn follow_rules(&self, live: &LiveHubs) {
        for (stream, epoch, hub) in live() {
            let running = lock(&self.inner.writing).get(&stream).is_some_and(|w| w.epoch == epoch);
            // A piece of this epoch that ended already is never started again (it would
            // be refused: a piece file is never overwritten).
            if !running
                && self.inner.state.read(|sm| sm.recordings.wanted(&stream) && sm.recordings.piece(epoch).is_none())
            {
                self.start(&stream, epoch, &hub, true);
            }
        }
        let writing = lock(&self.inner.writing);
        self.inner.state.read(|sm| {
            for (stream, w) in writing.iter() {
                if !sm.recordings.wanted(stream) {
                    w.stop.cancel();
                }
            }
        });
    }

    /// Brings the catalog in line with the complete local piece of `epoch`: finishes it
    /// if this origin wrote it, records this origin as a holder if it is a copy the
    /// catalog does not list yet, removes it if its recording is gone.
    async fn settle(&self, epoch: u64, listed: Option<&(u64, Piece)>) {
        let path = files::piece_path(&self.inner.dir, epoch);
        match listed {
            Some((recording, piece)) if piece.finished.is_none() && piece.owner == self.inner.id => {
                let scanned = tokio::task::spawn_blocking(move || files::scan(&path)).await;
                if let Ok(Ok(tally)) = scanned {
                    let facts = facts(tally, 0);
                    self.propose(Command::FinishPiece { recording: *recording, epoch, facts }).await;
                }
            }
            Some((recording, piece)) if piece.finished.is_some() && !piece.holders.contains(&self.inner.id) => {
                if piece.owner == self.inner.id || lock(&self.inner.copying).contains(&epoch) {
                    return;
                }
                let holder = self.inner.id;
                self.propose(Command::AddPieceHolder { recording: *recording, epoch, holder }).await;
            }
            Some(_) => {}
            None => {
                let old = tokio::task::spawn_blocking(move || {
                    let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
                    SystemTime::now().duration_since(age).ok()
                })
                .await;
                if matches!(old, Ok(Some(age)) if age > ORPHAN_AGE) {
                    tracing::info!(epoch, "removing a recording piece the catalog no longer lists");
                    let dir = self.inner.dir.clone();
                    let _ = tokio::task::spawn_blocking(move || files::remove(&dir, Found::Piece(epoch))).await;
                }
            }
        }
    }
}
