//! The edge's VOD cache (`docs/vod.md`, "Edges: the cache"): whole files on this
//! edge's disk, fetched from the origins on a miss, kept within a byte bound by
//! evicting the least recently opened.
//!
//! - A miss fetches through a [`Source`] (the origins, in turn, from a place that
//!   depends on the id) into `{dir}/{id}.part`, chunk by chunk, then `fsync`s and
//!   renames it to `{dir}/{id}.flv`. One fetch per id at a time: concurrent misses of
//!   the same id wait for it (single flight); the fetch runs in its own task, so a
//!   client that leaves does not cut it off for the others.
//! - After each insert the least recently opened files are removed until the total is
//!   within the bound. A file larger than the bound is served from its unlinked
//!   `.part` file and not kept.
//! - Recency is in memory ([`Index`]); opening a hit sets the file's modification
//!   time, so the index rebuilt from the directory at start (oldest first) keeps the
//!   order. `.part` leftovers are removed at start.
//! - No blocking file-system call runs on the async workers: directory scans, opens,
//!   renames, unlinks and reads go to the blocking pool or through `tokio::fs`.
//!
//! Never knows HTTP: the origins are behind [`Source`], the clients behind
//! [`VodFile`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, OnceCell, Semaphore};

use crate::vod::VodId;

/// Different ids fetched at once; a miss beyond it is refused as
/// [`VodError::Unavailable`] (503, retry later) rather than queued.
pub(crate) const MAX_FETCHES: usize = 16;
/// How long an origin may take to answer a fetch (its status and headers).
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch's body may stall between two chunks before that origin counts as
/// failed and the next is tried.
pub(crate) const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes gathered before a write to the `.part` file.
const WRITE_BUFFER: usize = 256 * 1024;
/// How many times one `open` starts over when the cache changed under it (an
/// eviction of the same id, a file removed behind the cache's back).
const MAX_ROUNDS: usize = 4;

/// One VOD file, whole, on this edge's disk: read it with positional reads
/// ([`VodFile::read_at`]). It stays readable while held even if the cache evicts it
/// meanwhile (the name is unlinked, the file is not gone until the last handle).
#[derive(Clone, Debug)]
pub(crate) struct VodFile {
    pub(crate) id: VodId,
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) len: u64,
}

impl VodFile {
    /// Exactly `len` bytes from `offset`, read on the blocking pool into a buffer of
    /// that size (callers read in bounded chunks); an error if the file ends before.
    pub(crate) async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.file.clone();
        let join = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        });
        join.await.unwrap_or_else(|e| Err(io::Error::other(format!("a read task failed: {e}"))))
    }
}

/// Why a VOD file cannot be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VodError {
    /// This edge has no `--vod-cache-dir`.
    #[error("VOD is off on this edge (it was started without --vod-cache-dir)")]
    Off,
    /// Every origin answered that it has no such recording or library file.
    #[error("no such recording or library file")]
    NotFound,
    /// The recording is still being written (some origin said so).
    #[error("the recording is not finished yet; it plays as VOD once it is")]
    Unfinished,
    /// No origin could give it (unreachable, cut off, a local disk error), or too many
    /// fetches are under way: worth retrying later.
    #[error("the file could not be fetched: {0}")]
    Unavailable(String),
}

