//! Live rewind (DVR) on the edge (`docs/hls.md`, "Live rewind"): each packaged
//! stream's DVR index, kept fresh from the origins, and the old segments it lists,
//! fetched from the origins as frames, packaged here ([`dvr::package`]) and kept in a
//! bounded in-memory cache.
//!
//! - [`StreamIndex`]: one stream's index (sans-IO): what to ask for next, how often,
//!   what to keep (the span below the window, a bounded count);
//! - [`Dvr`]: the edge's side: the origins (in `--origins` order, with the cluster
//!   secret), the cache ([`Lru`], `--hls-dvr-cache-bytes`), single-flight fetches
//!   (at most [`MAX_FETCHES`] at once) and the counters.
//!
//! Only segments an index lists are ever fetched: a client cannot make the edge ask
//! the origins for an arbitrary number.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use prometheus_client::metrics::histogram::Histogram;
use raftcast_raft::StreamKey;
use reqwest::StatusCode;
use tokio::sync::Semaphore;

use crate::hls::dvr::{self, DvrSegment, MAX_INDEX, MAX_SEGMENT_BYTES};
use crate::peer::PeerClient;

/// Longest span (`--hls-dvr-secs`): six hours.
pub const MAX_DVR_SECS: u64 = 6 * 3600;
/// Default of `--hls-dvr-cache-bytes`.
pub const DEFAULT_DVR_CACHE_BYTES: usize = 128 << 20;
/// Segment fetches from the origins in flight at once, per edge.
pub const MAX_FETCHES: usize = 8;
/// How long a fetch waits for one of the [`MAX_FETCHES`] before it is a 503.
const FETCH_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// One origin's answer for a segment's frames must come within this.
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// One origin's answer for an index must come within this.
const INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// Index entries one stream keeps at most (40 bytes each: 640 KiB), whatever the span.
pub const MAX_KEPT: usize = 2 * MAX_INDEX;
/// An index is asked for at most this often per stream.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// After failures, the wait before the next try doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Live rewind's settings (`--hls-dvr-secs`, `--hls-dvr-cache-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DvrSettings {
    /// How far back the playlist lists, ms; 0: off.
    pub span_ms: u64,
    /// Bytes of packaged segments and init segments kept.
    pub cache_bytes: usize,
}

