//! Live rewind (DVR) at the origins: the old segments of a stream, found through the
//! marks beside its recorded pieces ([`super::marks`]) and given back to edges as the
//! frames they package (`crate::hls::dvr`, `docs/vod.md`, "Live rewind").
//!
//! - [`Scanner`] (sans-IO): from a piece's mark records, in order, the segments the
//!   piece holds whole — an opening, every tag up to the next segment's opening, and
//!   the codec headers in effect at the opening. A growing piece is scanned
//!   incrementally: only the records added since the last scan are read.
//! - [`Scans`]: the scanners of the pieces this origin has, an LRU of
//!   [`SCANNED_PIECES`]; reads are blocking and run on the blocking pool.
//! - Piece-level routes (origin to origin, only from this origin's own files):
//!   [`PIECE_INDEX_ROUTE`], [`PIECE_SEGMENT_ROUTE`], [`MARKS_ROUTE`].
//! - Stream-level routes (edge to any origin): [`dvr::INDEX_ROUTE`] and
//!   [`dvr::SEGMENT_ROUTE`], from every piece of every recording of the stream, local
//!   or asked of the origins holding it; where pieces overlap (a failover's re-sent
//!   frames) the piece with the highest epoch answers.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use raftcast_raft::recording::Piece;
use raftcast_raft::StreamKey;

use super::files;
use super::flv_file::TagReader;
use super::marks::{self, MarkRecord};
use super::{lock, Recorder};
use crate::hls::dvr::{self, DvrSegment};
use crate::media::{Frame, FrameKind};
use crate::rtmp::flv::{self, TAG_AUDIO, TAG_VIDEO};

/// A piece's DVR index (cluster secret): `?from={msn}`, its whole segments with
/// `msn >= from`, the newest [`dvr::MAX_INDEX`] of them (`dvr::encode_index`).
pub const PIECE_INDEX_ROUTE: &str = "/internal/recordings/{epoch}/dvr";
/// The frames of one segment of a piece (cluster secret, `dvr::encode_frames`).
pub const PIECE_SEGMENT_ROUTE: &str = "/internal/recordings/{epoch}/dvr/{msn}";
/// A piece's raw marks file (cluster secret): what a replica fetches with the piece.
pub const MARKS_ROUTE: &str = "/internal/recordings/{epoch}/marks";

/// Pieces whose scan is kept in memory (least recently used dropped first).
pub const SCANNED_PIECES: usize = 256;
/// Remote indexes of finished pieces kept in memory.
pub const REMOTE_PIECES: usize = 256;
/// How long an origin waits for another's index of a piece.
const INDEX_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an origin waits for another's frames of one segment.
const FRAMES_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest index body accepted from a peer: a count and [`dvr::MAX_INDEX`] entries.
const INDEX_BODY_MAX: usize = 4 + dvr::MAX_INDEX * 36;
/// Mark records read at a time when scanning.
const SCAN_RECORDS: usize = 4096;
/// What the frames body adds to a tag at most (kind, flags, timestamp, the longest
/// mark, the length), beyond the tag's own 15 bytes of header and back pointer.
const FRAME_OVERHEAD: u64 = 64;

/// The bytes of the URL path of a piece's index, from `from` on.
pub fn piece_index_path(epoch: u64, from: u64) -> String {
    format!("/internal/recordings/{epoch}/dvr?from={from}")
}

/// The URL path of the frames of segment `msn` of a piece.
pub fn piece_segment_path(epoch: u64, msn: u64) -> String {
    format!("/internal/recordings/{epoch}/dvr/{msn}")
}

/// The URL path of a piece's marks.
pub fn marks_path(epoch: u64) -> String {
    format!("/internal/recordings/{epoch}/marks")
}

/// Where a tag lies in a piece: from its offset to the end of its back pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagLoc {
    pub offset: u64,
    pub end: u64,
}

/// A whole segment of a piece and where its frames are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLoc {
    pub segment: DvrSegment,
    /// The codec headers in effect at its opening (video and audio, in file order).
    pub headers: Vec<TagLoc>,
    /// Indexes of the mark records of its opening and of the next segment's opening.
    pub first: u64,
    pub last: u64,
    /// From its opening's tag to the end of the next opening's tag.
    pub span: TagLoc,
}

/// Gives the init version of a segment from the codec headers in effect and its
/// opening record (whose tag ends at the `u64`), reading their tags.
pub type InitOf<'a> = dyn FnMut(&[TagLoc], &MarkRecord, u64) -> Option<u32> + 'a;

/// The segment being followed while scanning.
#[derive(Debug, Clone)]
struct Open {
    opener: MarkRecord,
    opener_end: u64,
    index: u64,
    headers: Vec<TagLoc>,
    part: u32,
    /// No part skipped, no stray mark between its opening and the record scanned.
    whole: bool,
}

/// The segments of one piece, from its mark records fed in order (sans-IO).
#[derive(Debug, Default)]
pub struct Scanner {
    /// Records consumed so far; the offset of the last one and where its tag ends.
    consumed: u64,
    last_offset: u64,
    last_end: u64,
    /// The latest codec header of each track (audio, video).
    headers: [Option<TagLoc>; 2],
    open: Option<Open>,
    segments: BTreeMap<u64, SegmentLoc>,
    /// Scanned from a complete piece to its end: nothing more will come.
    done: bool,
}

impl Scanner {
    /// Records consumed so far.
    #[cfg(test)]
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The whole segments found so far, by msn.
    #[cfg(test)]
    pub fn segments(&self) -> &BTreeMap<u64, SegmentLoc> {
        &self.segments
    }