/// One origin's answer to a fetch.
pub(crate) enum Answer {
    /// `200`: the file, chunk by chunk. The stream must end (`None`) only when the
    /// whole file was sent; an `Err` item means it was cut off.
    Body(BoxStream<'static, Result<Bytes, String>>),
    /// `404`: not there.
    NotFound,
    /// `409`: a recording still being written.
    Unfinished,
    /// Anything else (not reachable, another status), and why.
    Failed(String),
}

/// Where a miss is fetched from: a fixed list of origins, asked in turn.
pub(crate) trait Source: Send + Sync + 'static {
    /// How many origins there are (asked as `0..origins()`).
    fn origins(&self) -> usize;
    /// Asks origin `at` for `id`.
    fn fetch(&self, at: usize, id: &VodId) -> BoxFuture<'static, Answer>;
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct VodStats {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    /// Bytes received from origins (attempts that failed half-way included).
    pub(crate) fetched_bytes: AtomicU64,
    /// Fetches that ended without a file (not found anywhere, unfinished, unavailable).
    pub(crate) fetch_failures: AtomicU64,
    /// Bytes of the files kept now.
    pub(crate) bytes: AtomicU64,
    /// RTMP VOD plays started, and the seeks and pauses their clients made.
    pub(crate) rtmp_plays: AtomicU64,
    pub(crate) rtmp_seeks: AtomicU64,
    pub(crate) rtmp_pauses: AtomicU64,
}

/// Which files the cache holds and in what order they were last opened. Pure: the
/// cache applies what it decides to the directory.
#[derive(Debug, Default)]
struct Index {
    entries: HashMap<VodId, Entry>,
    /// Last use → id, oldest first.
    order: BTreeMap<u64, VodId>,
    clock: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u64,
    used: u64,
    /// Tells this insert from a later one of the same id.
    generation: u64,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Adds (or replaces) `id` as the most recently used; its generation.
    fn insert(&mut self, id: VodId, len: u64) -> u64 {
        self.remove(&id);
        let used = self.tick();
        self.order.insert(used, id.clone());
        self.entries.insert(id, Entry { len, used, generation: used });
        self.total += len;
        used
    }

    /// Marks `id` used now; its entry, if held.
    fn touch(&mut self, id: &VodId) -> Option<Entry> {
        let now = self.tick();
        let entry = self.entries.get_mut(id)?;
        self.order.remove(&entry.used);
        entry.used = now;
        self.order.insert(now, id.clone());
        Some(*entry)
    }

    fn remove(&mut self, id: &VodId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.order.remove(&entry.used);
        self.total -= entry.len;
        Some(entry)
    }

    /// Removes the least recently used entries until the total is at most `bound`; the
    /// ids removed, oldest first.
    fn over(&mut self, bound: u64) -> Vec<VodId> {
        let mut gone = Vec::new();
        while self.total > bound {
            let Some((_, id)) = self.order.pop_first() else { break };
            if let Some(entry) = self.entries.remove(&id) {
                self.total -= entry.len;
            }
            gone.push(id);
        }
        gone
    }
}

/// How a fetch or an eviction ended, for those waiting on it.
#[derive(Clone, Debug)]
enum Done {
    /// A fetch's outcome.
    Ready(Result<VodFile, VodError>),
    /// An eviction of the id finished: look again.
    Retry,
}

/// A fetch or an eviction under way for one id; its number tells it from a later one.
struct Flight {
    number: u64,
    done: watch::Receiver<Option<Done>>,
}

#[derive(Default)]
struct State {
    index: Index,
    busy: HashMap<VodId, Flight>,
    flights: u64,
}

impl State {
    /// Registers a flight for `id`; its number and sender.
    fn start_flight(&mut self, id: &VodId) -> (u64, watch::Sender<Option<Done>>) {
        self.flights += 1;
        let (tx, rx) = watch::channel(None);
        self.busy.insert(id.clone(), Flight { number: self.flights, done: rx });
        (self.flights, tx)
    }

    /// Ends flight `number` of `id` (not a later one).
    fn end_flight(&mut self, id: &VodId, number: u64) {
        if self.busy.get(id).is_some_and(|f| f.number == number) {
            self.busy.remove(id);
        }
    }
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    source: Arc<dyn Source>,
    /// Never held across an `.await` or a file-system call.
    state: Mutex<State>,
    /// Set once the index was rebuilt from the directory.
    loaded: OnceCell<()>,
    fetches: Arc<Semaphore>,
    stats: Arc<VodStats>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &VodId) -> PathBuf {
        self.dir.join(format!("{id}.flv"))
    }

    fn part_path(&self, id: &VodId) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn note_total(&self, state: &State) {
        self.stats.bytes.store(state.index.total, Ordering::Relaxed);
    }
}

/// The VOD cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct VodCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VodCache").field("dir", &self.inner.dir).field("max_bytes", &self.inner.max_bytes).finish()
    }
}

