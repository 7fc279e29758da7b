//! HLS and LL-HLS on the edge: the routes under `/{app}/{name}/` and one packaging
//! task per stream that someone asks for.
//!
//! - Routes: `index.m3u8` (the media playlist, with blocking reloads `_HLS_msn` /
//!   `_HLS_part`), `init-{v}.mp4`, `seg-{msn}.m4s`, `part-{msn}.{i}.m4s`; names are
//!   parsed strictly (one spelling per resource), anything else is a 404. Segments,
//!   parts and init segments are immutable for caches; playlists live at most a part
//!   target; blocking answers and errors are `no-store`. CORS for browser players.
//! - Tokens: when the app requires play tokens, a playlist needs one (`?token=` or
//!   `Authorization: Bearer`) and lists every URI with `?st=` and the stream's segment
//!   token (the same on every edge); media needs that `st` or a play token. Refused
//!   before the stream is entered (401, 403, 503; `docs/tokens.md`).
//! - Streams: the first request for a stream starts its task ([`Feed`]): it joins the
//!   stream's relay, follows its hub across publishing generations, pushes every frame
//!   through a [`Packager`] and feeds the stream's [`Window`]. It stops, dropping the
//!   relay lease and the window, once no request came for `--hls-idle-ms`. Its lease
//!   is an HLS one: only while it is held does the relay keep the stream's window of
//!   frames (a stream relayed to RTMP and HTTP-FLV players only holds none).
//! - Caps: a request that waits (for a new stream, a blocking reload, the hinted part)
//!   holds a long-request permit (per address, like HTTP-FLV and SSE) and one of
//!   `--hls-max-waiting` in all; over either it gets 429. At most `--hls-max-streams`
//!   streams are packaged at once.
//!
//! Never knows the packager's formats or how marks are made.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use raftcast_raft::token::StreamRight::Play;
use raftcast_raft::StreamKey;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dvr::{Dvr, DvrFail, DvrSettings, DvrStats, StreamIndex, DVR_KINDS, OUTCOMES};
use super::tokens::{self, Protocol, Refusals, StreamAuthError, Verifier};
use super::EdgeContext;
use crate::hls::dvr::DvrSegment;
use crate::hls::packager::Packager;
use crate::hls::playlist::{self, DvrLines, Rewind};
use crate::hls::window::{Change, Found, Reload, Window, WindowLimits};
use crate::hls::Packaged;
use crate::limits::{Limit, Permit, Refused};
use crate::media::Hub;

/// How long caches may keep a segment, part or init segment, in seconds. A URI never
/// names other media (the numbering never goes back), so this only needs to outlast
/// the window; it is short enough that a cluster restarted from nothing does not meet
/// stale entries for long.
const MEDIA_MAX_AGE_S: u64 = 600;
/// How long a blocking request waits, in target durations (RFC 8216bis 6.2.5.2: then
/// the playlist is answered as it is; a part or segment that did not come is a 404).
const BLOCK_TARGETS: u32 = 3;
/// Longest name of a resource under `/{app}/{name}/` worth parsing.
const MAX_NAME: usize = 64;
/// How long a request for an old segment waits for the stream's first DVR index.
const DVR_INDEX_WAIT: Duration = Duration::from_secs(2);

/// HLS settings of an edge (`--hls-*`).
#[derive(Debug, Clone)]
pub struct HlsConfig {
    /// What each stream's window keeps (`--hls-window-segments`, `--hls-window-bytes`).
    pub window: WindowLimits,
    /// A stream nobody asked for in this long stops being packaged (`--hls-idle-ms`).
    pub idle: Duration,
    /// How long a request for a stream that has no segment yet waits for one
    /// (`--play-wait-ms`), then 404.
    pub stream_wait: Duration,
    /// Requests waiting at once, in all (`--hls-max-waiting`).
    pub max_waiting: usize,
    /// Streams packaged at once (`--hls-max-streams`).
    pub max_streams: usize,
    /// Live rewind (`--hls-dvr-secs`, `--hls-dvr-cache-bytes`).
    pub dvr: DvrSettings,
}

/// What starts feeding a new stream's window; the edge's is [`RelayFeed`].
pub trait Feed: Send + Sync + 'static {
    fn start(&self, hls: Arc<Hls>, stream: Arc<HlsStream>);
}

/// The HLS streams of one edge and their counters.
pub struct Hls {
    config: HlsConfig,
    streams: Mutex<HashMap<StreamKey, Arc<HlsStream>>>,
    pub stats: HlsStats,
    /// Requests waiting (global cap `--hls-max-waiting`; the per-address cap is the
    /// long-request one).
    pub waiting: Arc<Limit>,
    /// Time base of [`HlsStream`]'s last-use stamps.
    base: Instant,
    /// Live rewind, when on (`--hls-dvr-secs`).
    pub dvr: Option<Arc<Dvr>>,
}

/// One packaged stream.
pub struct HlsStream {
    pub key: StreamKey,
    window: Mutex<Window>,
    /// Bumped when a part, segment or init segment completes: blocked requests wait on it.
    changed: watch::Sender<u64>,
    /// ms since [`Hls::base`] of the last request.
    last_used: AtomicU64,
    /// The window's part count already added to [`HlsStats::parts`].
    counted_parts: AtomicU64,
    /// Requests being answered now: a stream is never retired under one.
    active: AtomicUsize,
    /// Cancelled when the stream is retired: its task ends.
    pub stop: CancellationToken,
    /// The stream's DVR index (empty while live rewind is off).
    dvr: Mutex<StreamIndex>,
    /// Bumped when an index fetch ends: a request for a segment the index may list
    /// waits on it.
    dvr_done: watch::Sender<u64>,
    /// The highest `EXT-X-MEDIA-SEQUENCE` served: no later playlist lists below it
    /// (an index that fell behind the window and caught up again would otherwise put
    /// older segments back in front).
    dvr_floor: AtomicU64,
    /// The DVR lines of the last playlist, reused while its run and query stay.
    dvr_lines: Mutex<DvrLines>,
}

/// One packaged stream as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    pub stream: StreamKey,
    /// First and last listed segment numbers (the last is the open one's).
    pub listed: Option<(u64, u64)>,
    /// The newest part, (msn, index).
    pub last_part: Option<(u64, u32)>,
    /// Bytes its window holds.
    pub bytes: usize,
}

/// The resources under `/{app}/{name}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Playlist,
    Init(u32),
    Segment(u64),
    Part(u64, u32),
}

/// Request kinds for `/metrics`.
const KINDS: [&str; 6] = ["playlist", "init", "segment", "part", "options", "invalid"];
/// Statuses counted for `/metrics`; anything else is counted as `other`.
const STATUSES: [u16; 10] = [200, 204, 400, 401, 403, 404, 429, 502, 503, 0];

/// HLS counters of an edge.
#[derive(Debug, Default)]
pub struct HlsStats {
    /// Bytes held by every stream's window.
    pub window_bytes: AtomicU64,
    pub parts: AtomicU64,
    pub segments: AtomicU64,
    /// Bytes of playlists, segments and parts answered (the body sizes).
    pub bytes_served: AtomicU64,
    requests: [[AtomicU64; STATUSES.len()]; KINDS.len()],
}

