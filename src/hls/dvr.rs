//! Live rewind (DVR): the wire between origins and edges, and the packaging of one
//! old segment from its recorded frames (`docs/vod.md`, "Live rewind").
//!
//! The owner origin records each frame's HLS mark beside the piece. An edge asks any
//! origin for the stream's **index** ([`DvrSegment`]s: what the playlist lists before
//! its live window) and for the **frames** of one old segment, which it packages with
//! [`package`]: the same packager, the same frames and marks as live, so the same bytes
//! on every edge.
//!
//! Both bodies are binary, big-endian, parsed with every length checked first
//! (`decode_*` never panics and never allocates beyond the bytes given):
//!
//! - index: `count: u32`, then per segment `msn: u64, duration_ms: u32,
//!   discontinuity: u32, wall_ms: u64, init_version: u32, target_ms: u32,
//!   part_target_ms: u32` (36 bytes), in increasing `msn`;
//! - frames: `count: u32`, then per frame its head as the link carries it
//!   (`link::frame::put_head`: `kind: u8 (8/9/18), flags: u8 (bit 0 keyframe, bit 1
//!   header, bit 2 marked), timestamp: u32`, then the mark when bit 2 is set),
//!   `len: u32`, then `len` payload bytes.
//!
//! Sans-IO: bytes in, bytes out. Knows no files, sockets or HTTP.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::packager::Packager;
use super::{Init, Packaged};
use crate::link::frame::{get_head, head_len, put_head};
use crate::media::Frame;
use raftcast_raft::StreamKey;

/// Stream-level index on any origin (cluster secret), `?from={msn}`: the stream's
/// recorded segments with `msn >= from`, at most [`MAX_INDEX`] (the newest ones).
pub const INDEX_ROUTE: &str = "/internal/dvr/{app}/{name}";
/// Stream-level frames of one segment on any origin (cluster secret).
pub const SEGMENT_ROUTE: &str = "/internal/dvr/{app}/{name}/{msn}";
/// Most segments one index answer lists (4.5 hours of 2 s segments).
pub const MAX_INDEX: usize = 8192;
/// Largest frames body an edge accepts for one segment.
pub const MAX_SEGMENT_BYTES: usize = 64 << 20;
/// Most frames in one frames body.
pub const MAX_FRAMES: usize = 1 << 16;

const INDEX_ENTRY: usize = 8 + 4 + 4 + 8 + 4 + 4 + 4;
/// A frame's head at the least (kind, flags, timestamp: `link::frame::put_head`).
const FRAME_HEADER: usize = 1 + 1 + 4;

/// The URL path of the stream's index from `from` on.
pub fn index_path(key: &StreamKey, from: u64) -> String {
    format!("/internal/dvr/{}/{}?from={from}", key.app, key.name)
}

/// The URL path of the frames of segment `msn` of the stream.
pub fn segment_path(key: &StreamKey, msn: u64) -> String {
    format!("/internal/dvr/{}/{}/{msn}", key.app, key.name)
}

/// One recorded segment as the live playlist lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DvrSegment {
    pub msn: u64,
    /// `EXTINF`, ms: from its opening frame to the next segment's (what [`package`]
    /// gives as the segment's duration).
    pub duration_ms: u32,
    pub discontinuity: u32,
    /// `EXT-X-PROGRAM-DATE-TIME`, ms since the Unix epoch.
    pub wall_ms: u64,
    /// The [`Init::version`] its media needs (`EXT-X-MAP`).
    pub init_version: u32,
    pub target_ms: u32,
    pub part_target_ms: u32,
}