    /// Consumes the next record, whose tag ends at `end` (and is on disk). `init`
    /// gives the init version of a segment from the headers in effect and its opening
    /// (reading them); a segment without one is not listed (it cannot be packaged).
    pub fn feed(&mut self, record: MarkRecord, end: u64, init: &mut InitOf<'_>) {
        let index = self.consumed;
        self.consumed += 1;
        self.last_offset = record.offset;
        self.last_end = end;
        let here = TagLoc { offset: record.offset, end };
        if record.header {
            match record.tag_type {
                TAG_AUDIO => self.headers[0] = Some(here),
                TAG_VIDEO => self.headers[1] = Some(here),
                _ => {}
            }
            return;
        }
        if record.opens_segment() {
            if let Some(open) = self.open.take() {
                if open.whole && record.msn == open.opener.msn.wrapping_add(1) {
                    self.close(open, &record, index, end, init);
                }
            }
            let mut headers: Vec<TagLoc> = self.headers.iter().flatten().copied().collect();
            headers.sort_by_key(|h| h.offset);
            self.open = Some(Open { opener: record, opener_end: end, index, headers, part: 0, whole: true });
            return;
        }
        let Some(open) = &mut self.open else { return };
        let Some(mark) = record.mark() else { return };
        if mark.msn != open.opener.msn {
            open.whole = false;
        } else if record.kind == marks::Kind::Marked {
            open.whole &= mark.part == open.part;
        } else {
            // A part opens: the next one, never a skipped or repeated one.
            open.whole &= mark.part == open.part.wrapping_add(1);
            open.part = mark.part;
        }
    }

    fn close(&mut self, open: Open, next: &MarkRecord, index: u64, end: u64, init: &mut InitOf<'_>) {
        let duration_ms = next.time_ms.saturating_sub(open.opener.time_ms).min(u64::from(u32::MAX)) as u32;
        if let Some(loc) = self.locate(open, index, end, duration_ms, init) {
            self.segments.insert(loc.segment.msn, loc);
        }
    }

    /// The piece is complete and every record was consumed: the segment still open,
    /// if whole, ended with the piece (its publishing session ended there, and the live
    /// packager ended it with `finish`). Its `EXTINF` is what [`dvr::package`] makes of
    /// its frames, which `duration` reads.
    fn close_ended(&mut self, init: &mut InitOf<'_>, duration: impl FnOnce(&SegmentLoc) -> Option<u32>) {
        let Some(open) = self.open.take() else { return };
        let (last, end) = (self.consumed.saturating_sub(1), self.last_end);
        let Some(mut loc) = self.locate(open, last, end, 0, init) else { return };
        let Some(duration_ms) = duration(&loc) else { return };
        loc.segment.duration_ms = duration_ms;
        self.segments.insert(loc.segment.msn, loc);
    }

    /// Where the segment `open` lies if its frames run through record `last`, whose
    /// tag ends at `end`; `None` when it cannot be listed (not whole, listed already,
    /// too large, no init segment).
    fn locate(&self, open: Open, last: u64, end: u64, duration_ms: u32, init: &mut InitOf<'_>) -> Option<SegmentLoc> {
        let msn = open.opener.msn;
        if !open.whole || self.segments.contains_key(&msn) {
            // Not whole; or replayed after the publisher's link came back to the same
            // piece.
            return None;
        }
        let frames = last - open.index + 1 + open.headers.len() as u64;
        let bytes = end - open.opener.offset + open.headers.iter().map(|h| h.end - h.offset).sum::<u64>();
        if frames > dvr::MAX_FRAMES as u64 || bytes + frames * FRAME_OVERHEAD + 4 > dvr::MAX_SEGMENT_BYTES as u64 {
            return None;
        }
        let init_version = init(&open.headers, &open.opener, open.opener_end)?;
        let segment = DvrSegment {
            msn,
            duration_ms,
            discontinuity: open.opener.discontinuity,
            wall_ms: open.opener.wall_ms,
            init_version,
            target_ms: open.opener.target_ms,
            part_target_ms: open.opener.part_target_ms,
        };
        Some(SegmentLoc {
            segment,
            headers: open.headers,
            first: open.index,
            last,
            span: TagLoc { offset: open.opener.offset, end },
        })
    }
}

/// Why a local piece could not be read for DVR.
#[derive(Debug, thiserror::Error)]
pub enum DvrReadError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("piece {0}: its marks and its tags disagree")]
    Mismatch(u64),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DvrReadError {
    let path = path.display().to_string();
    move |source| DvrReadError::Io { what, path, source }
}

/// The piece file of `epoch` here: complete (`true`) or being written.
fn open_piece(dir: &Path, epoch: u64) -> Option<(File, bool)> {
    if let Ok(file) = File::open(files::piece_path(dir, epoch)) {
        return Some((file, true));
    }
    File::open(files::part_path(dir, epoch)).ok().map(|f| (f, false))
}

fn read_at(file: &File, path: &Path, at: u64, len: u64) -> Result<Vec<u8>, DvrReadError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, at).map_err(io("reading", path))?;
    Ok(buf)
}

/// Parses the tags of `bytes`, which start at a tag boundary: one frame per tag.
fn tags(bytes: &[u8]) -> TagReader {
    let mut reader = TagReader::new();
    reader.push(&flv::FILE_HEADER);
    reader.push(bytes);
    reader
}

/// The frame of the tag at `loc`.
fn read_tag(file: &File, path: &Path, epoch: u64, loc: TagLoc) -> Result<Frame, DvrReadError> {
    let bytes = read_at(file, path, loc.offset, loc.end.saturating_sub(loc.offset))?;
    let mut reader = tags(&bytes);
    match reader.next_frame() {
        Ok(Some(frame)) if reader.complete_len() == flv::FILE_HEADER.len() as u64 + bytes.len() as u64 => Ok(frame),
        _ => Err(DvrReadError::Mismatch(epoch)),
    }
}