impl Default for DvrSettings {
    fn default() -> Self {
        DvrSettings { span_ms: 0, cache_bytes: DEFAULT_DVR_CACHE_BYTES }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stream's DVR index on this edge, and when to ask for more. Sans-IO: the caller
/// gives the time and does the asking.
#[derive(Debug, Default)]
pub struct StreamIndex {
    /// Increasing msn; shared with the playlists being rendered (replaced, never
    /// changed in place).
    entries: Arc<Vec<DvrSegment>>,
    /// The next index answer starts here: one past the highest msn seen.
    cursor: u64,
    fetching: bool,
    /// No fetch before this.
    not_before: Option<Instant>,
    failures: u32,
    /// An answer came at least once.
    loaded: bool,
}

impl StreamIndex {
    pub fn entries(&self) -> Arc<Vec<DvrSegment>> {
        self.entries.clone()
    }

    /// The entry of segment `msn`, if the index lists it.
    pub fn entry(&self, msn: u64) -> Option<DvrSegment> {
        self.entries.binary_search_by_key(&msn, |s| s.msn).ok().map(|at| self.entries[at])
    }

    /// The newest entry whose media needs init segment `version`.
    pub fn with_init(&self, version: u32) -> Option<DvrSegment> {
        self.entries.iter().rev().find(|s| s.init_version == version).copied()
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    pub fn is_fetching(&self) -> bool {
        self.fetching
    }

    /// Starts a fetch if none is under way and the last one is far enough back:
    /// `Some(from)`, the `?from=` to ask for.
    pub fn begin(&mut self, now: Instant) -> Option<u64> {
        if self.fetching || self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        self.fetching = true;
        Some(self.cursor)
    }

    /// The answer to the fetch [`StreamIndex::begin`] started: new entries past the
    /// cursor are added while they follow on (consecutive numbers); at a hole the index
    /// waits for it to be filled (by a later answer, or by the window's own segments,
    /// `bridge`) unless the window is past it already, when the index starts over after
    /// it. Then trimmed to what a playlist of `span_ms` before a window starting at
    /// `window_first` can list.
    pub fn answered(&mut self, now: Instant, new: Vec<DvrSegment>, window_first: Option<u64>, span_ms: u64) {
        self.fetching = false;
        self.loaded = true;
        self.failures = 0;
        self.not_before = Some(now + REFRESH_EVERY);
        // In place unless a playlist being rendered holds the entries now.
        let entries = Arc::make_mut(&mut self.entries);
        for s in new {
            if s.msn < self.cursor {
                continue;
            }
            match entries.last() {
                Some(l) if l.msn.checked_add(1) != Some(s.msn) => {
                    if window_first.is_some_and(|first| s.msn <= first) {
                        // The window is past the hole: nothing will fill it (the window
                        // would have, `bridge`), so the run starts over after it.
                        entries.clear();
                    } else {
                        // A hole the index may fill later (the last segment of a piece
                        // being finished): asked again from there, nothing skipped.
                        break;
                    }
                }
                _ => {}
            }
            self.cursor = s.msn.saturating_add(1);
            entries.push(s);
        }
        trim(entries, window_first, span_ms);
    }

    /// Segments the stream's window let go, in order: each that extends the index by
    /// the next number is added (the index lagging behind the window would otherwise
    /// break the run from the window, and a playlist never lists below what it
    /// served). They are the same facts an origin lists for them: the same frames and
    /// marks, packaged alike. An index never answered, or empty (the stream is not
    /// recorded), gets none.
    pub fn bridge(&mut self, evicted: Vec<DvrSegment>) {
        let entries = Arc::make_mut(&mut self.entries);
        for s in evicted {
            if self.loaded
                && s.msn >= self.cursor
                && entries.last().is_some_and(|l| l.msn.checked_add(1) == Some(s.msn))
            {
                self.cursor = s.msn.saturating_add(1);
                entries.push(s);
            }
        }
        if entries.len() > MAX_KEPT {
            entries.drain(..entries.len() - (MAX_KEPT - TRIM_SLACK));
        }
    }

    /// The fetch failed on every origin: back off (2 s, doubling, at most 30 s).
    pub fn failed(&mut self, now: Instant) {
        self.fetching = false;
        self.failures = self.failures.saturating_add(1);
        let backoff = REFRESH_EVERY.saturating_mul(1 << self.failures.min(5)).min(MAX_BACKOFF);
        self.not_before = Some(now + backoff);
    }
}

/// Drops the entries no playlist of `span_ms` can list any more: below the window,
/// only the newest whose durations add up to at most the span stay (a playlist lists
/// no more); the window's and newer ones stay (they are listed once the window moves
/// past them). At most [`MAX_KEPT`] in all, the newest. Entries go [`TRIM_SLACK`]
/// at a time (a playlist lists by the span anyway): not one memmove of the whole
/// index per segment.
pub fn trim(entries: &mut Vec<DvrSegment>, window_first: Option<u64>, span_ms: u64) {
    if let Some(first) = window_first {
        let below = entries.partition_point(|s| s.msn < first);
        let (mut keep_from, mut sum) = (below, 0u64);
        while keep_from > 0 && sum + u64::from(entries[keep_from - 1].duration_ms) <= span_ms {
            sum += u64::from(entries[keep_from - 1].duration_ms);
            keep_from -= 1;
        }
        if keep_from >= TRIM_SLACK || keep_from == entries.len() {
            entries.drain(..keep_from);
        }
    }
    if entries.len() > MAX_KEPT {
        entries.drain(..entries.len() - (MAX_KEPT - TRIM_SLACK));
    }
}

/// Entries let go at once, at least (see [`trim`]).
const TRIM_SLACK: usize = 64;

/// Why a DVR segment could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DvrFail {
    /// Every origin answered 404 (404).
    #[error("no origin has this DVR segment")]
    NotFound,
    /// No origin answered in time, or too many fetches already (503).
    #[error("the DVR segment is unavailable for now")]
    Unavailable,
    /// What the origins sent did not make the segment the index lists (502).
    #[error("the origins' frames do not make the listed DVR segment")]
    Bad,
}

/// A cached item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Segment(StreamKey, u64),
    Init(StreamKey, u32),
}

/// Bytes by key, least recently used out beyond a byte bound.
#[derive(Debug)]
struct Lru {
    items: HashMap<CacheKey, (Bytes, u64)>,
    /// Last use → key.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
    max: usize,
}

impl Lru {
    fn new(max: usize) -> Lru {
        Lru { items: HashMap::new(), order: BTreeMap::new(), tick: 0, bytes: 0, max }
    }