/// What one step of [`VodCache::open`] found under the lock.
enum Step {
    Hit(Entry),
    Wait(watch::Receiver<Option<Done>>),
    /// A miss nobody is fetching: this request starts the fetch (after the lock).
    Start(FlightGuard, watch::Sender<Option<Done>>, tokio::sync::OwnedSemaphorePermit),
}

impl VodCache {
    /// A cache in `dir` holding at most `max_bytes` of files, fetching from `source`.
    /// Touches nothing yet: the directory is read on the first [`VodCache::load`] or
    /// [`VodCache::open`].
    pub(crate) fn new(dir: PathBuf, max_bytes: u64, source: Arc<dyn Source>) -> VodCache {
        let inner = Inner {
            dir,
            max_bytes,
            source,
            state: Mutex::default(),
            loaded: OnceCell::new(),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            stats: Arc::default(),
        };
        VodCache { inner: Arc::new(inner) }
    }

    pub(crate) fn stats(&self) -> &Arc<VodStats> {
        &self.inner.stats
    }

    /// Rebuilds the index from the directory (created if missing), once: `.part`
    /// leftovers removed, files ordered by modification time, the oldest removed if
    /// they exceed the bound (lowered since the last run). Retried by the next call
    /// after an error.
    pub(crate) async fn load(&self) -> Result<(), VodError> {
        let inner = &self.inner;
        inner
            .loaded
            .get_or_try_init(|| async {
                let (dir, bound) = (inner.dir.clone(), inner.max_bytes);
                let scanned = tokio::task::spawn_blocking(move || scan(&dir, bound))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(format!("the scan task failed: {e}"))))
                    .map_err(|e| {
                        VodError::Unavailable(format!("cannot use the VOD cache {}: {e}", inner.dir.display()))
                    })?;
                inner.stats.evictions.fetch_add(scanned.evicted, Ordering::Relaxed);
                let mut state = inner.lock();
                state.index = scanned.index;
                inner.note_total(&state);
                tracing::info!(
                    dir = %inner.dir.display(), files = state.index.entries.len(), bytes = state.index.total,
                    evicted = scanned.evicted, "VOD cache loaded"
                );
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The whole file `id` on this edge's disk, fetched first if it is not here.
    pub(crate) async fn open(&self, id: &VodId) -> Result<VodFile, VodError> {
        self.load().await?;
        let inner = &self.inner;
        for _ in 0..MAX_ROUNDS {
            let step = {
                let mut state = inner.lock();
                if let Some(flight) = state.busy.get(id) {
                    Step::Wait(flight.done.clone())
                } else if let Some(entry) = state.index.touch(id) {
                    Step::Hit(entry)
                } else {
                    // A miss: this request starts the fetch, in a task of its own.
                    let Ok(permit) = inner.fetches.clone().try_acquire_owned() else {
                        return Err(VodError::Unavailable(format!(
                            "{MAX_FETCHES} files are being fetched already; try again shortly"
                        )));
                    };
                    let (number, tx) = state.start_flight(id);
                    Step::Start(FlightGuard { inner: inner.clone(), id: id.clone(), number }, tx, permit)
                }
            };
            let mut done = match step {
                Step::Start(flight, tx, permit) => {
                    let rx = tx.subscribe();
                    tokio::spawn(tracing::Instrument::in_current_span(fetch(flight, tx, permit)));
                    rx
                }
                Step::Wait(rx) => rx,
                Step::Hit(entry) => match open_kept(inner.path(id)).await {
                    Ok(Some((file, len))) => {
                        inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(VodFile { id: id.clone(), file: Arc::new(file), len });
                    }
                    Ok(None) => {
                        // Removed behind the cache's back (or evicted and fetched
                        // again meanwhile): forget this entry, not a newer one.
                        let mut state = inner.lock();
                        if state.index.entries.get(id).is_some_and(|e| e.generation == entry.generation) {
                            state.index.remove(id);
                            inner.note_total(&state);
                        }
                        continue;
                    }
                    Err(e) => return Err(VodError::Unavailable(format!("cannot open the cached file: {e}"))),
                },
            };
            let outcome = match done.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => None,
            };
            match outcome {
                Some(Done::Ready(result)) => {
                    inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                    return result;
                }
                // An eviction of this id finished: look again.
                Some(Done::Retry) => {}
                None => return Err(VodError::Unavailable("the fetch ended without an answer".into())),
            }
        }
        Err(VodError::Unavailable("the cache kept changing under the request".into()))
    }
}