/// Why a DVR body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DvrError {
    #[error("DVR body cut short: {0}")]
    Short(&'static str),
    #[error("DVR body invalid: {0}")]
    Invalid(&'static str),
    #[error("DVR body too large: {0}")]
    TooLarge(&'static str),
}

/// The index body of `segments` (in increasing `msn`).
pub fn encode_index(segments: &[DvrSegment]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + segments.len() * INDEX_ENTRY);
    out.put_u32(segments.len() as u32);
    for s in segments {
        out.put_u64(s.msn);
        out.put_u32(s.duration_ms);
        out.put_u32(s.discontinuity);
        out.put_u64(s.wall_ms);
        out.put_u32(s.init_version);
        out.put_u32(s.target_ms);
        out.put_u32(s.part_target_ms);
    }
    out.freeze()
}

/// Parses an index body: at most [`MAX_INDEX`] segments, `msn` strictly increasing.
pub fn decode_index(mut body: Bytes) -> Result<Vec<DvrSegment>, DvrError> {
    if body.len() < 4 {
        return Err(DvrError::Short("index count"));
    }
    let count = body.get_u32() as usize;
    if count > MAX_INDEX {
        return Err(DvrError::TooLarge("more segments than an index lists"));
    }
    if body.len() != count * INDEX_ENTRY {
        return Err(DvrError::Short("index entries do not match their count"));
    }
    let mut out: Vec<DvrSegment> = Vec::with_capacity(count);
    for _ in 0..count {
        let s = DvrSegment {
            msn: body.get_u64(),
            duration_ms: body.get_u32(),
            discontinuity: body.get_u32(),
            wall_ms: body.get_u64(),
            init_version: body.get_u32(),
            target_ms: body.get_u32(),
            part_target_ms: body.get_u32(),
        };
        if out.last().is_some_and(|l| l.msn >= s.msn) {
            return Err(DvrError::Invalid("index not in increasing msn"));
        }
        out.push(s);
    }
    Ok(out)
}

/// The frames body of `frames`.
pub fn encode_frames(frames: &[Frame]) -> Bytes {
    let size: usize = frames.iter().map(|f| head_len(f) + 4 + f.payload.len()).sum();
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_u32(frames.len() as u32);
    for f in frames {
        put_head(f, &mut out);
        out.put_u32(f.payload.len() as u32);
        out.put_slice(&f.payload);
    }
    out.freeze()
}

/// Parses a frames body (payloads share `body`, no copy).
pub fn decode_frames(mut body: Bytes) -> Result<Vec<Frame>, DvrError> {
    if body.len() > MAX_SEGMENT_BYTES {
        return Err(DvrError::TooLarge("segment frames"));
    }
    if body.len() < 4 {
        return Err(DvrError::Short("frame count"));
    }
    let count = body.get_u32() as usize;
    if count > MAX_FRAMES {
        return Err(DvrError::TooLarge("more frames than a segment holds"));
    }
    let mut out = Vec::with_capacity(count.min(body.len() / (FRAME_HEADER + 4) + 1));
    for _ in 0..count {
        let head = get_head(&mut body).map_err(DvrError::Invalid)?;
        if body.len() < 4 {
            return Err(DvrError::Short("payload length"));
        }
        let len = body.get_u32() as usize;
        if body.len() < len {
            return Err(DvrError::Short("payload"));
        }
        out.push(head.frame(body.split_to(len)));
    }
    if !body.is_empty() {
        return Err(DvrError::Invalid("bytes after the last frame"));
    }
    Ok(out)
}

/// One old segment, packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DvrMedia {
    pub msn: u64,
    /// The init segment its media needs.
    pub init: Init,
    pub duration_ms: u32,
    /// The whole segment (its parts concatenated).
    pub bytes: Bytes,
}

/// Packages segment `msn` from `frames`: the codec headers in effect where it opens,
/// its marked frames from its opening frame on, and the next segment's opening frame
/// last (where its duration ends). Frames that end without the next opening are a
/// segment that ended with its publishing session: it ends with them, as the live
/// packager ends it ([`Packager::finish`]). `None` when the frames do not make that
/// segment whole (its opening missing, a frame missed in between).
pub fn package(msn: u64, frames: &[Frame]) -> Option<DvrMedia> {
    let mut packager = Packager::new();
    let mut got = Gathered::default();
    for frame in frames {
        let events = packager.push(frame);
        if let Some(done) = got.take(msn, events, &packager) {
            return done;
        }
    }
    let events = packager.finish();
    got.take(msn, events, &packager).flatten()
}

/// What [`package`] has gathered of its segment so far.
#[derive(Default)]
struct Gathered {
    init: Option<Init>,
    opened: bool,
    bytes: BytesMut,
    parts: u32,
}

impl Gathered {
    /// Takes the packager's next events: `Some` once segment `msn` ended (`Some(None)`:
    /// not whole).
    fn take(&mut self, msn: u64, events: Vec<Packaged>, packager: &Packager) -> Option<Option<DvrMedia>> {
        for event in events {
            match event {
                Packaged::Init(i) if !self.opened => self.init = Some(i),
                Packaged::SegmentStart(s) if s.msn == msn => self.opened = true,
                Packaged::Part(p) if self.opened && p.msn == msn => {
                    self.bytes.extend_from_slice(&p.bytes);
                    self.parts += 1;
                }
                Packaged::SegmentEnd(end) if self.opened && end.msn == msn => {
                    if end.parts != self.parts || self.parts == 0 || packager.stats().lost > 0 {
                        return Some(None);
                    }
                    let media = self.init.take().map(|init| DvrMedia {
                        msn,
                        init,
                        duration_ms: end.duration_ms,
                        bytes: std::mem::take(&mut self.bytes).freeze(),
                    });
                    return Some(media);
                }
                _ => {}
            }
        }
        None
    }
}

/// The [`Init::version`] a segment opening with `opener` needs after `headers` (the
/// codec headers in effect there): what the index lists as its `init_version`.
pub fn init_version(headers: &[Frame], opener: &Frame) -> Option<u32> {
    let mut packager = Packager::new();
    for h in headers {
        packager.push(h);
    }
    packager.push(opener).into_iter().find_map(|e| match e {
        Packaged::Init(i) => Some(i.version),
        _ => None,
    })
}