    fn get(&mut self, key: &CacheKey) -> Option<Bytes> {
        self.tick += 1;
        let (bytes, used) = self.items.get_mut(key)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, key.clone());
        Some(bytes.clone())
    }

    /// Keeps `bytes` under `key` (one larger than the bound is not kept).
    fn insert(&mut self, key: CacheKey, bytes: Bytes) {
        if bytes.len() > self.max {
            return;
        }
        self.tick += 1;
        self.bytes += bytes.len();
        if let Some((old, used)) = self.items.insert(key.clone(), (bytes, self.tick)) {
            self.bytes -= old.len();
            self.order.remove(&used);
        }
        self.order.insert(self.tick, key);
        while self.bytes > self.max {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some((old, _)) = self.items.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
    }
}

/// Outcomes of DVR requests, for `/metrics`.
pub const OUTCOMES: [&str; 3] = ["hit", "fetched", "failed"];
/// What was asked: a segment or an init segment.
pub const DVR_KINDS: [&str; 2] = ["segment", "init"];

/// DVR counters of an edge.
#[derive(Debug)]
pub struct DvrStats {
    /// By [`DVR_KINDS`] and [`OUTCOMES`].
    requests: [[AtomicU64; OUTCOMES.len()]; DVR_KINDS.len()],
    /// Index fetches that got an answer, and those that failed on every origin.
    pub index_ok: AtomicU64,
    pub index_failed: AtomicU64,
    /// Each origin request for a segment's frames, seconds.
    pub fetch_seconds: Histogram,
    /// Bytes cached now.
    pub cache_bytes: AtomicU64,
}

impl Default for DvrStats {
    fn default() -> Self {
        DvrStats {
            requests: Default::default(),
            index_ok: AtomicU64::new(0),
            index_failed: AtomicU64::new(0),
            fetch_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            cache_bytes: AtomicU64::new(0),
        }
    }
}

impl DvrStats {
    fn count(&self, kind: usize, outcome: usize) {
        self.requests[kind][outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests so far of `kind` with `outcome`.
    pub fn requests(&self, kind: &str, outcome: &str) -> u64 {
        let k = DVR_KINDS.iter().position(|k| *k == kind);
        let o = OUTCOMES.iter().position(|o| *o == outcome);
        k.zip(o).map_or(0, |(k, o)| self.requests[k][o].load(Ordering::Relaxed))
    }
}

const KIND_SEGMENT: usize = 0;
const KIND_INIT: usize = 1;
const HIT: usize = 0;
const FETCHED: usize = 1;
const FAILED: usize = 2;

/// One segment packaged from the origins' frames: its bytes and its init segment's.
#[derive(Debug, Clone)]
struct Packaged {
    bytes: Bytes,
    init_version: u32,
    init: Bytes,
}

type Flight = Shared<BoxFuture<'static, Result<Packaged, DvrFail>>>;

/// Removes a fetch from [`Dvr::flights`] when dropped.
struct Landed {
    dvr: Arc<Dvr>,
    key: (StreamKey, u64),
}

impl Drop for Landed {
    fn drop(&mut self) {
        lock(&self.dvr.flights).remove(&self.key);
    }
}

/// The DVR side of an edge: origins, cache, fetches in flight, counters.
pub struct Dvr {
    settings: DvrSettings,
    peers: PeerClient,
    origins: Arc<[SocketAddr]>,
    cache: Mutex<Lru>,
    flights: Mutex<HashMap<(StreamKey, u64), Flight>>,
    fetches: Arc<Semaphore>,
    pub stats: DvrStats,
}

impl std::fmt::Debug for Dvr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dvr").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Dvr {
    pub fn new(settings: DvrSettings, peers: PeerClient, origins: Arc<[SocketAddr]>) -> Arc<Dvr> {
        Arc::new(Dvr {
            settings,
            peers,
            origins,
            cache: Mutex::new(Lru::new(settings.cache_bytes)),
            flights: Mutex::default(),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            stats: DvrStats::default(),
        })
    }

    pub fn span_ms(&self) -> u64 {
        self.settings.span_ms
    }

    /// The stream's index from `from` on: the first origin (in `--origins` order) that
    /// answers 200; empty when every one answered 404 (no recording); `Err` when none
    /// answered.
    pub async fn fetch_index(&self, key: &StreamKey, from: u64) -> Result<Vec<DvrSegment>, DvrFail> {
        let (mut found, mut missing) = (None, 0);
        for origin in self.origins.iter() {
            let url = self.peers.url(origin, &dvr::index_path(key, from));
            match self.peers.get(url).timeout(INDEX_TIMEOUT).send().await {
                Ok(res) if res.status() == StatusCode::OK => {
                    let body = crate::peer::body_within(res, 4 + MAX_INDEX * 40).await;
                    match body.ok().map(|b| dvr::decode_index(Bytes::from(b))) {
                        Some(Ok(entries)) => {
                            found = Some(entries);
                            break;
                        }
                        other => tracing::debug!(%origin, ?other, "DVR index refused"),
                    }
                }
                Ok(res) if res.status() == StatusCode::NOT_FOUND => missing += 1,
                Ok(res) => tracing::debug!(%origin, status = %res.status(), "DVR index not answered"),
                Err(e) => tracing::debug!(%origin, error = %e, "DVR index not answered"),
            }
        }
        match found {
            Some(entries) => Ok(entries),
            None if missing == self.origins.len() => Ok(Vec::new()),
            None => Err(DvrFail::Unavailable),
        }
    }

    /// Segment `entry` of `key`: from the cache, else fetched (one fetch per segment
    /// however many ask) and cached.
    pub async fn segment(self: &Arc<Self>, key: &StreamKey, entry: DvrSegment) -> Result<Bytes, DvrFail> {
        self.get(key, entry, KIND_SEGMENT).await.map(|(segment, _)| segment)
    }

    /// Init segment `version` of `key`: from the cache, else by packaging `entry` (a
    /// listed segment that needs it).
    pub async fn init(self: &Arc<Self>, key: &StreamKey, version: u32, entry: DvrSegment) -> Result<Bytes, DvrFail> {
        if let Some(init) = self.cached(&CacheKey::Init(key.clone(), version)) {
            self.stats.count(KIND_INIT, HIT);
            return Ok(init);
        }
        self.get(key, entry, KIND_INIT).await.and_then(|(_, init)| init.ok_or(DvrFail::Bad))
    }

    fn cached(&self, key: &CacheKey) -> Option<Bytes> {
        lock(&self.cache).get(key)
    }

    /// The segment's bytes, and the init segment `entry.init_version` if it was
    /// packaged with it (not when the segment came from the cache).
    async fn get(
        self: &Arc<Self>,
        key: &StreamKey,
        entry: DvrSegment,
        kind: usize,
    ) -> Result<(Bytes, Option<Bytes>), DvrFail> {
        let flight = {
            // The cache is looked at under the flights' lock, which a fetch takes to
            // cache its result and leave: a miss here is never a fetch just done.
            let mut flights = lock(&self.flights);
            let segment_key = CacheKey::Segment(key.clone(), entry.msn);
            if kind == KIND_SEGMENT {
                if let Some(bytes) = self.cached(&segment_key) {
                    self.stats.count(kind, HIT);
                    return Ok((bytes, None));
                }
            }
            flights
                .entry((key.clone(), entry.msn))
                .or_insert_with(|| {
                    let (dvr, key) = (self.clone(), key.clone());
                    let task = tokio::spawn(async move {
                        // Out of the flights however the fetch ends (a panic included),
                        // after its result is cached.
                        let _landed = Landed { dvr: dvr.clone(), key: (key.clone(), entry.msn) };
                        let result = dvr.fetch(&key, entry).await;
                        if let Ok(p) = &result {
                            let mut cache = lock(&dvr.cache);
                            cache.insert(CacheKey::Segment(key.clone(), entry.msn), p.bytes.clone());
                            cache.insert(CacheKey::Init(key.clone(), p.init_version), p.init.clone());
                            dvr.stats.cache_bytes.store(cache.bytes as u64, Ordering::Relaxed);
                        }
                        result
                    });
                    async move { task.await.unwrap_or(Err(DvrFail::Unavailable)) }.boxed().shared()
                })
                .clone()
        };
        let result = flight.await;
        self.stats.count(kind, if result.is_ok() { FETCHED } else { FAILED });
        let p = result?;
        let init = (p.init_version == entry.init_version).then_some(p.init);
        Ok((p.bytes, init))
    }

    /// Fetches and packages one segment, origin after origin, holding one of the
    /// [`MAX_FETCHES`].
    async fn fetch(&self, key: &StreamKey, entry: DvrSegment) -> Result<Packaged, DvrFail> {
        let Ok(Ok(_permit)) = tokio::time::timeout(FETCH_QUEUE_WAIT, self.fetches.clone().acquire_owned()).await else {
            return Err(DvrFail::Unavailable);
        };
        let (mut bad, mut missing) = (false, 0);
        for origin in self.origins.iter() {
            let started = Instant::now();
            let url = self.peers.url(origin, &dvr::segment_path(key, entry.msn));
            let answer = match self.peers.get(url).timeout(SEGMENT_TIMEOUT).send().await {
                Ok(res) if res.status() == StatusCode::OK => {
                    crate::peer::body_within(res, MAX_SEGMENT_BYTES).await.map(Some).map_err(|e| e.to_string())
                }
                Ok(res) if res.status() == StatusCode::NOT_FOUND => Ok(None),
                Ok(res) => Err(format!("answered {}", res.status())),
                Err(e) => Err(e.to_string()),
            };
            self.stats.fetch_seconds.observe(started.elapsed().as_secs_f64());
            let body = match answer {
                Ok(Some(body)) => body,
                Ok(None) => {
                    missing += 1;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%origin, stream = %key, msn = entry.msn, error = %e, "DVR segment not fetched");
                    continue;
                }
            };
            let media = dvr::decode_frames(Bytes::from(body)).ok().and_then(|frames| dvr::package(entry.msn, &frames));
            match media {
                Some(m) if m.duration_ms == entry.duration_ms => {
                    return Ok(Packaged { bytes: m.bytes, init_version: m.init.version, init: m.init.bytes })
                }
                other => {
                    let duration = other.map(|m| m.duration_ms);
                    tracing::warn!(%origin, stream = %key, msn = entry.msn, listed = entry.duration_ms, ?duration,
                        "an origin's DVR frames do not make the listed segment");
                    bad = true;
                }
            }
        }
        Err(if bad {
            DvrFail::Bad
        } else if missing == self.origins.len() {
            DvrFail::NotFound
        } else {
            DvrFail::Unavailable
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(msn: u64) -> DvrSegment {
        DvrSegment {
            msn,
            duration_ms: 2000,
            discontinuity: 0,
            wall_ms: msn * 2000,
            init_version: 1,
            target_ms: 2000,
            part_target_ms: 500,
        }
    }

    #[test]
    fn an_index_asks_once_at_a_time_and_backs_off_after_failures() {
        let t0 = Instant::now();
        let mut ix = StreamIndex::default();
        assert_eq!(ix.begin(t0), Some(0));
        assert_eq!(ix.begin(t0), None, "one fetch in flight");
        ix.answered(t0, (0..10).map(seg).collect(), Some(8), 60_000);
        assert!(ix.is_loaded());
        assert_eq!(ix.begin(t0 + Duration::from_millis(500)), None, "at most once a second");
        assert_eq!(ix.begin(t0 + Duration::from_secs(1)), Some(10), "from the last known + 1");
        ix.failed(t0 + Duration::from_secs(1));
        assert_eq!(ix.begin(t0 + Duration::from_secs(2)), None, "backing off");
        assert_eq!(ix.begin(t0 + Duration::from_secs(3)), Some(10));
        ix.failed(t0);
        ix.begin(t0 + Duration::from_secs(4)).unwrap();
        for _ in 0..10 {
            ix.failed(t0);
        }
        assert_eq!(ix.begin(t0 + Duration::from_secs(29)), None);
        assert!(ix.begin(t0 + Duration::from_secs(30)).is_some(), "at most 30 s");
        // Old and repeated entries are ignored; new ones appended.
        ix.answered(t0, (5..14).map(seg).collect(), Some(8), 60_000);
        assert_eq!(ix.entries().iter().map(|s| s.msn).collect::<Vec<_>>(), (0..14).collect::<Vec<_>>());
        assert_eq!(ix.entry(13), Some(seg(13)));
        assert_eq!(ix.entry(14), None);
    }

    #[test]
    fn a_hole_in_an_answer_waits_unless_the_window_is_past_it() {
        let t0 = Instant::now();
        let mut ix = StreamIndex::default();
        ix.begin(t0).unwrap();
        ix.answered(t0, (0..5).map(seg).collect(), Some(6), 60_000);
        // 5 is missing (a piece not finished yet), the window starts at 5: wait for it.
        ix.begin(t0 + Duration::from_secs(1)).unwrap();
        ix.answered(t0, (6..8).map(seg).collect(), Some(5), 60_000);
        assert_eq!(ix.entries().len(), 5);
        assert_eq!(ix.begin(t0 + Duration::from_secs(2)), Some(5), "asked again from the hole");
        ix.answered(t0, (5..9).map(seg).collect(), Some(6), 60_000);
        assert_eq!(ix.entries().iter().map(|s| s.msn).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        // 9 and 10 missing for good: the window is at 12 already. After the hole.
        ix.begin(t0 + Duration::from_secs(3)).unwrap();
        ix.answered(t0, (11..14).map(seg).collect(), Some(12), 60_000);
        assert_eq!(ix.entries().iter().map(|s| s.msn).collect::<Vec<_>>(), (11..14).collect::<Vec<_>>());
    }

    #[test]
    fn segments_the_window_lets_go_extend_an_index_that_lags() {
        let t0 = Instant::now();
        let mut ix = StreamIndex::default();
        // Not answered yet: nothing is bridged (the stream may not be recorded).
        ix.bridge(vec![seg(3)]);
        assert!(ix.entries().is_empty());
        ix.begin(t0).unwrap();
        ix.answered(t0, (0..5).map(seg).collect(), None, 60_000);
        // The next numbers extend it; a gap or an old number does not.
        ix.bridge(vec![seg(5), seg(6)]);
        ix.bridge(vec![seg(4), seg(8)]);
        assert_eq!(ix.entries().iter().map(|s| s.msn).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
        // The next answer goes on from there, its own 5 and 6 not taken twice.
        assert_eq!(ix.begin(t0 + Duration::from_secs(1)), Some(7));
        ix.answered(t0, (5..9).map(seg).collect(), None, 60_000);
        assert_eq!(ix.entries().iter().map(|s| s.msn).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        // An empty index (no recording) gets nothing from the window.
        let mut empty = StreamIndex::default();
        empty.begin(t0).unwrap();
        empty.answered(t0, Vec::new(), None, 60_000);
        empty.bridge(vec![seg(0)]);
        assert!(empty.entries().is_empty());
    }

    #[test]
    fn an_index_keeps_what_the_span_can_list() {
        let mut entries: Vec<DvrSegment> = (0..100).map(seg).collect();
        // Window from 90, span 10 s: five below it, and the window's.
        trim(&mut entries, Some(90), 10_000);
        assert_eq!(entries.first().map(|s| s.msn), Some(85));
        assert_eq!(entries.len(), 15);
        // One more segment: too few to let go of yet (the playlist trims by the span).
        entries.push(seg(100));
        trim(&mut entries, Some(91), 10_000);
        assert_eq!(entries.first().map(|s| s.msn), Some(85));
        assert_eq!(crate::hls::playlist::dvr_run(&entries, 91, 10_000, 0, u64::MAX)[0].msn, 86);
        // No window: only the count bound.
        let mut many: Vec<DvrSegment> = (0..MAX_KEPT as u64 + 5).map(seg).collect();
        trim(&mut many, None, u64::MAX);
        assert_eq!(many.len(), MAX_KEPT - TRIM_SLACK);
        assert_eq!(many.last().map(|s| s.msn), Some(MAX_KEPT as u64 + 4));
    }

    #[test]
    fn the_cache_lets_the_least_recently_used_go() {
        let key = |msn| CacheKey::Segment(StreamKey::new("live", "a").unwrap(), msn);
        let mut lru = Lru::new(100);
        lru.insert(key(1), Bytes::from(vec![1; 40]));
        lru.insert(key(2), Bytes::from(vec![2; 40]));
        assert!(lru.get(&key(1)).is_some());
        lru.insert(key(3), Bytes::from(vec![3; 40]));
        assert!(lru.get(&key(2)).is_none(), "2 was used least recently");
        assert!(lru.get(&key(1)).is_some() && lru.get(&key(3)).is_some());
        assert_eq!(lru.bytes, 80);
        lru.insert(key(4), Bytes::from(vec![4; 101]));
        assert!(lru.get(&key(4)).is_none(), "larger than the bound: not kept");
        lru.insert(key(1), Bytes::from(vec![1; 10]));
        assert_eq!(lru.bytes, 50);
    }
}