fn kind_matches(frame: &Frame, record: &MarkRecord) -> bool {
    let kind = match record.tag_type {
        TAG_AUDIO => FrameKind::Audio,
        TAG_VIDEO => FrameKind::Video,
        _ => FrameKind::Data,
    };
    frame.kind == kind
}

/// Brings `scanner` up to what the piece of `epoch` holds on disk now. `false` when
/// the piece is not here, or has no marks.
fn scan(dir: &Path, epoch: u64, scanner: &mut Scanner) -> Result<bool, DvrReadError> {
    let Some((piece, complete)) = open_piece(dir, epoch) else { return Ok(false) };
    let marks_path = files::marks_path(dir, epoch);
    let marks = match File::open(&marks_path) {
        Ok(marks) => marks,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("opening", &marks_path)(e)),
    };
    if scanner.done {
        return Ok(true);
    }
    let piece_path = if complete { files::piece_path(dir, epoch) } else { files::part_path(dir, epoch) };
    // Tags beyond this length are not (wholly) on disk yet.
    let len = piece.metadata().map_err(io("opening", &piece_path))?.len();
    let marks_len = marks.metadata().map_err(io("opening", &marks_path))?.len();
    let mut init = |headers: &[TagLoc], opener: &MarkRecord, end: u64| -> Option<u32> {
        let headers: Vec<Frame> =
            headers.iter().map(|h| read_tag(&piece, &piece_path, epoch, *h)).collect::<Result<_, _>>().ok()?;
        let mut opening = read_tag(&piece, &piece_path, epoch, TagLoc { offset: opener.offset, end }).ok()?;
        opening.hls = opener.mark();
        dvr::init_version(&headers, &opening)
    };
    // A record is consumed once the next one says where its tag ends; the last one's
    // end is read from its tag header.
    let mut pending: Option<MarkRecord> = None;
    let mut at = scanner.consumed;
    let mut incomplete = false;
    'read: loop {
        let start = at * marks::RECORD as u64;
        let want = (marks_len.saturating_sub(start) / marks::RECORD as u64).min(SCAN_RECORDS as u64);
        if want == 0 {
            break;
        }
        let bytes = read_at(&marks, &marks_path, start, want * marks::RECORD as u64)?;
        let after = pending.map_or(scanner.last_offset, |p| p.offset);
        let records = marks::decode_all(&bytes, after);
        for record in &records {
            if record.offset > len {
                // The tag before it is not wholly on disk yet (marks may be ahead).
                incomplete = true;
                break 'read;
            }
            if let Some(p) = pending.replace(*record) {
                scanner.feed(p, record.offset, &mut init);
            }
        }
        at += records.len() as u64;
        if (records.len() as u64) < want {
            break; // a torn or damaged record: nothing after it is trusted
        }
    }
    if let Some(last) = pending.filter(|_| !incomplete) {
        if let Ok(h) = read_at(&piece, &piece_path, last.offset, flv::TAG_HEADER as u64) {
            let mut raw = [0u8; flv::TAG_HEADER];
            raw.copy_from_slice(&h);
            let header = flv::TagHeader::parse(&raw);
            let end = last.offset + header.total();
            if header.tag_type == last.tag_type && end <= len {
                scanner.feed(last, end, &mut init);
            }
        }
    }
    // A complete piece whose every record was consumed is scanned for good; its last
    // segment ended with it.
    let done = complete && scanner.consumed * marks::RECORD as u64 == marks_len - marks_len % marks::RECORD as u64;
    if done {
        scanner.close_ended(&mut init, |loc| {
            let frames = read_segment(dir, epoch, loc).ok()??;
            dvr::package(loc.segment.msn, &frames).map(|m| m.duration_ms)
        });
    }
    scanner.done = done;
    Ok(true)
}

/// The frames of the segment at `loc` of the piece of `epoch`, with their marks: the
/// headers in effect, then every tag from its opening to the next one's, inclusive.
fn read_segment(dir: &Path, epoch: u64, loc: &SegmentLoc) -> Result<Option<Vec<Frame>>, DvrReadError> {
    let Some((piece, complete)) = open_piece(dir, epoch) else { return Ok(None) };
    let piece_path = if complete { files::piece_path(dir, epoch) } else { files::part_path(dir, epoch) };
    let marks_path = files::marks_path(dir, epoch);
    let Ok(marks) = File::open(&marks_path) else { return Ok(None) };
    let count = loc.last - loc.first + 1;
    let records = read_at(&marks, &marks_path, loc.first * marks::RECORD as u64, count * marks::RECORD as u64)?;
    let records = marks::decode_all(&records, 0);
    if records.len() as u64 != count || records[0].offset != loc.span.offset {
        return Err(DvrReadError::Mismatch(epoch));
    }
    let mut frames = Vec::with_capacity(loc.headers.len() + records.len());
    for h in &loc.headers {
        frames.push(read_tag(&piece, &piece_path, epoch, *h)?);
    }
    let bytes = read_at(&piece, &piece_path, loc.span.offset, loc.span.end - loc.span.offset)?;
    let mut reader = tags(&bytes);
    let base = loc.span.offset - flv::FILE_HEADER.len() as u64;
    for record in &records {
        // The record's tag starts where the previous one ended.
        let at = base + reader.complete_len().max(flv::FILE_HEADER.len() as u64);
        match reader.next_frame() {
            Ok(Some(mut frame)) if at == record.offset && kind_matches(&frame, record) => {
                // As the frame was when recorded (a data tag's header flag is not in
                // its bytes alone).
                frame.header = record.header;
                frame.hls = record.mark();
                frames.push(frame);
            }
            _ => return Err(DvrReadError::Mismatch(epoch)),
        }
    }
    if base + reader.complete_len() != loc.span.end {
        return Err(DvrReadError::Mismatch(epoch));
    }
    Ok(Some(frames))
}