/// Ends its flight in the index when dropped, even if the task panicked, so the id is
/// never left waiting on a flight nobody finishes.
struct FlightGuard {
    inner: Arc<Inner>,
    id: VodId,
    number: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.inner.lock().end_flight(&self.id, self.number);
    }
}

/// A fetch's task: asks the origins, keeps the file (evicting others) or serves it
/// unlinked, then tells every request waiting for it.
async fn fetch(flight: FlightGuard, tx: watch::Sender<Option<Done>>, _permit: tokio::sync::OwnedSemaphorePermit) {
    let inner = flight.inner.clone();
    let id = flight.id.clone();
    let outcome = match fetch_from_origins(&inner, &id).await {
        Ok((file, len)) => keep(&inner, &id, file, len).await,
        Err(e) => Err(e),
    };
    match &outcome {
        Ok(file) => tracing::debug!(vod.id = %id, bytes = file.len, "VOD file fetched"),
        Err(e) => {
            inner.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(vod.id = %id, error = %e, "VOD fetch failed");
        }
    }
    let victims = {
        let mut state = inner.lock();
        let victims = match &outcome {
            Ok(file) if file.len <= inner.max_bytes => {
                state.index.insert(id.clone(), file.len);
                let victims = state.index.over(inner.max_bytes);
                // Each victim is busy until its file is unlinked: a fetch of it now
                // would have its new file unlinked by this eviction.
                victims.into_iter().map(|v| (state.start_flight(&v), v)).collect::<Vec<_>>()
            }
            _ => Vec::new(),
        };
        inner.note_total(&state);
        // Ended under the same lock as the insert: nobody sees the id neither kept
        // nor busy and fetches it twice.
        state.end_flight(&id, flight.number);
        victims
    };
    let _ = tx.send(Some(Done::Ready(outcome)));
    if !victims.is_empty() {
        evict(&inner, victims).await;
    }
}

/// An evicted id, with its flight (number and sender) until its file is unlinked.
type Victim = ((u64, watch::Sender<Option<Done>>), VodId);

/// Unlinks the victims' files (on the blocking pool), then lets their ids be fetched
/// again.
async fn evict(inner: &Arc<Inner>, victims: Vec<Victim>) {
    inner.stats.evictions.fetch_add(victims.len() as u64, Ordering::Relaxed);
    let paths: Vec<PathBuf> = victims.iter().map(|(_, id)| inner.path(id)).collect();
    let unlinked = tokio::task::spawn_blocking(move || {
        for path in paths {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "an evicted VOD file could not be removed");
                }
            }
        }
    });
    let _ = unlinked.await;
    let mut state = inner.lock();
    for ((number, tx), id) in victims {
        tracing::debug!(vod.id = %id, "VOD file evicted");
        state.end_flight(&id, number);
        let _ = tx.send(Some(Done::Retry));
    }
}

/// A stable spread of ids over the origins: FNV-1a of the id as spelled.
fn first_origin(id: &VodId, origins: usize) -> usize {
    let hash =
        id.to_string().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % origins.max(1) as u64) as usize
}