/// What must hold for any input, checked by the `hls_tags` fuzz target beside
/// [`super::packager::check_invariants`] and by the replay of its regressions: the
/// packaging of one old segment from the frames the packager's check builds never
/// panics, and the origin-to-edge bodies parse without panicking and re-encode to the
/// bytes they came from.
pub fn check_invariants(data: &[u8]) {
    let frames = super::packager::fuzz_frames(data);
    let _ = package(frames.iter().find_map(|f| f.hls.map(|m| m.msn)).unwrap_or(0), &frames);
    let body = Bytes::copy_from_slice(data);
    if let Ok(index) = decode_index(body.clone()) {
        assert_eq!(encode_index(&index), body);
    }
    if let Ok(decoded) = decode_frames(body.clone()) {
        assert_eq!(encode_frames(&decoded), body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::packager::tests::stream;

    #[test]
    fn index_round_trips_and_refuses_garbage() {
        let segments: Vec<DvrSegment> = (10..20)
            .map(|msn| DvrSegment {
                msn,
                duration_ms: 2000,
                discontinuity: (msn / 15) as u32,
                wall_ms: 1_765_000_000_000 + msn * 2000,
                init_version: 0xdead_beef,
                target_ms: 2000,
                part_target_ms: 500,
            })
            .collect();
        let body = encode_index(&segments);
        assert_eq!(decode_index(body.clone()).unwrap(), segments);
        for cut in [0, 3, 4 + INDEX_ENTRY - 1, body.len() - 1] {
            assert!(decode_index(body.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut swapped = segments.clone();
        swapped.swap(2, 3);
        assert_eq!(decode_index(encode_index(&swapped)), Err(DvrError::Invalid("index not in increasing msn")));
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(matches!(decode_index(huge.freeze()), Err(DvrError::TooLarge(_))));
    }

    #[test]
    fn frames_round_trip_with_their_marks() {
        let frames = stream(3);
        let body = encode_frames(&frames);
        let back = decode_frames(body.clone()).unwrap();
        assert_eq!(back, frames);
        for cut in [0, 4, 5, 11, body.len() / 2, body.len() - 1] {
            assert!(decode_frames(body.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut extra = BytesMut::from(&body[..]);
        extra.put_u8(0);
        assert!(decode_frames(extra.freeze()).is_err());
    }

    /// Segment `msn` of a packager's `events`: its parts' bytes and its duration.
    fn segment(events: &[Packaged], msn: u64) -> (Bytes, u32) {
        let bytes: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Packaged::Part(p) if p.msn == msn => Some(p.bytes.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        let duration = events
            .iter()
            .find_map(|e| match e {
                Packaged::SegmentEnd(end) if end.msn == msn => Some(end.duration_ms),
                _ => None,
            })
            .unwrap();
        (Bytes::from(bytes), duration)
    }

    #[test]
    fn an_old_segment_packages_to_the_live_bytes() {
        // Live: one packager over the whole stream.
        let frames = stream(8);
        let mut live = Packager::new();
        let events: Vec<Packaged> = frames.iter().flat_map(|f| live.push(f)).collect();
        let live_init = events.iter().find_map(|e| match e {
            Packaged::Init(i) => Some(i.clone()),
            _ => None,
        });
        let headers: Vec<Frame> = frames.iter().filter(|f| f.header).cloned().collect();
        let msns: Vec<u64> = frames.iter().filter_map(|f| f.hls.map(|m| m.msn)).collect();
        let (first, last) = (msns[0], *msns.last().unwrap());
        assert!(last >= first + 2, "the test stream has at least three segments");
        for msn in [first + 1, last - 1] {
            // What an origin sends: headers, the segment, the next one's opening frame.
            let mut sent = headers.clone();
            sent.extend(frames.iter().filter(|f| f.hls.is_some_and(|m| m.msn == msn)).cloned());
            sent.extend(frames.iter().find(|f| f.hls.is_some_and(|m| m.msn == msn + 1)).cloned());
            let media = package(msn, &sent).expect("a whole segment");
            let (bytes, duration) = segment(&events, msn);
            assert_eq!(media.bytes, bytes, "segment {msn}");
            assert_eq!(media.duration_ms, duration);
            assert_eq!(Some(&media.init), live_init.as_ref());
            let opener = &sent[headers.len()];
            assert_eq!(init_version(&headers, opener), Some(media.init.version));
            // Without the next opening frame the segment ends with its frames, as the
            // live packager ends a stream's last segment.
            let ended = package(msn, &sent[..sent.len() - 1]).expect("an ended segment");
            let mut last = Packager::new();
            let mut events: Vec<Packaged> = sent[..sent.len() - 1].iter().flat_map(|f| last.push(f)).collect();
            events.extend(last.finish());
            let (finished, ended_duration) = segment(&events, msn);
            assert_eq!(ended.bytes, finished);
            assert_eq!(ended.duration_ms, ended_duration);
            // Without its opening frame, no segment.
            let mut headless = headers.clone();
            headless.extend(sent[headers.len() + 1..].iter().cloned());
            assert_eq!(package(msn, &headless), None);
        }
    }
}