/// A small least-recently-used map.
struct Lru<V> {
    entries: HashMap<u64, (u64, V)>,
    tick: u64,
    bound: usize,
}

impl<V: Clone> Lru<V> {
    fn new(bound: usize) -> Lru<V> {
        Lru { entries: HashMap::new(), tick: 0, bound }
    }

    fn get(&mut self, key: u64) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|(used, v)| {
            *used = tick;
            v.clone()
        })
    }

    fn insert(&mut self, key: u64, value: V) {
        self.tick += 1;
        self.entries.insert(key, (self.tick, value));
        while self.entries.len() > self.bound {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| *k) else { break };
            self.entries.remove(&oldest);
        }
    }

    fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.get(key) {
            return v;
        }
        let v = make();
        self.insert(key, v.clone());
        v
    }
}

/// The scanners of this origin's pieces, by epoch.
pub struct Scans {
    dir: std::path::PathBuf,
    scanners: Mutex<Lru<Arc<Mutex<Scanner>>>>,
}

impl Scans {
    pub fn new(dir: std::path::PathBuf) -> Scans {
        Scans { dir, scanners: Mutex::new(Lru::new(SCANNED_PIECES)) }
    }

    fn scanner(&self, epoch: u64) -> Arc<Mutex<Scanner>> {
        lock(&self.scanners).get_or_insert_with(epoch, Arc::default)
    }

    /// The whole segments of the local piece of `epoch` (`None`: not here, or without
    /// marks). Blocking.
    pub fn index(&self, epoch: u64) -> Result<Option<Vec<DvrSegment>>, DvrReadError> {
        let scanner = self.scanner(epoch);
        let mut scanner = lock(&scanner);
        if !scan(&self.dir, epoch, &mut scanner)? {
            return Ok(None);
        }
        Ok(Some(scanner.segments.values().map(|l| l.segment).collect()))
    }

    /// The frames of segment `msn` of the local piece of `epoch` (`None`: not here, or
    /// not a whole segment of it). Blocking.
    pub fn frames(&self, epoch: u64, msn: u64) -> Result<Option<Vec<Frame>>, DvrReadError> {
        let scanner = self.scanner(epoch);
        let loc = {
            let mut scanner = lock(&scanner);
            if !scan(&self.dir, epoch, &mut scanner)? {
                return Ok(None);
            }
            scanner.segments.get(&msn).cloned()
        };
        match loc {
            Some(loc) => read_segment(&self.dir, epoch, &loc),
            None => Ok(None),
        }
    }
}

/// The newest [`dvr::MAX_INDEX`] of `segments` (in increasing msn) with `msn >= from`.
fn newest_from(segments: impl DoubleEndedIterator<Item = DvrSegment>, from: u64) -> Vec<DvrSegment> {
    let mut out: Vec<DvrSegment> = segments.rev().take_while(|s| s.msn >= from).take(dvr::MAX_INDEX).collect();
    out.reverse();
    out
}

/// Merges the indexes of pieces: per msn, the piece with the highest epoch wins; the
/// newest [`dvr::MAX_INDEX`] with `msn >= from`.
pub fn merge(indexes: &[(u64, Vec<DvrSegment>)], from: u64) -> Vec<DvrSegment> {
    let mut by_msn: BTreeMap<u64, (u64, DvrSegment)> = BTreeMap::new();
    for (epoch, segments) in indexes {
        for s in segments.iter().filter(|s| s.msn >= from) {
            match by_msn.get(&s.msn) {
                Some((e, _)) if e > epoch => {}
                _ => {
                    by_msn.insert(s.msn, (*epoch, *s));
                }
            }
        }
    }
    newest_from(by_msn.into_values().map(|(_, s)| s), from)
}

/// A decimal number and nothing else (no sign, no space, no overflow).
pub fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `from` of an index query: none at all is 0, else exactly `from={digits}`.
pub fn parse_from(query: Option<&str>) -> Option<u64> {
    match query {
        None | Some("") => Some(0),
        Some(q) => digits(q.strip_prefix("from=")?),
    }
}

/// What the DVR routes need: the recorder (its folder, peers, catalog and counters),
/// the local scans and the remote indexes of finished pieces.
#[derive(Clone)]
pub struct DvrServer {
    recorder: Recorder,
    scans: Arc<Scans>,
    remote: Arc<Mutex<Lru<Arc<Vec<DvrSegment>>>>>,
}

impl DvrServer {
    pub fn new(recorder: Recorder) -> DvrServer {
        let scans = Arc::new(Scans::new(recorder.dir().to_owned()));
        DvrServer { recorder, scans, remote: Arc::new(Mutex::new(Lru::new(REMOTE_PIECES))) }
    }

    async fn local_index(&self, epoch: u64) -> Option<Vec<DvrSegment>> {
        let scans = self.scans.clone();
        match tokio::task::spawn_blocking(move || scans.index(epoch)).await {
            Ok(Ok(index)) => index,
            Ok(Err(e)) => {
                tracing::warn!(epoch, error = %e, "a piece's marks could not be scanned");
                None
            }
            Err(_) => None,
        }
    }

    async fn local_frames(&self, epoch: u64, msn: u64) -> Result<Option<Bytes>, DvrReadError> {
        let scans = self.scans.clone();
        let frames = tokio::task::spawn_blocking(move || scans.frames(epoch, msn)).await.map_err(|e| {
            DvrReadError::Io { what: "reading", path: epoch.to_string(), source: std::io::Error::other(e) }
        })?;
        Ok(frames?.map(|f| dvr::encode_frames(&f)))
    }