/// Asks the origins in turn, from [`first_origin`], until one gives the whole file
/// into `{id}.part`: that file (open for reading, synced) and its length.
async fn fetch_from_origins(inner: &Inner, id: &VodId) -> Result<(std::fs::File, u64), VodError> {
    let n = inner.source.origins();
    if n == 0 {
        return Err(VodError::Unavailable("no origins to fetch from".into()));
    }
    let part = inner.part_path(id);
    let (mut unfinished, mut all_not_found, mut why) = (false, true, String::new());
    let first = first_origin(id, n);
    for at in (0..n).map(|i| (first + i) % n) {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, inner.source.fetch(at, id))
            .await
            .unwrap_or_else(|_| Answer::Failed(format!("no answer within {ANSWER_TIMEOUT:?}")));
        match answer {
            Answer::NotFound => continue,
            Answer::Unfinished => unfinished = true,
            Answer::Failed(e) => why = e,
            Answer::Body(chunks) => match write_part(&part, chunks, &inner.stats).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    why = e;
                    if let Err(e) = tokio::fs::remove_file(&part).await {
                        tracing::debug!(path = %part.display(), error = %e, "a cut .part file was not removed");
                    }
                }
            },
        }
        all_not_found = false;
        tracing::debug!(vod.id = %id, origin = at, why = %why, unfinished, "an origin did not give a VOD file");
    }
    if unfinished {
        Err(VodError::Unfinished)
    } else if all_not_found {
        Err(VodError::NotFound)
    } else {
        Err(VodError::Unavailable(why))
    }
}

/// Writes `chunks` into `part` (created or truncated), then syncs it: the file, open
/// for reading too, and its length. An `Err` chunk, a stall of [`CHUNK_TIMEOUT`] or a
/// disk error is an error (the caller removes the part).
async fn write_part(
    part: &Path,
    mut chunks: BoxStream<'static, Result<Bytes, String>>,
    stats: &VodStats,
) -> Result<(std::fs::File, u64), String> {
    let disk = |e: io::Error| format!("cannot write {}: {e}", part.display());
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .await
        .map_err(disk)?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut len = 0u64;
    loop {
        let chunk = match tokio::time::timeout(CHUNK_TIMEOUT, chunks.next()).await {
            Err(_) => return Err(format!("the body stalled for {CHUNK_TIMEOUT:?} after {len} bytes")),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(format!("the body was cut off after {len} bytes: {e}")),
            Ok(Some(Ok(chunk))) => chunk,
        };
        stats.fetched_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        len += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(disk)?;
    }
    out.flush().await.map_err(disk)?;
    let file = out.into_inner();
    file.sync_all().await.map_err(disk)?;
    Ok((file.into_std().await, len))
}

/// Keeps a fetched `.part`: renamed to `{id}.flv` (and the directory synced) when it
/// fits the bound; unlinked, and served from the open handle alone, when it does not.
async fn keep(inner: &Inner, id: &VodId, file: std::fs::File, len: u64) -> Result<VodFile, VodError> {
    let part = inner.part_path(id);
    let vod = VodFile { id: id.clone(), file: Arc::new(file), len };
    if len > inner.max_bytes {
        tracing::info!(vod.id = %id, bytes = len, bound = inner.max_bytes, "a VOD file larger than the cache is served once, not kept");
        tokio::fs::remove_file(&part)
            .await
            .map_err(|e| VodError::Unavailable(format!("cannot unlink {}: {e}", part.display())))?;
        return Ok(vod);
    }
    let (dir, path) = (inner.dir.clone(), inner.path(id));
    let renamed = tokio::task::spawn_blocking(move || {
        std::fs::rename(&part, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    });
    match renamed.await {
        Ok(Ok(())) => Ok(vod),
        Ok(Err(e)) => Err(VodError::Unavailable(format!("cannot keep the fetched file: {e}"))),
        Err(e) => Err(VodError::Unavailable(format!("the rename task failed: {e}"))),
    }
}

/// Opens a kept file and marks it used now (its modification time, which orders the
/// index rebuilt at start): the file and its length, or `None` when it is gone.
async fn open_kept(path: PathBuf) -> io::Result<Option<(std::fs::File, u64)>> {
    let opened = tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if let Err(e) = file.set_modified(SystemTime::now()) {
            tracing::debug!(path = %path.display(), error = %e, "cannot mark a VOD file used");
        }
        Ok(Some((file, len)))
    });
    opened.await.unwrap_or_else(|e| Err(io::Error::other(format!("an open task failed: {e}"))))
}

/// What [`scan`] found.
struct Scanned {
    index: Index,
    evicted: u64,
}