impl HlsStats {
    fn count(&self, kind: usize, status: StatusCode) {
        let at = STATUSES.iter().position(|s| *s == status.as_u16()).unwrap_or(STATUSES.len() - 1);
        self.requests[kind][at].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered so far with this kind and status.
    #[cfg(test)]
    pub fn requests(&self, kind: &str, status: u16) -> u64 {
        let k = KINDS.iter().position(|k| *k == kind);
        let s = STATUSES.iter().position(|s| *s == status);
        k.zip(s).map_or(0, |(k, s)| self.requests[k][s].load(Ordering::Relaxed))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hls {
    /// Without live rewind.
    #[cfg(test)]
    pub fn new(config: HlsConfig) -> Arc<Hls> {
        Hls::with_dvr(config, None)
    }

    /// With live rewind through `dvr` (`None`: off).
    pub fn with_dvr(config: HlsConfig, dvr: Option<Arc<Dvr>>) -> Arc<Hls> {
        let waiting = Limit::new("hls_waiting", config.max_waiting, config.max_waiting);
        let (streams, stats, base) = (Mutex::default(), HlsStats::default(), Instant::now());
        Arc::new(Hls { config, streams, stats, waiting, base, dvr })
    }

    /// Starts fetching `stream`'s DVR index from where it stands, unless live rewind
    /// is off, a fetch is under way or the last one was less than a second ago (or
    /// failed, then backing off). Whether a fetch is under way now.
    pub fn refresh_dvr(self: &Arc<Self>, stream: &Arc<HlsStream>) -> bool {
        let Some(dvr) = self.dvr.clone() else { return false };
        let from = {
            let mut index = stream.dvr_index();
            match index.begin(Instant::now()) {
                Some(from) => from,
                None => return index.is_fetching(),
            }
        };
        let stream = stream.clone();
        tokio::spawn(async move { index_answer(&dvr, &stream, from).await });
        true
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The stream `key`, started through `feed` if it is not packaged yet; `None` when
    /// `--hls-max-streams` are packaged already.
    #[cfg(test)]
    pub fn stream(self: &Arc<Self>, key: &StreamKey, feed: &dyn Feed) -> Option<Arc<HlsStream>> {
        self.find(key, feed, false)
    }

    /// Like [`Hls::stream`], for a request: the stream is not retired until the
    /// request ends (the guard's drop stamps its last use).
    fn enter(self: &Arc<Self>, key: &StreamKey, feed: &dyn Feed) -> Option<InUse> {
        let stream = self.find(key, feed, true)?;
        Some(InUse { hls: self.clone(), stream })
    }

    fn find(self: &Arc<Self>, key: &StreamKey, feed: &dyn Feed, enter: bool) -> Option<Arc<HlsStream>> {
        let mut streams = lock(&self.streams);
        if let Some(stream) = streams.get(key) {
            stream.last_used.store(self.now_ms(), Ordering::Relaxed);
            if enter {
                stream.active.fetch_add(1, Ordering::Relaxed);
            }
            return Some(stream.clone());
        }
        if streams.len() >= self.config.max_streams {
            return None;
        }
        let mut window = Window::new(self.config.window);
        if self.dvr.is_some() {
            // What the window lets go extends a lagging DVR index (`HlsStream::apply`).
            window.keep_evicted();
        }
        let stream = Arc::new(HlsStream {
            key: key.clone(),
            window: Mutex::new(window),
            changed: watch::Sender::new(0),
            last_used: AtomicU64::new(self.now_ms()),
            counted_parts: AtomicU64::new(0),
            active: AtomicUsize::new(usize::from(enter)),
            stop: CancellationToken::new(),
            dvr: Mutex::default(),
            dvr_done: watch::Sender::new(0),
            dvr_floor: AtomicU64::new(0),
            dvr_lines: Mutex::default(),
        });
        streams.insert(key.clone(), stream.clone());
        drop(streams);
        tracing::info!(stream = %key, "HLS packaging starts");
        feed.start(self.clone(), stream.clone());
        Some(stream)
    }

    /// Every packaged stream, for `/status`.
    pub fn snapshot(&self) -> Vec<StreamStatus> {
        let streams: Vec<Arc<HlsStream>> = lock(&self.streams).values().cloned().collect();
        let mut all: Vec<_> = streams
            .iter()
            .map(|s| {
                let w = s.window();
                let listed = w.media_sequence().zip(w.open().map(|o| o.msn()).or(w.last_complete()));
                StreamStatus { stream: s.key.clone(), listed, last_part: w.last_part(), bytes: w.bytes() }
            })
            .collect();
        all.sort_by(|a, b| a.stream.cmp(&b.stream));
        all
    }

    /// Streams packaged now.
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).len()
    }

    /// Retires `stream` if no request came for `--hls-idle-ms`.
    /// Decided under the same lock a request takes to find the stream and stamp its
    /// use, so a stream a request just found is never retired under it.
    pub fn retire_if_idle(&self, stream: &Arc<HlsStream>) -> bool {
        let mut streams = lock(&self.streams);
        let last = stream.last_used.load(Ordering::Relaxed);
        let idle = self.now_ms().saturating_sub(last) >= self.config.idle.as_millis() as u64;
        if !idle || stream.active.load(Ordering::Relaxed) > 0 {
            return false;
        }
        Self::unlist(&mut streams, stream);
        drop(streams);
        self.let_go(stream);
        true
    }

    /// Retires `stream` unless a request other than the caller's is on it.
    fn retire_unless_used(&self, stream: &Arc<HlsStream>) {
        let mut streams = lock(&self.streams);
        if stream.active.load(Ordering::Relaxed) <= 1 {
            Self::unlist(&mut streams, stream);
            drop(streams);
            self.let_go(stream);
        }
    }

    /// Stops packaging `stream` and lets go of its window.
    pub fn retire(&self, stream: &Arc<HlsStream>) {
        Self::unlist(&mut lock(&self.streams), stream);
        self.let_go(stream);
    }

    fn unlist(streams: &mut HashMap<StreamKey, Arc<HlsStream>>, stream: &Arc<HlsStream>) {
        if streams.get(&stream.key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            streams.remove(&stream.key);
            tracing::info!(stream = %stream.key, "HLS packaging stops");
        }
    }

    fn let_go(&self, stream: &HlsStream) {
        stream.stop.cancel();
        let mut window = lock(&stream.window);
        let bytes = window.bytes() as u64;
        *window = Window::new(self.config.window);
        self.stats.window_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    kind: &'static str,
    /// The status code, or `other`.
    status: String,
}

/// The HLS part of the edge's `/metrics`, read at scrape time.
pub struct HlsMetrics(pub Arc<Hls>);

impl std::fmt::Debug for HlsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HlsMetrics").finish_non_exhaustive()
    }
}

impl Collector for HlsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{counter, counters, gauge};
        let (hls, s) = (&self.0, &self.0.stats);
        let e = &mut encoder;
        gauge(e, "edge_hls_streams", "Streams packaged for HLS now", hls.stream_count() as u64)?;
        let window_bytes = s.window_bytes.load(Ordering::Relaxed);
        gauge(e, "edge_hls_window_bytes", "Bytes held by every HLS stream's window", window_bytes)?;
        let waiting = hls.waiting.in_use() as u64;
        gauge(
            e,
            "edge_hls_waiting",
            "HLS requests waiting now (blocking reloads, hinted parts, new streams)",
            waiting,
        )?;
        let parts = s.parts.load(Ordering::Relaxed);
        counter(e, "edge_hls_parts_total", "Parts produced by this edge's packagers", parts)?;
        let segments = s.segments.load(Ordering::Relaxed);
        counter(e, "edge_hls_segments_total", "Segments completed by this edge's packagers", segments)?;
        let served = s.bytes_served.load(Ordering::Relaxed);
        counter(e, "edge_hls_bytes_served_total", "Bytes of playlists, segments and parts answered", served)?;
        // Only the pairs seen so far: most of the 54 never happen.
        let mut requests = Vec::new();
        for (k, kind) in KINDS.iter().enumerate() {
            for (i, status) in STATUSES.iter().enumerate() {
                let n = s.requests[k][i].load(Ordering::Relaxed);
                if n > 0 {
                    let status = if *status == 0 { "other".to_owned() } else { status.to_string() };
                    requests.push((RequestLabel { kind, status }, n));
                }
            }
        }
        counters(e, "edge_hls_requests_total", "HLS requests by kind and status", &requests)?;
        if let Some(dvr) = &hls.dvr {
            dvr_metrics(e, &dvr.stats)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DvrLabel {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Live rewind's part of `/metrics` (only on an edge with `--hls-dvr-secs`).
fn dvr_metrics(e: &mut DescriptorEncoder, s: &DvrStats) -> std::fmt::Result {
    use crate::metrics::{counters, gauge};
    use prometheus_client::encoding::EncodeMetric;
    let mut requests = Vec::new();
    for kind in DVR_KINDS {
        for outcome in OUTCOMES {
            requests.push((DvrLabel { kind, outcome }, s.requests(kind, outcome)));
        }
    }
    counters(
        e,
        "edge_hls_dvr_requests_total",
        "DVR segment and init requests by outcome: hit (cache), fetched (from the origins), failed",
        &requests,
    )?;
    let index = [
        (OutcomeLabel { outcome: "ok" }, s.index_ok.load(Ordering::Relaxed)),
        (OutcomeLabel { outcome: "failed" }, s.index_failed.load(Ordering::Relaxed)),
    ];
    counters(e, "edge_hls_dvr_index_fetches_total", "DVR index fetches: answered, or failed on every origin", &index)?;
    let help = "Origin requests for a DVR segment's frames, seconds";
    let metric = e.encode_descriptor("edge_hls_dvr_fetch_seconds", help, None, s.fetch_seconds.metric_type())?;
    s.fetch_seconds.encode(metric)?;
    let cached = s.cache_bytes.load(Ordering::Relaxed);
    gauge(e, "edge_hls_dvr_cache_bytes", "Bytes of packaged DVR segments and init segments cached", cached)
}

/// The answer to a DVR index fetch from `from`, into `stream`'s index.
async fn index_answer(dvr: &Dvr, stream: &HlsStream, from: u64) {
    let result = dvr.fetch_index(&stream.key, from).await;
    let first = stream.window().media_sequence();
    {
        let mut index = stream.dvr_index();
        match result {
            Ok(entries) => {
                index.answered(Instant::now(), entries, first, dvr.span_ms());
                dvr.stats.index_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(stream = %stream.key, error = %e, "DVR index not fetched");
                index.failed(Instant::now());
                dvr.stats.index_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stream.dvr_done.send_modify(|v| *v = v.wrapping_add(1));
}

impl HlsStream {
    /// Feeds the window what the packager produced and wakes the requests waiting;
    /// whether a segment completed.
    pub fn apply(&self, hls: &Hls, events: Vec<Packaged>) -> bool {
        if events.is_empty() {
            return false;
        }
        let (mut woke, mut completed) = (false, false);
        let evicted;
        {
            let mut window = lock(&self.window);
            // Checked under the lock: a retired stream's window stays empty (retiring
            // cancels `stop` before it takes the lock to let the window go).
            if self.stop.is_cancelled() {
                return false;
            }
            let before = window.bytes() as u64;
            for event in events {
                match window.push(event) {
                    Change::None => {}
                    Change::Init | Change::Part => woke = true,
                    Change::Segment => {
                        (woke, completed) = (true, true);
                        hls.stats.segments.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Added before subtracted: the sum over streams never wraps below zero.
            hls.stats.window_bytes.fetch_add(window.bytes() as u64, Ordering::Relaxed);
            hls.stats.window_bytes.fetch_sub(before, Ordering::Relaxed);
            let parts = window.counters().parts;
            let counted = self.counted_parts.swap(parts, Ordering::Relaxed);
            hls.stats.parts.fetch_add(parts.saturating_sub(counted), Ordering::Relaxed);
            evicted = window.take_evicted();
        }
        if !evicted.is_empty() {
            // Listed from the window's own facts until the index has them: the run
            // stays joined to the window while the index lags (a session's last
            // segment is in the index only once its piece is finished).
            self.dvr_index().bridge(evicted);
        }
        if woke {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
        completed
    }

    /// The stream's DVR index (a short lock, never held across an await).
    pub fn dvr_index(&self) -> MutexGuard<'_, StreamIndex> {
        lock(&self.dvr)
    }

    /// A look at the window (a short lock, never held across an await).
    pub fn window(&self) -> MutexGuard<'_, Window> {
        lock(&self.window)
    }
}

/// A decimal number in its one canonical spelling: digits only, no leading zero, no
/// overflow.
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// The resource a name under `/{app}/{name}/` names, or `None` (a 404).
pub fn parse_resource(name: &str) -> Option<Resource> {
    if name.len() > MAX_NAME {
        return None;
    }
    if name == "index.m3u8" {
        return Some(Resource::Playlist);
    }
    if let Some(v) = name.strip_prefix("init-").and_then(|r| r.strip_suffix(".mp4")) {
        return number(v).map(Resource::Init);
    }
    if let Some(m) = name.strip_prefix("seg-").and_then(|r| r.strip_suffix(".m4s")) {
        return number(m).map(Resource::Segment);
    }
    let (m, i) = name.strip_prefix("part-")?.strip_suffix(".m4s")?.split_once('.')?;
    Some(Resource::Part(number(m)?, number(i)?))
}

/// A blocking reload's `_HLS_msn` and `_HLS_part`, if the query asks for one. Other
/// parameters are ignored; a bad or repeated value, or a part without a segment
/// number, is an error (400).
pub fn parse_reload(query: Option<&str>) -> Result<Option<(u64, Option<u32>)>, &'static str> {
    let (mut msn, mut part) = (None, None);
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "_HLS_msn" if msn.is_none() => msn = Some(number(value).ok_or("_HLS_msn is not a segment number")?),
            "_HLS_part" if part.is_none() => part = Some(number(value).ok_or("_HLS_part is not a part index")?),
            "_HLS_msn" | "_HLS_part" => return Err("_HLS_msn and _HLS_part may be given once"),
            _ => {}
        }
    }
    match (msn, part) {
        (None, Some(_)) => Err("_HLS_part needs _HLS_msn"),
        (None, None) => Ok(None),
        (Some(msn), part) => Ok(Some((msn, part))),
    }
}

/// What the HLS routes need: the streams, the long-request cap, what starts a stream.
#[derive(Clone)]
pub struct HlsRoutes {
    pub hls: Arc<Hls>,
    /// The edge's long-lived request cap (per address; HTTP-FLV and SSE share it).
    pub long_requests: Arc<Limit>,
    pub feed: Arc<dyn Feed>,
    /// Checks play tokens and makes segment tokens, for apps that require them.
    pub tokens: Verifier,
    /// Where token refusals are counted.
    pub refusals: Arc<Refusals>,
    /// Cancelled when the edge stops serving: new requests get 503, waiting ones
    /// are answered with what there is.
    pub shutdown: CancellationToken,
}

/// The routes under `/{app}/{name}/` (merged beside HTTP-FLV's `/{app}/{file}`).
pub fn router(routes: HlsRoutes) -> Router {
    Router::new().route("/{app}/{name}/{resource}", get(serve).options(preflight)).with_state(routes)
}

const KIND_OPTIONS: usize = 4;
const KIND_INVALID: usize = 5;

fn kind(resource: Resource) -> usize {
    match resource {
        Resource::Playlist => 0,
        Resource::Init(_) => 1,
        Resource::Segment(_) => 2,
        Resource::Part(..) => 3,
    }
}

fn cors(mut response: Response) -> Response {
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `OPTIONS`: a browser's CORS preflight.
async fn preflight(State(routes): State<HlsRoutes>) -> Response {
    routes.hls.stats.count(KIND_OPTIONS, StatusCode::NO_CONTENT);
    let headers = [
        (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, OPTIONS"),
        // The wildcard does not cover `Authorization` (Fetch standard): named too.
        (header::ACCESS_CONTROL_ALLOW_HEADERS, "*, Authorization"),
        (header::ACCESS_CONTROL_MAX_AGE, "86400"),
    ];
    cors((StatusCode::NO_CONTENT, headers).into_response())
}

/// Why an HLS request is refused; [`HlsError::into_response`] is the one place that
/// maps these to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlsError {
    /// Not a resource name, an invalid stream name, or not in the window (404).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// Nothing came for the stream within the wait (404).
    #[error("the stream is not being published")]
    StreamNotFound,
    /// A malformed blocking-reload query (400).
    #[error("{0}")]
    BadQuery(&'static str),
    /// `_HLS_msn` or `_HLS_part` further ahead than a client may ask (400).
    #[error("_HLS_msn/_HLS_part is too far ahead")]
    TooFarAhead,
    /// A waiting request over the per-address or global cap (429, `Retry-After: 1`).
    #[error(transparent)]
    TooMany(#[from] Refused),
    /// `--hls-max-streams` are packaged already (503).
    #[error("this edge packages enough streams")]
    TooManyStreams,
    /// The edge is shutting down (503).
    #[error("the edge is shutting down")]
    ShuttingDown,
    /// The app requires play tokens and the request's does not allow it (401, 403,
    /// or 503 while the rules are unknown).
    #[error(transparent)]
    Unauthorized(StreamAuthError),
    /// A DVR segment the index lists could not be had: 404 from every origin, 503
    /// (`Retry-After: 1`) when none answered or too many fetches are under way, 502
    /// when what they sent does not make the listed segment.
    #[error(transparent)]
    Dvr(#[from] DvrFail),
}

impl IntoResponse for HlsError {
    /// JSON, never stored by a cache (a 404 for a part that is about to exist must not
    /// outlive the moment).
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            HlsError::Unauthorized(e) => return super::tokens::refused(e.clone()),
            HlsError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            HlsError::StreamNotFound => (StatusCode::NOT_FOUND, "stream_not_found"),
            HlsError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            HlsError::TooFarAhead => (StatusCode::BAD_REQUEST, "too_far_ahead"),
            HlsError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            HlsError::TooManyStreams => (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"),
            HlsError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            HlsError::Dvr(DvrFail::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            HlsError::Dvr(DvrFail::Unavailable) => (StatusCode::SERVICE_UNAVAILABLE, "dvr_unavailable"),
            HlsError::Dvr(DvrFail::Bad) => (StatusCode::BAD_GATEWAY, "dvr_bad_gateway"),
        };
        let body = Json(json!({ "error": { "code": code, "message": self.to_string() } }));
        let mut response = (status, [(header::CACHE_CONTROL, "no-store")], body).into_response();
        if matches!(self, HlsError::TooMany(_) | HlsError::Dvr(DvrFail::Unavailable)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A segment, part or init segment: immutable.
fn media(content_type: &'static str, bytes: Bytes) -> Response {
    let cache = format!("public, max-age={MEDIA_MAX_AGE_S}, immutable");
    ([(header::CONTENT_TYPE, content_type.to_owned()), (header::CACHE_CONTROL, cache)], Body::from(bytes))
        .into_response()
}

async fn serve(
    State(routes): State<HlsRoutes>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((app, name, file)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (kind, response) = match parse_resource(&file) {
        None => (KIND_INVALID, HlsError::NotFound("resource").into_response()),
        Some(resource) => {
            let response = answer(&routes, peer, &app, &name, resource, &headers, query.as_deref()).await;
            (kind(resource), response.unwrap_or_else(IntoResponse::into_response))
        }
    };
    routes.hls.stats.count(kind, response.status());
    if let Some(bytes) = http_body::Body::size_hint(response.body()).exact() {
        routes.hls.stats.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }
    cors(response)
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    routes: &HlsRoutes,
    peer: SocketAddr,
    app: &str,
    name: &str,
    resource: Resource,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, HlsError> {
    let Ok(key) = StreamKey::new(app, name) else { return Err(HlsError::NotFound("stream")) };
    let reload = match resource {
        Resource::Playlist => parse_reload(query).map_err(HlsError::BadQuery)?,
        _ => None,
    };
    if routes.shutdown.is_cancelled() {
        return Err(HlsError::ShuttingDown);
    }
    // Before the stream is entered: a refused request starts no packaging.
    let segment_token = authorize(routes, &key, resource, headers, query).await?;
    let Some(used) = routes.hls.enter(&key, &*routes.feed) else {
        return Err(HlsError::TooManyStreams);
    };
    let mut waiter = Waiter { routes, peer, stream: used.stream.clone(), held: None, segment_token };
    waiter.answer(resource, reload).await
}

/// Checks a request's tokens when the stream's app requires play tokens: a playlist
/// needs a play token (`Authorization: Bearer` or `?token=`); media (init, segments,
/// parts) a segment token (`?st=`, the one the playlists list) or a play token. For
/// a playlist, returns the segment token its URIs carry (`None`: the app requires no
/// token, and the playlist is exactly what it was without token rules).
async fn authorize(
    routes: &HlsRoutes,
    key: &StreamKey,
    resource: Resource,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, HlsError> {
    let token = tokens::from_request(headers, query);
    let checked = match resource {
        Resource::Playlist => {
            routes.tokens.authorize_stream(token.as_deref(), &key.app, &key.name, Play).await.map(drop)
        }
        Resource::Init(_) | Resource::Segment(_) | Resource::Part(..) => {
            let st = tokens::query_param(query, "st");
            routes.tokens.authorize_segment(st.as_deref(), token.as_deref(), &key.app, &key.name).await
        }
    };
    checked.map_err(|e| HlsError::Unauthorized(routes.refusals.count(Protocol::Hls, e)))?;
    Ok(match resource {
        Resource::Playlist => routes.tokens.segment_token(&key.app, &key.name).await,
        _ => None,
    })
}

/// A request's hold on its stream.
struct InUse {
    hls: Arc<Hls>,
    stream: Arc<HlsStream>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        // Under the lock the idle check takes: it sees the stamp and the count together.
        let _streams = lock(&self.hls.streams);
        self.stream.last_used.store(self.hls.now_ms(), Ordering::Relaxed);
        self.stream.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request that may wait for its stream's window.
struct Waiter<'a> {
    routes: &'a HlsRoutes,
    peer: SocketAddr,
    stream: Arc<HlsStream>,
    /// Taken when the request starts waiting: a long-request permit and a waiter's.
    held: Option<(Permit, Permit)>,
    /// What a playlist's URIs carry (`st=` this), when the app requires play tokens.
    segment_token: Option<String>,
}

/// How long a blocking request may wait: three target durations.
fn block_limit(window: &Window) -> Duration {
    Duration::from_secs(playlist::target_duration(window)) * BLOCK_TARGETS
}

impl Waiter<'_> {
    async fn answer(&mut self, resource: Resource, reload: Option<(u64, Option<u32>)>) -> Result<Response, HlsError> {
        // A stream with nothing to list yet (new, or not published): wait for its
        // first segment.
        if self.until(self.routes.hls.config.stream_wait, |w| w.is_ready().then_some(())).await?.is_none() {
            if self.stream.window().media_sequence().is_none() {
                // Nothing ever came: do not keep a relay for a stream nobody publishes
                // (unless another request is waiting for it too).
                self.routes.hls.retire_unless_used(&self.stream);
            }
            return Err(HlsError::StreamNotFound);
        }
        match resource {
            Resource::Playlist => self.playlist(reload).await,
            Resource::Init(version) => {
                let here = self.stream.window().init(version).map(|init| init.bytes.clone());
                match here {
                    Some(bytes) => Ok(media("video/mp4", bytes)),
                    None => self.dvr_init(version).await,
                }
            }
            Resource::Segment(_) | Resource::Part(..) => {
                let find = |w: &Window| match resource {
                    Resource::Segment(msn) => w.find_segment(msn),
                    Resource::Part(msn, index) => w.find_part(msn, index),
                    _ => Found::Missing,
                };
                let (found, limit) = {
                    let w = self.stream.window();
                    (find(&w), block_limit(&w))
                };
                let found = match found {
                    Found::Coming => self.until(limit, |w| Some(find(w)).filter(|f| *f != Found::Coming)).await?,
                    found => Some(found),
                };
                match (found, resource) {
                    (Some(Found::Here(bytes)), _) => Ok(media("video/iso.segment", bytes)),
                    // Not in the window: an old segment the DVR index may list (parts
                    // of old segments are not served).
                    (Some(Found::Missing), Resource::Segment(msn)) => self.dvr_segment(msn).await,
                    _ => Err(HlsError::NotFound("segment or part")),
                }
            }
        }
    }

    async fn playlist(&mut self, reload: Option<(u64, Option<u32>)>) -> Result<Response, HlsError> {
        let cache = match reload {
            None => {
                let part_target = playlist::part_target_ms(&self.stream.window());
                format!("public, max-age={}", part_target / 1000)
            }
            Some((msn, part)) => {
                let (verdict, limit) = {
                    let w = self.stream.window();
                    (w.reload(msn, part), block_limit(&w))
                };
                match verdict {
                    Reload::TooFar => return Err(HlsError::TooFarAhead),
                    Reload::Ready => {}
                    // Past the limit the playlist is answered as it is.
                    Reload::Wait => {
                        self.until(limit, |w| (w.reload(msn, part) != Reload::Wait).then_some(())).await?;
                    }
                }
                "no-store".to_owned()
            }
        };
        let query = self.segment_token.as_ref().map(|st| format!("st={st}"));
        let text = match &self.routes.hls.dvr {
            Some(dvr) => {
                // A stream new on this edge lists its span from its first playlist on
                // (listed later, it would come in front of what was served).
                self.dvr_loaded().await;
                let entries = self.stream.dvr_index().entries();
                let floor = self.stream.dvr_floor.load(Ordering::Relaxed);
                let rewind = Rewind { index: &entries, span_ms: dvr.span_ms(), floor };
                let window = self.stream.window();
                let mut lines = lock(&self.stream.dvr_lines);
                playlist::render_rewound(&window, rewind, query.as_deref(), &mut lines).map(|(text, sequence)| {
                    self.stream.dvr_floor.fetch_max(sequence, Ordering::Relaxed);
                    text
                })
            }
            None => playlist::render_with_query(&self.stream.window(), &[], 0, query.as_deref()),
        };
        let Some(text) = text else {
            return Err(HlsError::StreamNotFound);
        };
        Ok(([(header::CONTENT_TYPE, "application/vnd.apple.mpegurl".to_owned()), (header::CACHE_CONTROL, cache)], text)
            .into_response())
    }

    /// Old segment `msn`, when the stream's DVR index lists it.
    async fn dvr_segment(&self, msn: u64) -> Result<Response, HlsError> {
        let Some(dvr) = self.routes.hls.dvr.clone() else { return Err(HlsError::NotFound("segment or part")) };
        let Some(entry) = self.dvr_entry(|index| index.entry(msn)).await else {
            return Err(HlsError::NotFound("segment or part"));
        };
        let bytes = dvr.segment(&self.stream.key, entry).await?;
        Ok(media("video/iso.segment", bytes))
    }

    /// Init segment `version` the window no longer has, when a segment the stream's
    /// DVR index lists needs it.
    async fn dvr_init(&self, version: u32) -> Result<Response, HlsError> {
        let Some(dvr) = self.routes.hls.dvr.clone() else { return Err(HlsError::NotFound("init segment")) };
        let Some(entry) = self.dvr_entry(|index| index.with_init(version)).await else {
            return Err(HlsError::NotFound("init segment"));
        };
        let bytes = dvr.init(&self.stream.key, version, entry).await?;
        Ok(media("video/mp4", bytes))
    }

    /// Waits up to [`DVR_INDEX_WAIT`] for the stream's first DVR index answer, unless
    /// it came already.
    async fn dvr_loaded(&self) {
        let mut done = self.stream.dvr_done.subscribe();
        if self.stream.dvr_index().is_loaded() {
            return;
        }
        if self.routes.hls.refresh_dvr(&self.stream) {
            let _ = tokio::time::timeout(DVR_INDEX_WAIT, done.changed()).await;
        }
    }

    /// What `find` finds in the stream's DVR index; if the index has never been
    /// answered (the stream just started on this edge), after waiting up to
    /// [`DVR_INDEX_WAIT`] for a fetch.
    async fn dvr_entry(&self, find: impl Fn(&StreamIndex) -> Option<DvrSegment>) -> Option<DvrSegment> {
        let mut done = self.stream.dvr_done.subscribe();
        {
            let index = self.stream.dvr_index();
            if let Some(entry) = find(&index) {
                return Some(entry);
            }
            if index.is_loaded() {
                return None;
            }
        }
        if self.routes.hls.refresh_dvr(&self.stream) {
            let _ = tokio::time::timeout(DVR_INDEX_WAIT, done.changed()).await;
        }
        find(&self.stream.dvr_index())
    }

    /// Waits until `check` finds what it wants in the window, for at most `limit`;
    /// `None` when the time is up, the stream retired or the edge shuts down. Takes
    /// the request's permits the first time it has to wait (429 without them).
    async fn until<T>(&mut self, limit: Duration, check: impl Fn(&Window) -> Option<T>) -> Result<Option<T>, HlsError> {
        // Subscribed before looking: a change after the look is not missed.
        let mut changed = self.stream.changed.subscribe();
        if let Some(found) = check(&self.stream.window()) {
            return Ok(Some(found));
        }
        if self.held.is_none() {
            let long = self.routes.long_requests.try_acquire(self.peer.ip())?;
            let wait = self.routes.hls.waiting.try_acquire(self.peer.ip())?;
            self.held = Some((long, wait));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { return Ok(None) },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.routes.shutdown.cancelled() => return Ok(None),
                _ = self.stream.stop.cancelled() => return Ok(None),
            }
            if let Some(found) = check(&self.stream.window()) {
                return Ok(Some(found));
            }
        }
    }
}

/// How long a stream's packaging waits for the owner's HLS window on a new relay
/// before it starts with what is live.
const HISTORY_WAIT: Duration = Duration::from_secs(3);

/// The edge's [`Feed`]: one task per stream, fed by the stream's relay.
pub struct RelayFeed(pub Arc<EdgeContext>);

impl Feed for RelayFeed {
    fn start(&self, hls: Arc<Hls>, stream: Arc<HlsStream>) {
        let span = tracing::info_span!("hls", stream.key = %stream.key);
        tokio::spawn(tracing::Instrument::instrument(package(self.0.clone(), hls, stream), span));
    }
}

/// One stream's packaging task: joins the relay, follows its hub across publishing
/// generations, packages every frame and feeds the window, until the stream is idle
/// (`--hls-idle-ms`), retired or the edge stops.
async fn package(ctx: Arc<EdgeContext>, hls: Arc<Hls>, stream: Arc<HlsStream>) {
    // An HLS lease: the relay keeps the HLS window for as long as this task runs
    // (fetching the owner's if it relayed to players only so far), and `/status` does
    // not count this task as a player.
    let lease = ctx.relays.join_hls(&ctx, &stream.key);
    let mut hubs = lease.relay().hub();
    let mut packager = Packager::new();
    let mut idle = tokio::time::interval((hls.config.idle / 4).max(Duration::from_millis(50)));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Arc<Hub>> = None;
    'generations: loop {
        let fresh = |h: &Option<Arc<Hub>>| h.as_ref().is_some_and(|h| last.as_ref().is_none_or(|l| !Arc::ptr_eq(h, l)));
        let hub = tokio::select! {
            hub = hubs.wait_for(fresh) => match hub {
                Ok(hub) => hub.clone(),
                Err(_) => break,
            },
            _ = idle.tick() => {
                if hls.retire_if_idle(&stream) {
                    break;
                }
                continue;
            }
            _ = stream.stop.cancelled() => break,
            _ = ctx.shutdown.cancelled() => break,
        };
        let Some(hub) = hub else { continue };
        last = Some(hub.clone());
        // From the oldest segment start the relay's hub holds: an edge that starts late
        // (or restarted) builds the same window as the others. Wait until the owner has
        // sent that history, then package all of it in one step: a playlist served
        // meanwhile would list a shorter window than the other edges' (numbers going
        // backwards for a client balanced between them), and a segment they list would
        // be missing here.
        tokio::select! {
            _ = hub.history_ended() => {}
            _ = tokio::time::sleep(HISTORY_WAIT) => tracing::debug!("no HLS window from the owner; starting live"),
            _ = stream.stop.cancelled() => break 'generations,
            _ = ctx.shutdown.cancelled() => break 'generations,
        }
        // The hub's window comes to this task and is not kept beside the packaged one.
        let subscription = hub.take_window();
        let mut backlog = Vec::new();
        while let Some(frame) = subscription.try_recv() {
            backlog.extend(packager.push(&frame));
        }
        // Each completed segment asks for the DVR index's news (at most once a second,
        // one fetch at a time, in a task of its own: the window is never locked across
        // it).
        if stream.apply(&hls, backlog) {
            hls.refresh_dvr(&stream);
        }
        loop {
            tokio::select! {
                frame = subscription.recv() => match frame {
                    Some(frame) => if stream.apply(&hls, packager.push(&frame)) {
                        hls.refresh_dvr(&stream);
                    },
                    None => {
                        // The generation ended: close the open segment.
                        stream.apply(&hls, packager.finish());
                        break;
                    }
                },
                _ = idle.tick() => {
                    if hls.retire_if_idle(&stream) {
                        break 'generations;
                    }
                }
                _ = stream.stop.cancelled() => break 'generations,
                _ = ctx.shutdown.cancelled() => break 'generations,
            }
        }
    }
    hls.retire(&stream);
    drop(lease);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::window::tests::{end, init, part, start};
    use crate::hls::SegmentStart;
    use crate::http_server::HttpLimits;

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(parse_resource("index.m3u8"), Some(Resource::Playlist));
        assert_eq!(parse_resource("init-0.mp4"), Some(Resource::Init(0)));
        assert_eq!(parse_resource("init-12.mp4"), Some(Resource::Init(12)));
        assert_eq!(parse_resource("seg-18446744073709551615.m4s"), Some(Resource::Segment(u64::MAX)));
        assert_eq!(parse_resource("part-7.0.m4s"), Some(Resource::Part(7, 0)));
        for bad in [
            "",
            "index.m3u",
            "index.m3u8.bak",
            "INDEX.M3U8",
            "init-.mp4",
            "init-01.mp4",
            "init--1.mp4",
            "init-+1.mp4",
            "init-4294967296.mp4",
            "seg-18446744073709551616.m4s",
            "seg-1.m4s/",
            "seg-1 .m4s",
            "seg-0x1.m4s",
            "part-1.m4s",
            "part-1.2.3.m4s",
            "part-1..m4s",
            "part-.1.m4s",
            "../../etc/passwd",
            "..",
            "seg-../1.m4s",
            "part-1.99999999999.m4s",
            &format!("seg-{}.m4s", "1".repeat(70)),
        ] {
            assert_eq!(parse_resource(bad), None, "{bad:?} must be a 404");
        }
    }

    #[test]
    fn blocking_reload_queries() {
        assert_eq!(parse_reload(None), Ok(None));
        assert_eq!(parse_reload(Some("")), Ok(None));
        assert_eq!(parse_reload(Some("_HLS_msn=5")), Ok(Some((5, None))));
        assert_eq!(parse_reload(Some("_HLS_msn=5&_HLS_part=2&x=1")), Ok(Some((5, Some(2)))));
        assert_eq!(parse_reload(Some("_HLS_part=2&_HLS_msn=5")), Ok(Some((5, Some(2)))));
        assert_eq!(parse_reload(Some("_HLS_skip=YES")), Ok(None));
        for bad in ["_HLS_part=1", "_HLS_msn=", "_HLS_msn=-1", "_HLS_msn=1&_HLS_msn=2", "_HLS_msn=99999999999999999999"]
        {
            assert!(parse_reload(Some(bad)).is_err(), "{bad}");
        }
    }

    /// A feed that starts nothing: the test feeds windows itself.
    #[derive(Default)]
    struct Manual;

    impl Feed for Manual {
        fn start(&self, _: Arc<Hls>, _: Arc<HlsStream>) {}
    }

    struct Served {
        base: String,
        hls: Arc<Hls>,
        refusals: Arc<Refusals>,
        client: reqwest::Client,
        stop: CancellationToken,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    fn config(max_waiting: usize) -> HlsConfig {
        HlsConfig {
            window: WindowLimits::default(),
            idle: Duration::from_secs(60),
            stream_wait: Duration::from_millis(300),
            max_waiting,
            max_streams: 4,
            dvr: DvrSettings::default(),
        }
    }

    async fn serve_routes(config: HlsConfig) -> Served {
        serve_routes_with(config, Verifier::with_rules(Default::default(), Default::default())).await
    }

    async fn serve_routes_with(config: HlsConfig, tokens: Verifier) -> Served {
        serve_hls(Hls::new(config), tokens).await
    }

    async fn serve_hls(hls: Arc<Hls>, tokens: Verifier) -> Served {
        let refusals = Arc::<Refusals>::default();
        let stop = CancellationToken::new();
        let routes = HlsRoutes {
            hls: hls.clone(),
            long_requests: Limit::new("http_long_requests", 64, 1000),
            feed: Arc::new(Manual),
            tokens,
            refusals: refusals.clone(),
            shutdown: stop.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            connections: Limit::new("http_connections", 1000, 1000),
            trusted: None,
            proxy: None,
            bans: Default::default(),
            ban_stats: Default::default(),
        };
        tokio::spawn(crate::http_server::serve(listener, router(routes), limits, stop.clone()));
        Served { base, hls, refusals, client: reqwest::Client::new(), stop }
    }

    impl Served {
        fn stream(&self, app: &str, name: &str) -> Arc<HlsStream> {
            self.hls.stream(&StreamKey::new(app, name).unwrap(), &Manual).unwrap()
        }

        async fn get(&self, path: &str) -> reqwest::Response {
            self.client.get(format!("{}{path}", self.base)).send().await.unwrap()
        }

        /// Waits (with a deadline) until `n` requests wait.
        async fn until_waiting(&self, n: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.hls.waiting.in_use() != n {
                assert!(Instant::now() < deadline, "{} requests wait, not {n}", self.hls.waiting.in_use());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Segments 0..3 complete, segment 3 open with two parts.
    fn live(stream: &HlsStream, hls: &Hls) {
        let mut events = vec![init(0)];
        for msn in 0..3 {
            events.extend([start(msn, 0), part(msn, 0, 10), part(msn, 1, 10), part(msn, 2, 10), part(msn, 3, 10)]);
            events.push(end(msn, 4));
        }
        events.extend([start(3, 0), part(3, 0, 10), part(3, 1, 10)]);
        stream.apply(hls, events);
    }

    #[tokio::test]
    async fn hls_routes_serve_the_window() {
        let s = serve_routes(config(16)).await;
        let stream = s.stream("live", "test");
        live(&stream, &s.hls);

        let r = s.get("/live/test/index.m3u8").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), "application/vnd.apple.mpegurl");
        assert_eq!(header(&r, "cache-control"), "public, max-age=0");
        assert_eq!(header(&r, "access-control-allow-origin"), "*");
        let expected = playlist::render(&stream.window()).unwrap();
        assert_eq!(r.text().await.unwrap(), expected);

        let r = s.get("/live/test/init-0.mp4").await;
        assert_eq!((r.status().as_u16(), header(&r, "content-type")), (200, "video/mp4"));
        assert_eq!(header(&r, "cache-control"), "public, max-age=600, immutable");
        assert_eq!(r.bytes().await.unwrap().len(), 100);
        let r = s.get("/live/test/seg-2.m4s").await;
        assert_eq!((r.status().as_u16(), header(&r, "content-type")), (200, "video/iso.segment"));
        assert!(header(&r, "cache-control").ends_with("immutable"));
        assert_eq!(header(&r, "access-control-allow-origin"), "*");
        assert_eq!(r.bytes().await.unwrap(), Bytes::from([[0x20; 10], [0x21; 10], [0x22; 10], [0x23; 10]].concat()));
        let r = s.get("/live/test/part-3.1.m4s").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), Bytes::from(vec![0x31; 10]));

        for missing in [
            "/live/test/seg-02.m4s",
            "/live/test/seg-9.m4s",
            "/live/test/part-3.5.m4s",
            "/live/test/init-7.mp4",
            "/live/test/..%2F..%2Fetc%2Fpasswd",
            "/live/test/seg-99999999999999999999999.m4s",
            "/live/test/index.m3u8.bak",
            "/live/te%2Fst/index.m3u8",
        ] {
            let r = s.get(missing).await;
            assert_eq!(r.status(), 404, "{missing}");
            assert_eq!(header(&r, "cache-control"), "no-store", "{missing}");
        }
        // A client's URL library resolves dot segments: no route at all.
        assert_eq!(s.get("/live/test/%2e%2e/%2e%2e/x").await.status(), 404);
        for bad in ["?_HLS_msn=6", "?_HLS_msn=3&_HLS_part=99", "?_HLS_part=1", "?_HLS_msn=x"] {
            let r = s.get(&format!("/live/test/index.m3u8{bad}")).await;
            assert_eq!(r.status(), 400, "{bad}");
            assert_eq!(header(&r, "cache-control"), "no-store");
        }
        // What is already there is answered at once, never stored by a cache.
        let r = s.get("/live/test/index.m3u8?_HLS_msn=3&_HLS_part=1").await;
        assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, "no-store"));

        let r = s
            .client
            .request(reqwest::Method::OPTIONS, format!("{}/live/test/index.m3u8", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "access-control-allow-origin"), "*");
        assert!(header(&r, "access-control-allow-methods").contains("GET"));

        // A stream nobody publishes: a short wait, a 404, and nothing kept for it.
        let started = Instant::now();
        let r = s.get("/live/nobody/index.m3u8").await;
        assert_eq!(r.status(), 404);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(s.hls.stream_count(), 1);

        assert_eq!(s.hls.stats.requests("segment", 200), 1);
        assert_eq!(s.hls.stats.requests("playlist", 400), 4);
        assert_eq!(s.hls.stats.requests("invalid", 404), 4);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(HlsMetrics(s.hls.clone())));
        let metrics = crate::metrics::encode(&registry, |_| {});
        assert!(metrics.contains("edge_hls_streams 1\n"));
        assert!(metrics.contains("edge_hls_segments_total 3\n"), "{metrics}");
        assert!(metrics.contains("edge_hls_parts_total 14\n"));
        assert!(metrics.contains(&format!("edge_hls_window_bytes {}\n", 100 + 14 * 10)));
        assert!(metrics.contains("edge_hls_requests_total{kind=\"part\",status=\"200\"} 1\n"));
        let status = s.hls.snapshot();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].listed, status[0].last_part, status[0].bytes), (Some((0, 3)), Some((3, 1)), 240));

        // Idle: retired, its bytes let go.
        let idle = Hls::new(HlsConfig { idle: Duration::ZERO, ..config(1) });
        let quiet = idle.stream(&StreamKey::new("live", "quiet").unwrap(), &Manual).unwrap();
        live(&quiet, &idle);
        assert!(idle.stats.window_bytes.load(Ordering::Relaxed) > 0);
        let request = idle.enter(&quiet.key, &Manual).unwrap();
        assert!(!idle.retire_if_idle(&quiet), "never retired under a request");
        drop(request);
        assert!(idle.retire_if_idle(&quiet));
        assert_eq!((idle.stream_count(), idle.stats.window_bytes.load(Ordering::Relaxed)), (0, 0));
        assert!(quiet.stop.is_cancelled());
    }

    #[tokio::test]
    async fn hls_play_tokens_guard_playlists_and_segment_tokens_guard_media() {
        use raftcast_raft::state::AppTokens;
        use raftcast_raft::token::{self, StreamClaims, StreamRight, TokenKey};
        let key = TokenKey([7; 32]);
        let keys = [(1, key.clone())].into();
        let apps = [("live".to_owned(), AppTokens { play: true, publish: true })].into();
        let s = serve_routes_with(config(16), Verifier::with_rules(keys, apps)).await;
        let (stream, open) = (s.stream("live", "test"), s.stream("open", "test"));
        live(&stream, &s.hls);
        live(&open, &s.hls);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let sign = |name: &str, right, expires_at| {
            let claims = StreamClaims {
                key_id: 1,
                app: "live".into(),
                name: Some(name.into()),
                name_prefix: None,
                right,
                expires_at,
            };
            token::sign_stream(&claims, &key)
        };
        let play = sign("test", StreamRight::Play, now + 60);
        let st = token::segment_token(&[(1, key.clone())].into(), "live", "test", now).unwrap();
        let other_st = token::segment_token(&[(1, key.clone())].into(), "live", "other", now).unwrap();
        // A character inside the MAC (the last one may carry only padding bits).
        let mut forged = play.clone().into_bytes();
        let at = forged.len() - 5;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();

        let playlist = |q: &str| format!("/live/test/index.m3u8{q}");
        for (query, status) in [
            (String::new(), 401),
            (format!("?token={forged}"), 401),
            (format!("?token={}", sign("test", StreamRight::Play, now - 1)), 401),
            (format!("?token={}", sign("other", StreamRight::Play, now + 60)), 403),
            (format!("?token={}", sign("test", StreamRight::Publish, now + 60)), 403),
            // A segment token is not a play token.
            (format!("?st={st}"), 401),
        ] {
            let r = s.get(&playlist(&query)).await;
            assert_eq!(r.status(), status, "{query}");
            assert_eq!(header(&r, "cache-control"), "no-store", "{query}");
            assert_eq!(header(&r, "www-authenticate"), if status == 401 { "Bearer" } else { "" }, "{query}");
        }
        assert_eq!(s.refusals.get(Protocol::Hls, tokens::Reason::Missing), 2);
        assert_eq!(s.refusals.get(Protocol::Hls, tokens::Reason::Invalid), 2);
        assert_eq!(s.refusals.get(Protocol::Hls, tokens::Reason::Forbidden), 2);
        assert_eq!(s.hls.stats.requests("playlist", 403), 2);

        // A valid token, in the query or the header: every URI carries the stream's
        // segment token, and nothing else differs from the plain playlist.
        let r = s.get(&playlist(&format!("?token={play}"))).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let expected = playlist::render_with_query(&stream.window(), &[], 0, Some(&format!("st={st}"))).unwrap();
        assert_eq!(text, expected);
        assert!(text.contains(&format!("\nseg-2.m4s?st={st}\n")), "{text}");
        let r = s.client.get(format!("{}{}", s.base, playlist(""))).bearer_auth(&play).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), expected);
        // A blocking reload with the token among its parameters.
        let r = s.get(&playlist(&format!("?_HLS_msn=3&_HLS_part=1&token={play}"))).await;
        assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, "no-store"));
        assert_eq!(r.text().await.unwrap(), expected);

        // Media: the playlist's st, or a play token.
        for path in ["seg-2.m4s", "part-3.1.m4s", "init-0.mp4"] {
            let url = |q: &str| format!("/live/test/{path}{q}");
            assert_eq!(s.get(&url("")).await.status(), 401, "{path}");
            assert_eq!(s.get(&url(&format!("?st={other_st}"))).await.status(), 401, "{path}");
            assert_eq!(s.get(&url("?st=1.0.AAAA")).await.status(), 401, "{path}");
            assert_eq!(s.get(&url(&format!("?st={st}"))).await.status(), 200, "{path}");
            assert_eq!(s.get(&url(&format!("?token={play}"))).await.status(), 200, "{path}");
            // A stale st beside a good token: the token decides.
            assert_eq!(s.get(&url(&format!("?st={other_st}&token={play}"))).await.status(), 200, "{path}");
        }

        // An app without rules: no token needed, the playlist as it always was.
        let r = s.get("/open/test/index.m3u8").await;
        assert_eq!(r.text().await.unwrap(), playlist::render(&open.window()).unwrap());
        assert_eq!(s.get("/open/test/seg-2.m4s").await.status(), 200);
    }

    #[tokio::test]
    async fn hls_blocking_requests_wait_for_the_window() {
        let s = serve_routes(config(2)).await;
        let stream = s.stream("live", "test");
        live(&stream, &s.hls);
        let get = |path: &str| {
            let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        };

        // The next part of the playlist: held until it exists.
        let reload = get("/live/test/index.m3u8?_HLS_msn=3&_HLS_part=2");
        s.until_waiting(1).await;
        assert!(!reload.is_finished());
        // The hinted part: held until it completes.
        let hinted = get("/live/test/part-3.2.m4s");
        s.until_waiting(2).await;
        // Over --hls-max-waiting: refused at once.
        let r = s.get("/live/test/seg-3.m4s").await;
        assert_eq!((r.status().as_u16(), header(&r, "retry-after")), (429, "1"));

        stream.apply(&s.hls, vec![part(3, 2, 10)]);
        let r = reload.await.unwrap();
        assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, "no-store"));
        let text = r.text().await.unwrap();
        assert!(text.contains("URI=\"part-3.2.m4s\"") && text.contains("PRELOAD-HINT:TYPE=PART,URI=\"part-3.3.m4s\""));
        let r = hinted.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), Bytes::from(vec![0x32; 10]));

        // The open segment: held until it is complete.
        let segment = get("/live/test/seg-3.m4s");
        s.until_waiting(1).await;
        stream.apply(&s.hls, vec![part(3, 3, 10), end(3, 4), start(4, 0)]);
        let r = segment.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 40);
        s.until_waiting(0).await;

        // A hinted part that never comes (the segment ended first) is a 404.
        let never = get("/live/test/part-4.0.m4s");
        s.until_waiting(1).await;
        stream.apply(
            &s.hls,
            vec![Packaged::SegmentStart(SegmentStart {
                msn: 5,
                discontinuity: 1,
                wall_ms: 0,
                init_version: 0,
                target_ms: 1000,
                part_target_ms: 250,
            })],
        );
        assert_eq!(never.await.unwrap().status(), 404);
    }

    #[tokio::test]
    async fn hls_blocking_reload_answers_what_is_there_after_three_targets() {
        let s = serve_routes(config(2)).await;
        let stream = s.stream("live", "slow");
        let target = |msn| {
            Packaged::SegmentStart(SegmentStart {
                msn,
                discontinuity: 0,
                wall_ms: 0,
                init_version: 0,
                target_ms: 1000,
                part_target_ms: 500,
            })
        };
        let ones = (0..2).flat_map(|msn| [target(msn), part(msn, 0, 10), part(msn, 1, 10), end(msn, 2)]);
        stream.apply(&s.hls, ones.chain([target(2)]).collect());
        let started = Instant::now();
        let r = s.get("/live/slow/index.m3u8?_HLS_msn=2").await;
        let waited = started.elapsed();
        assert_eq!((r.status().as_u16(), header(&r, "cache-control")), (200, "no-store"));
        assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(5), "{waited:?}");
        assert!(r.text().await.unwrap().contains("seg-1.m4s"));
    }

    /// What a packager that saw all of `frames` made: its events and, per complete
    /// segment, the DVR index entry an origin would list for it.
    fn recorded(frames: &[crate::media::Frame]) -> (Vec<Packaged>, Vec<DvrSegment>) {
        let mut packager = Packager::new();
        let events: Vec<Packaged> = frames.iter().flat_map(|f| packager.push(f)).collect();
        let mut starts = HashMap::new();
        let mut index = Vec::new();
        for e in &events {
            match e {
                Packaged::SegmentStart(s) => {
                    starts.insert(s.msn, *s);
                }
                Packaged::SegmentEnd(end) => {
                    let s = starts[&end.msn];
                    index.push(DvrSegment {
                        msn: end.msn,
                        duration_ms: end.duration_ms,
                        discontinuity: s.discontinuity,
                        wall_ms: s.wall_ms,
                        init_version: s.init_version,
                        target_ms: s.target_ms,
                        part_target_ms: s.part_target_ms,
                    });
                }
                _ => {}
            }
        }
        (events, index)
    }

    /// Segment `msn`'s bytes as the live packager made them.
    fn live_segment(events: &[Packaged], msn: u64) -> Bytes {
        let parts = events.iter().filter_map(|e| match e {
            Packaged::Part(p) if p.msn == msn => Some(p.bytes.to_vec()),
            _ => None,
        });
        Bytes::from(parts.flatten().collect::<Vec<u8>>())
    }

    /// An origin's DVR routes over a recording of `frames` listing `index`, counting
    /// the requests; `failing`: 503 to everything.
    struct FakeOrigin {
        addr: SocketAddr,
        index_requests: Arc<AtomicUsize>,
        segment_requests: Arc<AtomicUsize>,
    }

    async fn fake_origin(frames: Vec<crate::media::Frame>, index: Vec<DvrSegment>, failing: bool) -> FakeOrigin {
        use crate::hls::dvr;
        let (frames, index) = (Arc::new(frames), Arc::new(index));
        let index_requests = Arc::new(AtomicUsize::new(0));
        let segment_requests = Arc::new(AtomicUsize::new(0));
        let (ir, sr) = (index_requests.clone(), segment_requests.clone());
        let router = Router::new()
            .route(
                dvr::INDEX_ROUTE,
                get(move |RawQuery(q): RawQuery| async move {
                    ir.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let from: u64 = q.as_deref().and_then(|q| q.strip_prefix("from=")).unwrap().parse().unwrap();
                    let listed: Vec<DvrSegment> = index.iter().filter(|s| s.msn >= from).copied().collect();
                    dvr::encode_index(&listed).into_response()
                }),
            )
            .route(
                dvr::SEGMENT_ROUTE,
                get(move |Path((_, _, msn)): Path<(String, String, u64)>| async move {
                    sr.fetch_add(1, Ordering::Relaxed);
                    // Slow enough for concurrent requests to meet.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if failing {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let of = |m: u64| move |f: &&crate::media::Frame| f.hls.is_some_and(|h| h.msn == m);
                    let mut sent: Vec<crate::media::Frame> = frames.iter().filter(|f| f.header).cloned().collect();
                    sent.extend(frames.iter().filter(of(msn)).cloned());
                    sent.extend(frames.iter().find(of(msn + 1)).cloned());
                    dvr::encode_frames(&sent).into_response()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeOrigin { addr, index_requests, segment_requests }
    }

    #[tokio::test]
    async fn dvr_lists_and_serves_old_segments_from_the_origins() {
        let frames = crate::hls::packager::tests::stream(24);
        let (events, index) = recorded(&frames);
        assert!(index.len() >= 10, "{} segments", index.len());
        // Segment 0 is not in the recording; segment 1's duration is listed wrong.
        let mut listed = index[1..].to_vec();
        listed[0].duration_ms -= 1;
        let good = fake_origin(frames.clone(), listed.clone(), false).await;
        // The first origin answers 503 to everything: every fetch falls over.
        let bad = fake_origin(frames, Vec::new(), true).await;
        let secret = raftcast_raft::rpc::ClusterSecret::new("a-test-secret-that-is-long-enough").unwrap();
        let settings = DvrSettings { span_ms: 3_600_000, cache_bytes: 8 << 20 };
        let dvr = Dvr::new(settings, crate::peer::PeerClient::new(secret, None), [bad.addr, good.addr].into());
        let s = serve_hls(
            Hls::with_dvr(config(16), Some(dvr.clone())),
            Verifier::with_rules(Default::default(), Default::default()),
        )
        .await;
        let stream = s.stream("live", "test");
        // The window gets the live events, its init segment aside (so that the DVR
        // serves it).
        let init = events.iter().find_map(|e| match e {
            Packaged::Init(i) => Some(i.clone()),
            _ => None,
        });
        let init = init.unwrap();
        assert!(stream.apply(&s.hls, events.iter().filter(|e| !matches!(e, Packaged::Init(_))).cloned().collect()));
        let first = stream.window().media_sequence().unwrap();
        assert!(first > 4, "the window starts at {first}");

        // A request for an old segment before the index came: it waits for the first fetch.
        let r = s.get("/live/test/seg-2.m4s").await;
        assert_eq!((r.status().as_u16(), header(&r, "content-type")), (200, "video/iso.segment"));
        assert_eq!(header(&r, "cache-control"), "public, max-age=600, immutable");
        assert_eq!(r.bytes().await.unwrap(), live_segment(&events, 2), "the live packager's bytes");
        assert_eq!((bad.index_requests.load(Ordering::Relaxed), good.index_requests.load(Ordering::Relaxed)), (1, 1));
        assert_eq!(
            (bad.segment_requests.load(Ordering::Relaxed), good.segment_requests.load(Ordering::Relaxed)),
            (1, 1)
        );
        assert_eq!(dvr.stats.requests("segment", "fetched"), 1);
        // Again: from the cache, no origin asked.
        let r = s.get("/live/test/seg-2.m4s").await;
        assert_eq!(r.bytes().await.unwrap(), live_segment(&events, 2));
        assert_eq!(dvr.stats.requests("segment", "hit"), 1);
        assert_eq!(good.segment_requests.load(Ordering::Relaxed), 1);

        // The playlist lists the recording from 1 up to the window, then the window.
        let text = s.get("/live/test/index.m3u8").await.text().await.unwrap();
        let entries = stream.dvr_index().entries();
        assert_eq!(text, playlist::render_with_query(&stream.window(), &entries, 3_600_000, None).unwrap());
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{text}");
        let uris: Vec<&str> = text.lines().filter(|l| l.starts_with("seg-")).collect();
        let expected: Vec<String> = (1..=index.last().unwrap().msn).map(|m| format!("seg-{m}.m4s")).collect();
        assert_eq!(uris, expected);

        // Concurrent requests for one segment share one fetch.
        let get = |path: &'static str| {
            let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
            tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap() })
        };
        let all = [get("/live/test/seg-3.m4s"), get("/live/test/seg-3.m4s"), get("/live/test/seg-3.m4s")];
        for r in all {
            assert_eq!(r.await.unwrap(), live_segment(&events, 3));
        }
        assert_eq!(good.segment_requests.load(Ordering::Relaxed), 2);

        // Not listed: 404 without asking any origin; parts of old segments are not served.
        let asked = good.segment_requests.load(Ordering::Relaxed) + bad.segment_requests.load(Ordering::Relaxed);
        for path in ["seg-0.m4s", "part-2.0.m4s", &format!("init-{}.mp4", init.version.wrapping_add(1))] {
            let r = s.get(&format!("/live/test/{path}")).await;
            assert_eq!(r.status(), 404, "{path}");
        }
        assert_eq!(good.segment_requests.load(Ordering::Relaxed) + bad.segment_requests.load(Ordering::Relaxed), asked);

        // The init segment the window does not have: packaged with segment 2, cached.
        let r = s.get(&format!("/live/test/init-{}.mp4", init.version)).await;
        assert_eq!((r.status().as_u16(), header(&r, "content-type")), (200, "video/mp4"));
        assert_eq!(r.bytes().await.unwrap(), init.bytes);
        assert_eq!(dvr.stats.requests("init", "hit"), 1);

        // Frames that do not make the listed segment (its duration differs): 502.
        let r = s.get("/live/test/seg-1.m4s").await;
        assert_eq!(r.status(), 502);
        assert_eq!(dvr.stats.requests("segment", "failed"), 1);
        assert_eq!(s.hls.stats.requests("segment", 502), 1);

        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(HlsMetrics(s.hls.clone())));
        let metrics = crate::metrics::encode(&registry, |_| {});
        for line in [
            "edge_hls_dvr_requests_total{kind=\"segment\",outcome=\"hit\"} 1\n",
            "edge_hls_dvr_requests_total{kind=\"segment\",outcome=\"fetched\"} 4\n",
            "edge_hls_dvr_requests_total{kind=\"segment\",outcome=\"failed\"} 1\n",
            "edge_hls_dvr_requests_total{kind=\"init\",outcome=\"hit\"} 1\n",
            "edge_hls_dvr_index_fetches_total{outcome=\"ok\"} 1\n",
            "edge_hls_dvr_fetch_seconds_count 6\n",
        ] {
            assert!(metrics.contains(line), "{line} not in\n{metrics}");
        }
        let cached = live_segment(&events, 2).len() + live_segment(&events, 3).len() + init.bytes.len();
        assert!(metrics.contains(&format!("edge_hls_dvr_cache_bytes {cached}\n")), "{metrics}");
    }

    #[tokio::test]
    async fn without_dvr_an_old_segment_is_a_404_and_the_playlist_is_unchanged() {
        let s = serve_routes(config(16)).await;
        let stream = s.stream("live", "test");
        live(&stream, &s.hls);
        assert_eq!(s.get("/live/test/seg-0.m4s").await.status(), 200);
        let mut events = Vec::new();
        for msn in 4..12 {
            events.extend([start(msn, 0), part(msn, 0, 10), end(msn, 1)]);
        }
        stream.apply(&s.hls, events);
        assert_eq!(s.get("/live/test/seg-0.m4s").await.status(), 404);
        assert!(!s.hls.refresh_dvr(&stream));
        let text = s.get("/live/test/index.m3u8").await.text().await.unwrap();
        assert_eq!(text, playlist::render(&stream.window()).unwrap());
    }

    fn edge_config() -> crate::edge::EdgeConfig {
        let args = crate::edge::EdgeArgs {
            id: Some("edge-1".into()),
            // The discard port: nothing answers, lookups fail at once.
            origins: Some(vec!["127.0.0.1:9".parse().unwrap()]),
            ..Default::default()
        };
        crate::edge::EdgeConfig::from_args(args, |k| (k == "RAFTCAST_CLUSTER_SECRET").then(|| "x".repeat(20))).unwrap()
    }

    #[tokio::test]
    async fn an_idle_hls_stream_lets_go_of_its_relay() {
        let mut config = edge_config();
        config.hls_serve.idle = Duration::from_millis(200);
        let ctx = crate::edge::tests::context(config);
        let key = StreamKey::new("live", "idle").unwrap();
        let stream = ctx.hls.stream(&key, &RelayFeed(ctx.clone())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctx.relays.snapshot().is_empty() {
            assert!(Instant::now() < deadline, "the task never joined the relay");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nobody asks again: the task retires the stream and drops its lease.
        while !ctx.relays.snapshot().is_empty() || ctx.hls.stream_count() > 0 {
            assert!(Instant::now() < deadline, "the idle stream is still packaged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(stream.stop.is_cancelled());
        ctx.shutdown.cancel();
    }

    #[tokio::test]
    async fn an_edge_with_hls_dvr_secs_has_live_rewind_and_its_metrics() {
        assert!(crate::edge::tests::context(edge_config()).hls.dvr.is_none(), "off by default");
        let args = crate::edge::EdgeArgs {
            id: Some("edge-1".into()),
            origins: Some(vec!["127.0.0.1:9".parse().unwrap()]),
            hls_dvr_secs: Some(600),
            ..Default::default()
        };
        let secret = |k: &str| (k == "RAFTCAST_CLUSTER_SECRET").then(|| "x".repeat(20));
        let ctx = crate::edge::tests::context(crate::edge::EdgeConfig::from_args(args, secret).unwrap());
        assert_eq!(ctx.hls.dvr.as_ref().map(|d| d.span_ms()), Some(600_000));
        let page = ctx.metrics.render();
        assert!(page.contains("edge_hls_dvr_cache_bytes 0\n") && page.contains("edge_hls_dvr_fetch_seconds_count 0\n"));
        ctx.shutdown.cancel();
    }

    #[tokio::test]
    async fn the_edge_router_takes_the_hls_routes() {
        let config = edge_config();
        assert_eq!((config.hls_serve.window.segments, config.hls_serve.idle), (6, Duration::from_secs(30)));
        let ctx = crate::edge::tests::context(config);
        // Building the router checks the routes do not clash (axum panics if they do).
        let router = crate::edge::http::router(ctx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::http_server::serve(listener, router, ctx.limits.http.clone(), ctx.shutdown.clone()));
        let status = |path: &'static str| {
            let url = format!("{base}{path}");
            async move { reqwest::get(url).await.unwrap().status().as_u16() }
        };
        // Static routes of the same depth win over the HLS ones: POST-only is a 405.
        assert_eq!(status("/shared-objects/chat/messages").await, 405);
        assert_eq!(status("/health").await, 200);
        assert_eq!(status("/live/test/nothing.txt").await, 404);
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        assert!(r.contains("edge_hls_streams 0\n") && r.contains("edge_limit_in_use{class=\"hls_waiting\"} 0"));
        ctx.shutdown.cancel();
    }
}