    /// Origins that may have the piece's file: its holders, then its owner.
    fn sources(&self, piece: &Piece) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for o in piece.holders.iter().copied().chain(std::iter::once(piece.owner)) {
            if o != self.recorder.id() && !out.contains(&o) {
                out.push(o);
            }
        }
        out
    }

    /// The index of `piece` from `from` on: local, cached, or asked of the origins
    /// holding it. `Err` when it is not here and nobody holding it answered.
    async fn piece_index(&self, piece: &Piece, from: u64) -> Result<Vec<DvrSegment>, String> {
        let epoch = piece.epoch;
        if let Some(index) = self.local_index(epoch).await {
            return Ok(newest_from(index.into_iter(), from));
        }
        let finished = piece.finished.is_some();
        if finished {
            if let Some(index) = lock(&self.remote).get(epoch) {
                return Ok(newest_from(index.iter().copied(), from));
            }
        }
        // A finished piece is asked whole once (immutable: cached); one being written
        // from `from` on each time.
        let ask_from = if finished { 0 } else { from };
        let mut why = String::from("no other origin holds it");
        for origin in self.sources(piece) {
            let Some(http) = self.recorder.http_of(origin) else { continue };
            let url = self.recorder.peers().url(&http, &piece_index_path(epoch, ask_from));
            let res = self.recorder.peers().get(url).timeout(INDEX_TIMEOUT).send().await;
            let body = match res {
                Ok(res) if res.status().is_success() => bounded_body(res, INDEX_BODY_MAX).await,
                Ok(res) => {
                    why = format!("origin {origin} answered {}", res.status());
                    continue;
                }
                Err(e) => {
                    why = format!("origin {origin}: {e}");
                    continue;
                }
            };
            match body.and_then(|b| dvr::decode_index(b).map_err(|e| e.to_string())) {
                Ok(index) => {
                    let index = Arc::new(index);
                    if finished {
                        lock(&self.remote).insert(epoch, index.clone());
                    }
                    return Ok(newest_from(index.iter().copied(), from));
                }
                Err(e) => why = format!("origin {origin}: {e}"),
            }
        }
        Err(why)
    }

    /// The frames body of segment `msn` of `piece`: local, or asked of the origins
    /// holding it.
    async fn piece_frames(&self, piece: &Piece, msn: u64) -> Result<Bytes, String> {
        let epoch = piece.epoch;
        match self.local_frames(epoch, msn).await {
            Ok(Some(body)) => return Ok(body),
            Ok(None) => {}
            Err(e) => tracing::warn!(epoch, msn, error = %e, "a DVR segment could not be read here"),
        }
        let mut why = String::from("no other origin holds it");
        for origin in self.sources(piece) {
            let Some(http) = self.recorder.http_of(origin) else { continue };
            let url = self.recorder.peers().url(&http, &piece_segment_path(epoch, msn));
            match self.recorder.peers().get(url).timeout(FRAMES_TIMEOUT).send().await {
                Ok(res) if res.status().is_success() => match bounded_body(res, dvr::MAX_SEGMENT_BYTES).await {
                    // Passed on as it came, once it parses as what an edge accepts.
                    Ok(body) => match dvr::decode_frames(body.clone()) {
                        Ok(_) => return Ok(body),
                        Err(e) => why = format!("origin {origin}: {e}"),
                    },
                    Err(e) => why = format!("origin {origin}: {e}"),
                },
                Ok(res) => why = format!("origin {origin} answered {}", res.status()),
                Err(e) => why = format!("origin {origin}: {e}"),
            }
        }
        Err(why)
    }

    /// Every piece of every recording of `key`, newest epoch first; `None` when the
    /// stream has no recording.
    fn pieces_of(&self, key: &StreamKey) -> Option<Vec<Piece>> {
        let (any, mut pieces) = self.recorder.inner.state.read(|sm| {
            let mut any = false;
            let mut pieces: Vec<Piece> = Vec::new();
            for r in sm.recordings.catalog.values().filter(|r| &r.stream == key) {
                any = true;
                pieces.extend(r.pieces.iter().cloned());
            }
            (any, pieces)
        });
        if !any {
            return None;
        }
        pieces.sort_by_key(|p| std::cmp::Reverse(p.epoch));
        Some(pieces)
    }
}