/// Rebuilds the index from `dir` (blocking; created if missing): `.part` files are
/// removed, `{id}.flv` files indexed oldest modification first, other names left
/// alone; the oldest are removed while the total exceeds `bound`.
fn scan(dir: &Path, bound: u64) -> io::Result<Scanned> {
    std::fs::create_dir_all(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".part") {
            tracing::info!(file = name, "removing a VOD fetch left unfinished");
            std::fs::remove_file(entry.path())?;
            continue;
        }
        let Some(id) = name.strip_suffix(".flv").and_then(|stem| VodId::parse(stem).ok()) else { continue };
        let meta = entry.metadata()?;
        found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), id, meta.len()));
    }
    found.sort();
    let mut index = Index::default();
    for (_, id, len) in found {
        index.insert(id, len);
    }
    let gone = index.over(bound);
    for id in &gone {
        std::fs::remove_file(dir.join(format!("{id}.flv")))?;
    }
    Ok(Scanned { index, evicted: gone.len() as u64 })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Origins as a map from origin number to the answers it gives: `Some(bytes)` the
    /// file, `None` a 404; `unfinished` ids get 409 everywhere; `cut` ids a body cut
    /// half-way. Counts fetches; `gate`, when set, holds every body until opened.
    #[derive(Default)]
    struct Fake {
        files: Vec<HashMap<VodId, Vec<u8>>>,
        unfinished: Vec<VodId>,
        cut: Vec<VodId>,
        fetches: AtomicUsize,
        gate: Option<watch::Receiver<bool>>,
    }

    impl Source for Fake {
        fn origins(&self) -> usize {
            self.files.len()
        }

        fn fetch(&self, at: usize, id: &VodId) -> BoxFuture<'static, Answer> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let file = self.files[at].get(id).cloned();
            let (unfinished, cut, gate) = (self.unfinished.contains(id), self.cut.contains(id), self.gate.clone());
            Box::pin(async move {
                if let Some(mut gate) = gate {
                    let _ = gate.wait_for(|open| *open).await;
                }
                match file {
                    _ if unfinished => Answer::Unfinished,
                    None => Answer::NotFound,
                    Some(bytes) if cut => {
                        let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
                        let chunks = vec![Ok(half), Err("reset".to_owned())];
                        Answer::Body(futures::stream::iter(chunks).boxed())
                    }
                    Some(bytes) => {
                        // Several small chunks, as a network gives them.
                        let chunks: Vec<_> = bytes.chunks(7).map(|c| Ok(Bytes::from(c.to_vec()))).collect();
                        Answer::Body(futures::stream::iter(chunks).boxed())
                    }
                }
            })
        }
    }

    fn lib(name: &str) -> VodId {
        VodId::Library(name.into())
    }

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    /// One origin holding `files`.
    fn one_origin(files: &[(&VodId, &[u8])]) -> Fake {
        Fake { files: vec![files.iter().map(|(id, b)| ((*id).clone(), b.to_vec())).collect()], ..Default::default() }
    }

    async fn read_all(file: &VodFile) -> Vec<u8> {
        file.read_at(0, file.len as usize).await.unwrap().to_vec()
    }

    fn kept(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_miss_fetches_the_whole_file_and_a_second_open_is_a_hit() {
        let dir = tempfile::tempdir().unwrap();
        let (a, content) = (lib("a"), bytes(1, 100));
        let fake = Arc::new(one_origin(&[(&a, content.as_slice())]));
        let cache = VodCache::new(dir.path().join("cache"), 1000, fake.clone());
        let file = cache.open(&a).await.unwrap();
        assert_eq!((file.len, read_all(&file).await), (100, content.clone()));
        let again = cache.open(&a).await.unwrap();
        assert_eq!(read_all(&again).await, content);
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1, "the second open is served from disk");
        let s = cache.stats();
        let counts = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((counts(&s.hits), counts(&s.misses), counts(&s.fetched_bytes), counts(&s.bytes)), (1, 1, 100, 100));
        assert_eq!(kept(&dir.path().join("cache")), ["lib-a.flv"]);
        assert_eq!(file.read_at(90, 10).await.unwrap().to_vec(), content[90..]);
        assert!(file.read_at(95, 10).await.is_err(), "a read past the end is an error, not short");
    }

    #[tokio::test]
    async fn errors_say_whether_the_file_is_missing_unfinished_or_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c, d) = (lib("a"), VodId::Recording(4), lib("c"), lib("d"));
        // d: whole at the second origin, missing at the first; c cut off there.
        let fake = Fake {
            files: vec![HashMap::new(), [(c.clone(), bytes(0, 50)), (d.clone(), bytes(0, 50))].into()],
            unfinished: vec![b.clone()],
            cut: vec![c.clone()],
            ..Default::default()
        };
        let fake = Arc::new(fake);
        let cache = VodCache::new(dir.path().to_owned(), 1000, fake);
        assert_eq!(cache.open(&a).await.unwrap_err(), VodError::NotFound);
        assert_eq!(cache.open(&b).await.unwrap_err(), VodError::Unfinished);
        let cut = cache.open(&c).await.unwrap_err();
        assert!(matches!(&cut, VodError::Unavailable(why) if why.contains("cut off")), "{cut}");
        assert_eq!(cache.open(&d).await.unwrap().len, 50);
        assert_eq!(kept(dir.path()), ["lib-d.flv"], "no .part left behind, nothing cut kept");
        assert_eq!(cache.stats().fetch_failures.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn the_least_recently_opened_go_first_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<VodId> = ["a", "b", "c", "d"].into_iter().map(lib).collect();
        let contents: Vec<Vec<u8>> = (0..4).map(|i| bytes(i, 40)).collect();
        let files: Vec<(&VodId, &[u8])> = ids.iter().zip(&contents).map(|(i, c)| (i, c.as_slice())).collect();
        let fake = Arc::new(one_origin(&files));
        let cache = VodCache::new(dir.path().to_owned(), 100, fake.clone());
        cache.open(&ids[0]).await.unwrap();
        cache.open(&ids[1]).await.unwrap();
        cache.open(&ids[0]).await.unwrap(); // a is now more recent than b
        cache.open(&ids[2]).await.unwrap(); // 120 > 100: b goes
        let evicted = |n| {
            let cache = cache.clone();
            async move {
                // The victim's unlink runs after the fetch answers: wait for it.
                for _ in 0..100 {
                    if cache.stats().evictions.load(Ordering::Relaxed) == n && cache.inner.lock().busy.is_empty() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("{n} evictions expected");
            }
        };
        evicted(1).await;
        assert_eq!(kept(dir.path()), ["lib-a.flv", "lib-c.flv"]);
        assert_eq!(cache.stats().bytes.load(Ordering::Relaxed), 80);
        cache.open(&ids[3]).await.unwrap(); // a goes (c is newer)
        evicted(2).await;
        assert_eq!(kept(dir.path()), ["lib-c.flv", "lib-d.flv"]);
        // b comes back from the origin.
        assert_eq!(read_all(&cache.open(&ids[1]).await.unwrap()).await, contents[1]);
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 5);
        evicted(3).await;
        assert!(cache.stats().bytes.load(Ordering::Relaxed) <= 100);
    }

    #[tokio::test]
    async fn an_evicted_file_stays_readable_while_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (lib("a"), lib("b"));
        let (ca, cb) = (bytes(1, 60), bytes(2, 60));
        let cache = VodCache::new(
            dir.path().to_owned(),
            100,
            Arc::new(one_origin(&[(&a, ca.as_slice()), (&b, cb.as_slice())])),
        );
        let held = cache.open(&a).await.unwrap();
        cache.open(&b).await.unwrap();
        for _ in 0..100 {
            if !dir.path().join("lib-a.flv").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(kept(dir.path()), ["lib-b.flv"]);
        assert_eq!(read_all(&held).await, ca);
    }

    #[tokio::test]
    async fn the_order_survives_a_restart_and_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<VodId> = ["a", "b", "c"].into_iter().map(lib).collect();
        let contents: Vec<Vec<u8>> = (0..3).map(|i| bytes(i, 40)).collect();
        let files: Vec<(&VodId, &[u8])> = ids.iter().zip(&contents).map(|(i, c)| (i, c.as_slice())).collect();
        {
            let cache = VodCache::new(dir.path().to_owned(), 100, Arc::new(one_origin(&files)));
            cache.open(&ids[0]).await.unwrap();
            cache.open(&ids[1]).await.unwrap();
            // Modification times are set from the clock: make the hit clearly later.
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.open(&ids[0]).await.unwrap(); // a is the most recent now
        }
        std::fs::write(dir.path().join("lib-x.part"), b"half").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
        let fake = Arc::new(one_origin(&files));
        let cache = VodCache::new(dir.path().to_owned(), 100, fake.clone());
        cache.load().await.unwrap();
        assert_eq!(kept(dir.path()), ["lib-a.flv", "lib-b.flv", "notes.txt"], ".part removed, the rest kept");
        assert_eq!(cache.stats().bytes.load(Ordering::Relaxed), 80);
        // a was opened after b before the restart: c's insert evicts b.
        cache.open(&ids[2]).await.unwrap();
        for _ in 0..100 {
            if !dir.path().join("lib-b.flv").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(kept(dir.path()), ["lib-a.flv", "lib-c.flv", "notes.txt"], "the older of a and b went");
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1, "a and b were not fetched again");
        // A hit after the restart counts too: a is newer than c now, so a lower bound at
        // the next start removes c at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(read_all(&cache.open(&ids[0]).await.unwrap()).await, contents[0], "a hit after the restart");
        let cache = VodCache::new(dir.path().to_owned(), 50, fake);
        cache.load().await.unwrap();
        assert_eq!(kept(dir.path()), ["lib-a.flv", "notes.txt"]);
        assert_eq!(cache.stats().evictions.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_id_share_one_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let (a, content) = (lib("a"), bytes(3, 500));
        let (open, gate) = watch::channel(false);
        let fake = Arc::new(Fake { gate: Some(gate), ..one_origin(&[(&a, content.as_slice())]) });
        let cache = VodCache::new(dir.path().to_owned(), 10_000, fake.clone());
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let (cache, a) = (cache.clone(), a.clone());
                tokio::spawn(async move { cache.open(&a).await })
            })
            .collect();
        // Every open is waiting on the one fetch, held at the gate.
        for _ in 0..100 {
            if fake.fetches.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        open.send(true).unwrap();
        for task in opens {
            assert_eq!(read_all(&task.await.unwrap().unwrap()).await, content);
        }
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1, "one fetch for eight misses");
        assert_eq!(cache.stats().misses.load(Ordering::Relaxed), 8);
        assert_eq!(cache.stats().fetched_bytes.load(Ordering::Relaxed), 500);
    }

    #[tokio::test]
    async fn a_file_larger_than_the_bound_is_served_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (big, small) = (lib("big"), lib("small"));
        let (cb, cs) = (bytes(5, 300), bytes(6, 50));
        let fake = Arc::new(one_origin(&[(&big, cb.as_slice()), (&small, cs.as_slice())]));
        let cache = VodCache::new(dir.path().to_owned(), 100, fake.clone());
        cache.open(&small).await.unwrap();
        let file = cache.open(&big).await.unwrap();
        assert_eq!(read_all(&file).await, cb);
        assert_eq!(kept(dir.path()), ["lib-small.flv"], "nothing evicted for it, nothing of it on disk");
        assert_eq!(cache.stats().bytes.load(Ordering::Relaxed), 50);
        assert_eq!(cache.stats().evictions.load(Ordering::Relaxed), 0);
        cache.open(&big).await.unwrap();
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 3, "fetched again each time");
    }

    #[test]
    fn origins_are_tried_from_a_place_that_depends_on_the_id() {
        let firsts: std::collections::BTreeSet<usize> =
            (0..64).map(|i| first_origin(&VodId::Recording(i), 3)).collect();
        assert_eq!(firsts.len(), 3, "ids spread over every origin");
        assert_eq!(first_origin(&lib("a"), 3), first_origin(&lib("a"), 3));
        assert_eq!(first_origin(&lib("a"), 0), 0);
    }
}