/// A response body of at most `max` bytes.
async fn bounded_body(res: reqwest::Response, max: usize) -> Result<Bytes, String> {
    if res.content_length().is_some_and(|l| l > max as u64) {
        return Err("a body too large".into());
    }
    let mut body = BytesMut::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > max {
            return Err("a body too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn refused(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

fn binary(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

fn admitted(server: &DvrServer, headers: &HeaderMap) -> bool {
    server.recorder.peers().secret().admits(headers)
}

/// [`PIECE_INDEX_ROUTE`]: 401 without the cluster secret, 400 for a malformed epoch
/// or query, 404 when the piece is not here (or has no marks), else the index.
pub async fn piece_index_route(
    State(server): State<DvrServer>,
    headers: HeaderMap,
    UrlPath(epoch): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !admitted(&server, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret");
    }
    let (Some(epoch), Some(from)) = (digits(&epoch), parse_from(query.as_deref())) else {
        return refused(StatusCode::BAD_REQUEST, "a piece is named by its epoch; ?from={msn}");
    };
    match server.local_index(epoch).await {
        Some(index) => {
            server.recorder.inner.stats.dvr_index_requests.inc();
            binary(dvr::encode_index(&newest_from(index.into_iter(), from)))
        }
        None => refused(StatusCode::NOT_FOUND, "no such piece here"),
    }
}

/// [`PIECE_SEGMENT_ROUTE`]: 401, 400 as above; 404 when the piece is not here or
/// holds no whole segment `msn`; else its frames.
pub async fn piece_segment_route(
    State(server): State<DvrServer>,
    headers: HeaderMap,
    UrlPath((epoch, msn)): UrlPath<(String, String)>,
) -> Response {
    if !admitted(&server, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret");
    }
    let (Some(epoch), Some(msn)) = (digits(&epoch), digits(&msn)) else {
        return refused(StatusCode::BAD_REQUEST, "a piece is named by its epoch, a segment by its msn");
    };
    match server.local_frames(epoch, msn).await {
        Ok(Some(body)) => {
            let stats = &server.recorder.inner.stats;
            stats.dvr_segment_requests.inc();
            stats.dvr_bytes_served.inc_by(body.len() as u64);
            binary(body)
        }
        Ok(None) => refused(StatusCode::NOT_FOUND, "no such segment here"),
        Err(e) => {
            tracing::warn!(epoch, msn, error = %e, "a DVR segment could not be read");
            refused(StatusCode::INTERNAL_SERVER_ERROR, "the segment could not be read")
        }
    }
}

/// [`MARKS_ROUTE`]: the raw marks of a piece here (401, 400 as above; 404 when there
/// are none).
pub async fn marks_route(
    State(server): State<DvrServer>,
    headers: HeaderMap,
    UrlPath(epoch): UrlPath<String>,
) -> Response {
    if !admitted(&server, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret");
    }
    let Some(epoch) = digits(&epoch) else {
        return refused(StatusCode::BAD_REQUEST, "a piece is named by its epoch");
    };
    match tokio::fs::File::open(files::marks_path(server.recorder.dir(), epoch)).await {
        Ok(file) => {
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Err(_) => refused(StatusCode::NOT_FOUND, "no marks of such a piece here"),
    }
}

/// [`dvr::INDEX_ROUTE`]: 401, 400 for a malformed stream or query, 404 when the
/// stream has no recording, else the merged index of its pieces (those nobody
/// holding them answered for are left out).
pub async fn index_route(
    State(server): State<DvrServer>,
    headers: HeaderMap,
    UrlPath((app, name)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if !admitted(&server, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret");
    }
    let (Ok(key), Some(from)) = (StreamKey::new(&app, &name), parse_from(query.as_deref())) else {
        return refused(StatusCode::BAD_REQUEST, "a stream is app/name; ?from={msn}");
    };
    let Some(pieces) = server.pieces_of(&key) else {
        return refused(StatusCode::NOT_FOUND, "no recording of this stream");
    };
    let asked = pieces.iter().map(|p| {
        let server = server.clone();
        async move { (p.epoch, server.piece_index(p, from).await) }
    });
    let mut indexes = Vec::new();
    for (epoch, index) in futures::future::join_all(asked).await {
        match index {
            Ok(index) => indexes.push((epoch, index)),
            Err(why) => tracing::debug!(epoch, why, "a piece's DVR index is unavailable"),
        }
    }
    server.recorder.inner.stats.dvr_index_requests.inc();
    binary(dvr::encode_index(&merge(&indexes, from)))
}

/// [`dvr::SEGMENT_ROUTE`]: 401, 400 as above; the frames of segment `msn` from the
/// newest piece whose index has it; 404 when none has it (or the stream has no
/// recording), 503 when the only pieces that might have it cannot be read now.
pub async fn segment_route(
    State(server): State<DvrServer>,
    headers: HeaderMap,
    UrlPath((app, name, msn)): UrlPath<(String, String, String)>,
) -> Response {
    if !admitted(&server, &headers) {
        return refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret");
    }
    let (Ok(key), Some(msn)) = (StreamKey::new(&app, &name), digits(&msn)) else {
        return refused(StatusCode::BAD_REQUEST, "a stream is app/name, a segment its msn");
    };
    let Some(pieces) = server.pieces_of(&key) else {
        return refused(StatusCode::NOT_FOUND, "no recording of this stream");
    };
    let mut unavailable = false;
    for piece in &pieces {
        match server.piece_index(piece, msn).await {
            Ok(index) if index.first().is_some_and(|s| s.msn == msn) => match server.piece_frames(piece, msn).await {
                Ok(body) => {
                    let stats = &server.recorder.inner.stats;
                    stats.dvr_segment_requests.inc();
                    stats.dvr_bytes_served.inc_by(body.len() as u64);
                    return binary(body);
                }
                Err(why) => {
                    tracing::debug!(epoch = piece.epoch, msn, why, "a DVR segment is unavailable from this piece");
                    unavailable = true;
                }
            },
            Ok(_) => {}
            Err(_) => unavailable = true,
        }
    }
    if unavailable {
        refused(StatusCode::SERVICE_UNAVAILABLE, "the pieces that may hold this segment cannot be read now")
    } else {
        refused(StatusCode::NOT_FOUND, "no recorded segment with this msn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::packager::tests::stream;
    use crate::hls::packager::Packager;
    use crate::hls::Packaged;
    use crate::origin::recording::flv_file;

    /// Writes the piece of `epoch` as the writer does: its FLV (`.flv.part` unless
    /// `complete`) and its marks.
    fn write(dir: &Path, epoch: u64, frames: &[Frame], complete: bool) {
        let mut piece = flv::FILE_HEADER.to_vec();
        let mut marks = Vec::new();
        for f in frames {
            marks.extend_from_slice(&MarkRecord::of(f, piece.len() as u64).encode());
            piece.extend_from_slice(&flv_file::tag(f));
        }
        let path = if complete { files::piece_path(dir, epoch) } else { files::part_path(dir, epoch) };
        std::fs::write(path, piece).unwrap();
        std::fs::write(files::marks_path(dir, epoch), marks).unwrap();
    }

    /// The live packager's segments, the stream ending after `frames` (`finish`):
    /// msn → (bytes, duration, init version).
    fn live(frames: &[Frame]) -> BTreeMap<u64, (Bytes, u32, u32)> {
        let mut p = Packager::new();
        let mut out: BTreeMap<u64, (Vec<u8>, u32, u32)> = BTreeMap::new();
        let mut init = 0;
        let mut events: Vec<Packaged> = frames.iter().flat_map(|f| p.push(f)).collect();
        events.extend(p.finish());
        {
            for e in events {
                match e {
                    Packaged::Init(i) => init = i.version,
                    Packaged::Part(part) => out.entry(part.msn).or_default().0.extend_from_slice(&part.bytes),
                    Packaged::SegmentEnd(end) => {
                        let s = out.entry(end.msn).or_default();
                        (s.1, s.2) = (end.duration_ms, init);
                    }
                    _ => {}
                }
            }
        }
        out.into_iter().filter(|(_, s)| s.1 > 0).map(|(m, (b, d, i))| (m, (Bytes::from(b), d, i))).collect()
    }

    fn msns(frames: &[Frame]) -> (u64, u64) {
        let openers: Vec<u64> = frames
            .iter()
            .filter_map(|f| f.hls.filter(|m| matches!(m.boundary, Some(crate::hls::mark::Boundary::Segment(_)))))
            .map(|m| m.msn)
            .collect();
        (openers[0], *openers.last().unwrap())
    }

    #[test]
    fn a_pieces_segments_are_listed_and_package_to_the_live_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let frames = stream(9);
        write(dir.path(), 5, &frames, true);
        let scans = Scans::new(dir.path().to_owned());
        let index = scans.index(5).unwrap().unwrap();
        let (first, last) = msns(&frames);
        // Every segment whose next opening is in the piece, and the last one, which
        // ended with the piece (packaged as the live packager ends a stream).
        assert_eq!(index.iter().map(|s| s.msn).collect::<Vec<_>>(), (first..=last).collect::<Vec<_>>());
        let live = live(&frames);
        for s in &index {
            let (bytes, duration, init) = &live[&s.msn];
            assert_eq!((s.duration_ms, s.init_version), (*duration, *init), "segment {}", s.msn);
            let got = scans.frames(5, s.msn).unwrap().unwrap();
            let media = dvr::package(s.msn, &got).expect("a whole segment");
            assert_eq!(&media.bytes, bytes, "segment {}", s.msn);
            assert_eq!(media.init.version, s.init_version);
            // Through the wire and back: the same frames.
            assert_eq!(dvr::decode_frames(dvr::encode_frames(&got)).unwrap(), got);
        }
        // A piece still being written: its last segment has no end yet.
        write(dir.path(), 8, &frames, false);
        let growing = scans.index(8).unwrap().unwrap();
        assert_eq!(growing.iter().map(|s| s.msn).collect::<Vec<_>>(), (first..last).collect::<Vec<_>>());
        assert!(scans.frames(8, last).unwrap().is_none(), "no end, no segment");
        assert!(scans.index(6).unwrap().is_none(), "not here");
        // A piece without marks has no DVR index (a replica from an older holder).
        std::fs::remove_file(files::marks_path(dir.path(), 5)).unwrap();
        assert!(Scans::new(dir.path().to_owned()).index(5).unwrap().is_none());
    }

    #[test]
    fn a_growing_piece_is_scanned_from_where_the_last_scan_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let frames = stream(9);
        let scans = Scans::new(dir.path().to_owned());
        // The writer is halfway: its marks may run ahead of its flushed tags.
        let half = frames.len() / 2;
        write(dir.path(), 7, &frames, false);
        let full = std::fs::read(files::part_path(dir.path(), 7)).unwrap();
        let cut = flv::FILE_HEADER.len() + frames[..half].iter().map(|f| flv_file::tag(f).len()).sum::<usize>() + 5;
        std::fs::write(files::part_path(dir.path(), 7), &full[..cut]).unwrap();
        let early = scans.index(7).unwrap().unwrap();
        let consumed = lock(&scans.scanner(7)).consumed();
        assert!(consumed as usize <= half && consumed > 0, "{consumed} of {half}");
        assert!(!early.is_empty());
        // More is written: the scan goes on from there, finding the later segments.
        std::fs::write(files::part_path(dir.path(), 7), &full).unwrap();
        let later = scans.index(7).unwrap().unwrap();
        assert!(later.len() > early.len());
        assert_eq!(&later[..early.len()], &early[..]);
        assert_eq!(lock(&scans.scanner(7)).consumed() as usize, frames.len());
        // Finished (renamed): scanned for good, the same segments as a fresh scan, and
        // now its last one, which ended with it.
        std::fs::rename(files::part_path(dir.path(), 7), files::piece_path(dir.path(), 7)).unwrap();
        let done = scans.index(7).unwrap().unwrap();
        assert_eq!((&done[..later.len()], done.len()), (&later[..], later.len() + 1));
        assert!(lock(&scans.scanner(7)).done);
        assert_eq!(Scans::new(dir.path().to_owned()).index(7).unwrap().unwrap(), done);
    }

    #[test]
    fn a_segment_missing_frames_or_its_end_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = stream(13);
        let (first, _) = msns(&frames);
        // Lose a whole part of segment first+1 (a writer that skipped frames).
        let lost = frames
            .iter()
            .position(|f| f.hls.is_some_and(|m| m.msn == first + 1 && m.part == 2 && m.boundary.is_some()))
            .unwrap();
        let next =
            frames[lost..].iter().position(|f| f.hls.is_some_and(|m| m.part == 3 && m.boundary.is_some())).unwrap();
        frames.drain(lost..lost + next);
        // And the opening of segment first+3: segment first+2 has no end.
        let opening = frames
            .iter()
            .position(|f| {
                f.hls.is_some_and(|m| {
                    m.msn == first + 3 && matches!(m.boundary, Some(crate::hls::mark::Boundary::Segment(_)))
                })
            })
            .unwrap();
        frames.remove(opening);
        write(dir.path(), 2, &frames, true);
        let index = Scans::new(dir.path().to_owned()).index(2).unwrap().unwrap();
        let listed: Vec<u64> = index.iter().map(|s| s.msn).collect();
        assert!(listed.contains(&first));
        for missing in [first + 1, first + 2, first + 3] {
            assert!(!listed.contains(&missing), "{missing} in {listed:?}");
        }
        assert!(listed.contains(&(first + 4)));
    }

    #[test]
    fn the_headers_in_effect_are_the_latest_of_each_track_before_the_opening() {
        let frames = stream(7);
        let headers: Vec<Frame> = frames.iter().filter(|f| f.header).cloned().collect();
        assert_eq!(headers.len(), 2);
        // The headers come again mid-stream (a publisher re-sends them).
        let (first, _) = msns(&frames);
        let at = frames
            .iter()
            .position(|f| f.hls.is_some_and(|m| m.msn == first + 1 && m.part == 1 && m.boundary.is_some()))
            .unwrap();
        let mut again = frames.clone();
        again.splice(at..at, headers.iter().rev().cloned());
        let mut offsets = Vec::new();
        let mut scanner = Scanner::default();
        let mut offset = flv::FILE_HEADER.len() as u64;
        let mut no_init = |_: &[TagLoc], _: &MarkRecord, _: u64| Some(1);
        for f in &again {
            let end = offset + flv_file::tag(f).len() as u64;
            if f.header {
                offsets.push(TagLoc { offset, end });
            }
            scanner.feed(MarkRecord::of(f, offset), end, &mut no_init);
            offset = end;
        }
        let segments = scanner.segments();
        // Before the re-sent headers: the first ones; after them: the re-sent ones,
        // audio before video as they came.
        assert_eq!(segments[&first].headers, offsets[..2]);
        assert_eq!(segments[&(first + 1)].headers, offsets[..2]);
        assert_eq!(segments[&(first + 2)].headers, vec![offsets[2], offsets[3]]);
        assert!(segments[&(first + 2)].span.offset > offsets[3].offset);
    }

    #[test]
    fn a_replayed_stretch_in_one_piece_lists_each_segment_once() {
        let dir = tempfile::tempdir().unwrap();
        let frames = stream(9);
        let (first, _) = msns(&frames);
        // The link to this origin broke in segment first+2 and came back: the edge
        // re-sent from segment first+1's opening into the same piece.
        let opening = |msn: u64| {
            frames
                .iter()
                .position(|f| {
                    f.hls.is_some_and(|m| {
                        m.msn == msn && matches!(m.boundary, Some(crate::hls::mark::Boundary::Segment(_)))
                    })
                })
                .unwrap()
        };
        let broke = opening(first + 2) + 10;
        let mut replayed = frames[..broke].to_vec();
        replayed.extend(frames[opening(first + 1)..].iter().cloned());
        write(dir.path(), 3, &replayed, true);
        let scans = Scans::new(dir.path().to_owned());
        let index = scans.index(3).unwrap().unwrap();
        let straight = {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), 3, &frames, true);
            Scans::new(dir.path().to_owned()).index(3).unwrap().unwrap()
        };
        assert_eq!(index, straight);
        let live = live(&frames);
        for s in &index {
            let media = dvr::package(s.msn, &scans.frames(3, s.msn).unwrap().unwrap()).unwrap();
            assert_eq!(media.bytes, live[&s.msn].0, "segment {}", s.msn);
        }
    }

    fn segment(msn: u64, duration_ms: u32) -> DvrSegment {
        DvrSegment {
            msn,
            duration_ms,
            discontinuity: 0,
            wall_ms: 0,
            init_version: 1,
            target_ms: 2000,
            part_target_ms: 250,
        }
    }

    #[test]
    fn merged_indexes_take_the_newest_piece_and_the_newest_segments() {
        let old: Vec<DvrSegment> = (10..20).map(|m| segment(m, 1)).collect();
        let new: Vec<DvrSegment> = (15..25).map(|m| segment(m, 2)).collect();
        let merged = merge(&[(9, new.clone()), (3, old.clone())], 12);
        assert_eq!(merged.iter().map(|s| s.msn).collect::<Vec<_>>(), (12..25).collect::<Vec<_>>());
        assert!(merged.iter().all(|s| s.duration_ms == if s.msn >= 15 { 2 } else { 1 }));
        assert_eq!(merge(&[(3, old), (9, new)], 0)[5].duration_ms, 2, "whatever the order");
        let many: Vec<DvrSegment> = (0..dvr::MAX_INDEX as u64 + 10).map(|m| segment(m, 1)).collect();
        let merged = merge(&[(1, many)], 0);
        assert_eq!(merged.len(), dvr::MAX_INDEX);
        assert_eq!(merged[0].msn, 10, "the newest ones");
        assert!(merge(&[], 0).is_empty());
    }

    #[test]
    fn only_plain_numbers_name_pieces_segments_and_where_an_index_starts() {
        assert_eq!(digits("0"), Some(0));
        assert_eq!(digits("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", " 1", "1 ", "1.0", "0x10", "18446744073709551616", "..", "1%2F"] {
            assert_eq!(digits(bad), None, "{bad}");
        }
        assert_eq!(parse_from(None), Some(0));
        assert_eq!(parse_from(Some("")), Some(0));
        assert_eq!(parse_from(Some("from=42")), Some(42));
        for bad in ["from=", "from=-1", "from=1&x=2", "x=1", "from=1&from=2", "FROM=1", "from=%31"] {
            assert_eq!(parse_from(Some(bad)), None, "{bad}");
        }
    }
}
