//! One stream's sliding window of HLS media on one edge: the init segments, the last
//! complete segments and the open one, with their parts, fed the packager's
//! [`Packaged`] events in order.
//!
//! The window decides what exists (and so what the playlist lists and the routes
//! serve) from the events alone: two edges fed the same events hold the same window.
//! It also gives the verdicts of blocking requests ([`Window::reload`],
//! [`Window::find_part`]), so the HTTP side only waits and asks again.
//!
//! Bounded: at most [`WindowLimits::segments`] complete segments and
//! [`WindowLimits::max_bytes`] bytes in all (the oldest segments go first; an open
//! segment alone over the bound is abandoned). Never knows time, sockets or HTTP.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::dvr::DvrSegment;
use super::{Init, Packaged, SegmentStart};

/// Complete segments a window keeps by default (`--hls-window-segments`).
pub const WINDOW_SEGMENTS: usize = 6;
/// Bytes a window holds at most by default (`--hls-window-bytes`, 48 MiB: 14 s of a
/// 25 Mbit/s stream, the same bound the hubs' frame windows keep): init segments and
/// every segment and part. Going over evicts the oldest complete segments; an open
/// segment that alone exceeds it is abandoned (a publisher that never sends a keyframe
/// cannot make the edge hold its whole stream).
pub const WINDOW_MAX_BYTES: usize = 48 << 20;
/// Init segments kept besides those a kept segment needs: the newest one only.
const SPARE_INITS: usize = 1;
/// An init segment larger than this share of the window's bytes is refused (codec
/// configuration is a few hundred bytes; a huge one is an attack or a bug).
const MAX_INIT_SHARE: usize = 4;

/// How much one window keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Complete segments kept (the open one comes on top).
    pub segments: usize,
    /// Bytes held in all.
    pub max_bytes: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits { segments: WINDOW_SEGMENTS, max_bytes: WINDOW_MAX_BYTES }
    }
}

/// One part of a segment in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPart {
    pub index: u32,
    pub independent: bool,
    pub duration_ms: u32,
    /// Its bytes; once the segment is complete, a slice of the segment's bytes.
    pub bytes: Bytes,
}

/// One segment in the window, open or complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start: SegmentStart,
    pub parts: Vec<WindowPart>,
    /// `EXTINF`, ms; set when the segment is complete.
    pub duration_ms: Option<u32>,
    /// The whole segment (its parts concatenated); set when it is complete.
    pub bytes: Option<Bytes>,
}

impl Segment {
    pub fn msn(&self) -> u64 {
        self.start.msn
    }

    /// Bytes of its parts so far (a complete segment's parts are slices of its bytes).
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.bytes.len()).sum()
    }

    /// Duration so far: its `EXTINF` when complete, else the sum of its parts.
    pub fn elapsed_ms(&self) -> u64 {
        match self.duration_ms {
            Some(d) => u64::from(d),
            None => self.parts.iter().map(|p| u64::from(p.duration_ms)).sum(),
        }
    }
}

/// What an event changed, for waking blocked requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing a request waits for.
    None,
    /// A new init segment.
    Init,
    /// A part completed (or a segment opened).
    Part,
    /// A segment completed.
    Segment,
}

/// Events the window refused or media it let go, counted for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounters {
    /// Parts accepted.
    pub parts: u64,
    /// Segments completed.
    pub segments: u64,
    /// Events that did not fit the window's order (a part of no open segment, a
    /// segment number at or below one already seen) and were ignored.
    pub rejected: u64,
    /// Times the window started over: a segment number that skips ahead, an open
    /// segment that never ended.
    pub restarts: u64,
    /// Complete segments evicted because the window was over its bytes.
    pub evicted_for_bytes: u64,
}

/// A blocking playlist reload's verdict ([`Window::reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// What was asked for is in the window: answer now.
    Ready,
    /// Not yet: wait for the window to change.
    Wait,
    /// Further ahead than the spec lets a client ask: 400 at once.
    TooFar,
}

/// Where a requested part stands ([`Window::find_part`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Here are its bytes.
    Here(Bytes),
    /// It is the next part (the preload hint) or the open segment: wait.
    Coming,
    /// Not in the window and not next.
    Missing,
}

/// One stream's window.
#[derive(Debug)]
pub struct Window {
    limits: WindowLimits,
    inits: BTreeMap<u32, Init>,
    /// Complete segments, oldest first, numbered consecutively.
    segments: VecDeque<Segment>,
    open: Option<Segment>,
    /// The highest segment number seen (complete or open): numbers never go back.
    highest: Option<u64>,
    bytes: usize,
    counters: WindowCounters,
    /// Complete segments evicted since [`Window::take_evicted`] last ran, when asked
    /// to keep them ([`Window::keep_evicted`]; at most [`EVICTED_KEPT`]).
    evicted: Option<Vec<DvrSegment>>,
}

/// Evicted segments a window keeps for [`Window::take_evicted`] at most.
const EVICTED_KEPT: usize = 64;

impl Window {
    pub fn new(limits: WindowLimits) -> Window {
        Window {
            limits,
            inits: BTreeMap::new(),
            segments: VecDeque::new(),
            open: None,
            highest: None,
            bytes: 0,
            counters: WindowCounters::default(),
            evicted: None,
        }
    }

    /// Takes the packager's next event.
    pub fn push(&mut self, event: Packaged) -> Change {
        match event {
            Packaged::Init(init) => {
                if init.bytes.len() > self.limits.max_bytes / MAX_INIT_SHARE {
                    self.counters.rejected += 1;
                    return Change::None;
                }
                self.bytes += init.bytes.len();
                if let Some(old) = self.inits.insert(init.version, init) {
                    self.bytes -= old.bytes.len();
                }
                self.fit();
                Change::Init
            }
            Packaged::SegmentStart(start) => self.open_segment(start),
            Packaged::Part(part) => {
                let fits = self
                    .open
                    .as_ref()
                    .is_some_and(|open| open.msn() == part.msn && open.parts.len() as u64 == u64::from(part.index));
                let Some(open) = self.open.as_mut().filter(|_| fits) else {
                    self.counters.rejected += 1;
                    return Change::None;
                };
                self.bytes += part.bytes.len();
                open.parts.push(WindowPart {
                    index: part.index,
                    independent: part.independent,
                    duration_ms: part.duration_ms,
                    bytes: part.bytes,
                });
                self.counters.parts += 1;
                self.fit();
                Change::Part
            }
            Packaged::SegmentEnd(end) => {
                let Some(mut open) = self.open.take_if(|open| open.msn() == end.msn && !open.parts.is_empty()) else {
                    self.counters.rejected += 1;
                    return Change::None;
                };
                // One copy per segment: the parts become slices of the whole.
                let mut whole = BytesMut::with_capacity(open.len());
                for part in &open.parts {
                    whole.extend_from_slice(&part.bytes);
                }
                let whole = whole.freeze();
                let mut at = 0;
                for part in &mut open.parts {
                    let len = part.bytes.len();
                    part.bytes = whole.slice(at..at + len);
                    at += len;
                }
                open.bytes = Some(whole);
                open.duration_ms = Some(end.duration_ms);
                self.segments.push_back(open);
                self.counters.segments += 1;
                while self.segments.len() > self.limits.segments {
                    self.drop_oldest();
                }
                self.fit();
                Change::Segment
            }
        }
    }

    fn open_segment(&mut self, start: SegmentStart) -> Change {
        if self.highest.is_some_and(|h| start.msn <= h) {
            self.counters.rejected += 1;
            return Change::None;
        }
        let abandoned = self.open.take().is_some_and(|open| {
            self.bytes -= open.len();
            true
        });
        let follows = self.segments.back().is_some_and(|last| last.msn() + 1 == start.msn);
        if abandoned || (!follows && !self.segments.is_empty()) {
            // A gap: the playlist numbers its segments consecutively from its media
            // sequence, so what came before the gap cannot stay listed.
            while !self.segments.is_empty() {
                self.drop_oldest();
            }
            self.counters.restarts += 1;
        }
        self.highest = Some(start.msn);
        self.open = Some(Segment { start, parts: Vec::new(), duration_ms: None, bytes: None });
        self.fit();
        Change::Part
    }

    fn drop_oldest(&mut self) {
        if let Some(old) = self.segments.pop_front() {
            self.bytes -= old.len();
            if let (Some(evicted), Some(duration_ms)) = (&mut self.evicted, old.duration_ms) {
                if evicted.len() < EVICTED_KEPT {
                    let s = old.start;
                    evicted.push(DvrSegment {
                        msn: s.msn,
                        duration_ms,
                        discontinuity: s.discontinuity,
                        wall_ms: s.wall_ms,
                        init_version: s.init_version,
                        target_ms: s.target_ms,
                        part_target_ms: s.part_target_ms,
                    });
                }
            }
        }
    }

    /// From now on, keeps what [`Window::take_evicted`] gives (live rewind: the edge
    /// lists the segments its window lets go until the DVR index has them).
    pub fn keep_evicted(&mut self) {
        self.evicted.get_or_insert_with(Vec::new);
    }

    /// The complete segments evicted since the last call, oldest first, as a DVR
    /// index lists them.
    pub fn take_evicted(&mut self) -> Vec<DvrSegment> {
        self.evicted.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Lets go of the init segments nothing needs, then evicts the oldest complete
    /// segments until the window fits its bytes; an open segment that alone does not
    /// fit is abandoned. What is left then is the newest init segment, which fits
    /// ([`MAX_INIT_SHARE`]).
    fn fit(&mut self) {
        loop {
            self.prune_inits();
            if self.bytes <= self.limits.max_bytes {
                return;
            }
            if !self.segments.is_empty() {
                self.drop_oldest();
                self.counters.evicted_for_bytes += 1;
            } else if let Some(open) = self.open.take() {
                self.bytes -= open.len();
                self.counters.restarts += 1;
            } else {
                return;
            }
        }
    }

    /// Keeps the init segments a kept segment needs, plus the newest.
    fn prune_inits(&mut self) {
        let needed: Vec<u32> = self.segments.iter().chain(&self.open).map(|s| s.start.init_version).collect();
        let newest: Vec<u32> = self.inits.keys().rev().take(SPARE_INITS).copied().collect();
        let bytes = &mut self.bytes;
        self.inits.retain(|v, init| {
            let keep = needed.contains(v) || newest.contains(v);
            if !keep {
                *bytes -= init.bytes.len();
            }
            keep
        });
    }

    /// Complete segments, oldest first.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &Segment> + ExactSizeIterator {
        self.segments.iter()
    }

    /// The segment being built.
    pub fn open(&self) -> Option<&Segment> {
        self.open.as_ref()
    }

    pub fn init(&self, version: u32) -> Option<&Init> {
        self.inits.get(&version)
    }

    /// A complete segment by number.
    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn();
        let at = usize::try_from(msn.checked_sub(first)?).ok()?;
        self.segments.get(at)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn counters(&self) -> WindowCounters {
        self.counters
    }

    /// Whether a playlist can be served: at least one complete segment.
    pub fn is_ready(&self) -> bool {
        !self.segments.is_empty()
    }

    /// `EXT-X-MEDIA-SEQUENCE`: the first listed segment's number.
    pub fn media_sequence(&self) -> Option<u64> {
        self.segments.front().or(self.open.as_ref()).map(Segment::msn)
    }

    /// The last complete segment's number.
    pub fn last_complete(&self) -> Option<u64> {
        self.segments.back().map(Segment::msn)
    }

    /// The newest complete part, (msn, index).
    pub fn last_part(&self) -> Option<(u64, u32)> {
        let with_parts = |s: &Segment| s.parts.last().map(|p| (s.msn(), p.index));
        self.open.as_ref().and_then(with_parts).or_else(|| self.segments.back().and_then(with_parts))
    }

    /// The part the playlist hints at (`EXT-X-PRELOAD-HINT`): the open segment's next
    /// part, or the first part of the segment after the last complete one.
    pub fn next_part(&self) -> Option<(u64, u32)> {
        match (&self.open, self.segments.back()) {
            (Some(open), _) => Some((open.msn(), open.parts.len() as u32)),
            (None, Some(last)) => Some((last.msn() + 1, 0)),
            (None, None) => None,
        }
    }

    /// The part target the newest segment was cut with, ms.
    pub fn part_target_ms(&self) -> Option<u32> {
        self.open.as_ref().or(self.segments.back()).map(|s| s.start.part_target_ms)
    }

    /// How far past the last part a client may ask (RFC 8216bis 6.2.5.2, the Advance
    /// Part Limit): three part targets' worth, at least three parts.
    pub fn advance_part_limit(&self) -> u64 {
        match self.part_target_ms() {
            Some(t) if t > 0 && t < 1000 => 3000u64.div_ceil(u64::from(t)),
            _ => 3,
        }
    }

    /// The verdict on a blocking playlist reload for `_HLS_msn=msn` (and
    /// `_HLS_part=part`): ready once segment `msn` is complete, or once part `part` of
    /// segment `msn` (or a later part) is; too far when `msn` is more than two
    /// segments past the playlist's last, or `part` more than the Advance Part Limit
    /// past its last part.
    pub fn reload(&self, msn: u64, part: Option<u32>) -> Reload {
        let Some(last_msn) = self.open.as_ref().or(self.segments.back()).map(Segment::msn) else {
            return Reload::Wait;
        };
        if msn > last_msn.saturating_add(2) {
            return Reload::TooFar;
        }
        if self.last_complete().is_some_and(|done| done >= msn) {
            return Reload::Ready;
        }
        let Some(part) = part else { return Reload::Wait };
        let (part_msn, part_index) = self.last_part().unwrap_or((last_msn, 0));
        if (part_msn, part_index) >= (msn, part) {
            return Reload::Ready;
        }
        let limit = self.advance_part_limit();
        // Parts ahead of the last one: exact in the same segment; in a later segment
        // at least `part + 1` (the rest of the current one is unknown).
        let ahead = if msn == part_msn { u64::from(part - part_index) } else { u64::from(part) + 1 };
        if ahead > limit {
            return Reload::TooFar;
        }
        Reload::Wait
    }

    /// Part `index` of segment `msn`: here, coming (not made yet, but no further ahead
    /// than a blocking playlist reload may ask: see [`Window::reload`]), or missing.
    ///
    /// Coming, not only the preload hint: behind a load balancer a player asks this
    /// edge for what another edge's playlist listed, and this edge may be a few parts
    /// behind that one (it restarted and is packaging the owner's window, or its relay
    /// is a hop slower). A 404 there was an hls.js `fragLoadError` and a stall while
    /// `scripts/rolling-restart.sh` put a restarted edge back in rotation.
    pub fn find_part(&self, msn: u64, index: u32) -> Found {
        let in_segment = |s: &Segment| s.parts.get(index as usize).map(|p| p.bytes.clone());
        let here = match &self.open {
            Some(open) if open.msn() == msn => in_segment(open),
            _ => self.segment(msn).and_then(in_segment),
        };
        match here {
            Some(bytes) => Found::Here(bytes),
            None if self.reload(msn, Some(index)) == Reload::Wait => Found::Coming,
            None => Found::Missing,
        }
    }

    /// Complete segment `msn`: here, coming (open, or at most two segments ahead, as
    /// for parts above), or missing.
    pub fn find_segment(&self, msn: u64) -> Found {
        match self.segment(msn).and_then(|s| s.bytes.clone()) {
            Some(bytes) => Found::Here(bytes),
            None if self.reload(msn, None) == Reload::Wait => Found::Coming,
            None => Found::Missing,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hls::{Part, SegmentEnd};

    pub fn start(msn: u64, discontinuity: u32) -> Packaged {
        Packaged::SegmentStart(SegmentStart {
            msn,
            discontinuity,
            wall_ms: 1_764_892_800_000 + msn * 2000,
            init_version: 0,
            target_ms: 2000,
            part_target_ms: 500,
        })
    }

    pub fn part(msn: u64, index: u32, len: usize) -> Packaged {
        let bytes = Bytes::from(vec![(msn as u8).wrapping_mul(16).wrapping_add(index as u8); len]);
        Packaged::Part(Part { msn, index, independent: index == 0, duration_ms: 500, bytes })
    }

    pub fn end(msn: u64, parts: u32) -> Packaged {
        Packaged::SegmentEnd(SegmentEnd { msn, duration_ms: 500 * parts, parts })
    }

    pub fn init(version: u32) -> Packaged {
        Packaged::Init(Init {
            version,
            codecs: "avc1.64001f,mp4a.40.2".into(),
            bytes: Bytes::from(vec![version as u8; 100]),
        })
    }

    /// A whole segment of four 10-byte parts.
    pub fn feed_segment(w: &mut Window, msn: u64) {
        w.push(start(msn, 0));
        for i in 0..4 {
            w.push(part(msn, i, 10));
        }
        w.push(end(msn, 4));
    }

    #[test]
    fn evicted_segments_are_kept_for_live_rewind_when_asked() {
        let mut w = Window::new(WindowLimits { segments: 2, max_bytes: WINDOW_MAX_BYTES });
        w.push(init(0));
        feed_segment(&mut w, 10);
        feed_segment(&mut w, 11);
        feed_segment(&mut w, 12);
        assert!(w.take_evicted().is_empty(), "not kept unless asked");
        w.keep_evicted();
        feed_segment(&mut w, 13);
        feed_segment(&mut w, 14);
        let evicted = w.take_evicted();
        assert_eq!(evicted.iter().map(|s| s.msn).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(evicted[0].duration_ms, w.segment(13).unwrap().duration_ms.unwrap());
        assert!(w.take_evicted().is_empty());
    }

    #[test]
    fn keeps_the_last_segments_and_the_open_one() {
        let mut w = Window::new(WindowLimits { segments: 3, max_bytes: 1 << 20 });
        w.push(init(0));
        for msn in 10..20 {
            feed_segment(&mut w, msn);
        }
        w.push(start(20, 0));
        w.push(part(20, 0, 10));
        let listed: Vec<u64> = w.segments().map(Segment::msn).collect();
        assert_eq!(listed, [17, 18, 19]);
        assert_eq!(w.media_sequence(), Some(17));
        assert_eq!(w.last_part(), Some((20, 0)));
        assert_eq!(w.next_part(), Some((20, 1)));
        assert_eq!(w.bytes(), 100 + 3 * 40 + 10);
        assert_eq!(
            w.find_segment(19),
            Found::Here(Bytes::from([vec![0x30; 10], vec![0x31; 10], vec![0x32; 10], vec![0x33; 10]].concat()))
        );
        assert_eq!(w.find_part(18, 2), Found::Here(Bytes::from(vec![0x22; 10])));
        assert_eq!(w.find_part(20, 1), Found::Coming);
        // Ahead of the preload hint, within the Advance Part Limit (three part targets):
        // another edge may have made it already.
        assert_eq!(w.find_part(20, 3), Found::Coming);
        assert_eq!(w.find_part(21, 0), Found::Coming);
        assert_eq!(w.find_part(20, 40), Found::Missing, "past the Advance Part Limit");
        assert_eq!(w.find_part(19, 4), Found::Missing, "segment 19 ended with four parts");
        assert_eq!(w.find_part(16, 0), Found::Missing, "left the window");
        assert_eq!(w.find_segment(20), Found::Coming);
        assert_eq!(w.find_segment(22), Found::Coming);
        assert_eq!(w.find_segment(23), Found::Missing, "more than two segments ahead");
        assert_eq!(w.find_segment(16), Found::Missing);
        assert_eq!(w.counters().segments, 10);
    }

    #[test]
    fn stays_within_its_bytes() {
        let mut w = Window::new(WindowLimits { segments: 100, max_bytes: 100 });
        for msn in 0..10 {
            feed_segment(&mut w, msn);
            assert!(w.bytes() <= 100, "{} bytes after segment {msn}", w.bytes());
        }
        assert_eq!(w.segments().map(Segment::msn).collect::<Vec<_>>(), [8, 9]);
        assert!(w.counters().evicted_for_bytes >= 8);
        // A segment that never ends cannot grow past the bound either.
        w.push(start(10, 0));
        for i in 0..30 {
            w.push(part(10, i, 10));
            assert!(w.bytes() <= 100);
        }
    }

    #[test]
    fn init_segments_count_against_the_bytes_too() {
        // Found by the playlist's property test: an init segment arriving over a full
        // window took it past its bound.
        let mut w = Window::new(WindowLimits { segments: 100, max_bytes: 400 });
        for msn in 0..9 {
            feed_segment(&mut w, msn);
        }
        w.push(init(0));
        assert!(w.bytes() <= 400, "{} bytes", w.bytes());
        assert!(w.init(0).is_some());
        // One larger than a quarter of the window is refused.
        w.push(Packaged::Init(Init { version: 1, codecs: String::new(), bytes: Bytes::from(vec![0; 101]) }));
        assert!(w.init(1).is_none());
        assert_eq!(w.counters().rejected, 1);
    }

    #[test]
    fn numbers_never_go_back_and_gaps_restart_the_window() {
        let mut w = Window::new(WindowLimits::default());
        feed_segment(&mut w, 5);
        feed_segment(&mut w, 6);
        // A replay of an old segment is ignored, parts of it too.
        assert_eq!(w.push(start(6, 0)), Change::None);
        assert_eq!(w.push(part(6, 0, 10)), Change::None);
        // A part out of order is ignored.
        w.push(start(7, 0));
        assert_eq!(w.push(part(7, 1, 10)), Change::None);
        assert_eq!(w.counters().rejected, 3);
        // Segment 7 never ends: 8 starts over, since the playlist cannot skip a number.
        w.push(part(7, 0, 10));
        w.push(start(8, 1));
        assert_eq!(w.segments().count(), 0);
        assert_eq!(w.media_sequence(), Some(8));
        assert_eq!(w.counters().restarts, 1);
        assert_eq!(w.bytes(), 0);
    }

    #[test]
    fn keeps_only_the_init_segments_in_use() {
        let mut w = Window::new(WindowLimits { segments: 2, max_bytes: 1 << 20 });
        w.push(init(0));
        feed_segment(&mut w, 0);
        w.push(init(1));
        let mut s = start(1, 0);
        if let Packaged::SegmentStart(s) = &mut s {
            s.init_version = 1;
        }
        w.push(s);
        assert!(w.init(0).is_some() && w.init(1).is_some());
        for i in 0..4 {
            w.push(part(1, i, 10));
        }
        w.push(end(1, 4));
        feed_segment(&mut w, 2);
        // Segment 0 (init 0) left; segment 2 uses init 0 again.
        assert!(w.init(0).is_some());
        feed_segment(&mut w, 3);
        assert!(w.init(1).is_some(), "the newest init is kept");
        w.push(init(2));
        assert!(w.init(1).is_none(), "nothing uses init 1 any more");
        assert_eq!(w.bytes(), 200 + 2 * 40);
    }

    #[test]
    fn blocking_reload_verdicts() {
        let mut w = Window::new(WindowLimits::default());
        assert_eq!(w.reload(0, None), Reload::Wait, "nothing yet: wait");
        for msn in 0..3 {
            feed_segment(&mut w, msn);
        }
        w.push(start(3, 0));
        w.push(part(3, 0, 10));
        w.push(part(3, 1, 10));
        // Part target 500 ms: the advance limit is 6 parts.
        assert_eq!(w.advance_part_limit(), 6);
        assert_eq!(w.reload(2, None), Reload::Ready);
        assert_eq!(w.reload(0, Some(9)), Reload::Ready, "a complete segment answers any part of it");
        assert_eq!(w.reload(3, Some(1)), Reload::Ready);
        assert_eq!(w.reload(3, None), Reload::Wait);
        assert_eq!(w.reload(3, Some(2)), Reload::Wait);
        assert_eq!(w.reload(5, None), Reload::Wait, "two past the last: wait");
        assert_eq!(w.reload(6, None), Reload::TooFar);
        assert_eq!(w.reload(u64::MAX, None), Reload::TooFar);
        assert_eq!(w.reload(3, Some(7)), Reload::Wait);
        assert_eq!(w.reload(3, Some(8)), Reload::TooFar);
        assert_eq!(w.reload(4, Some(5)), Reload::Wait);
        assert_eq!(w.reload(4, Some(6)), Reload::TooFar);
        assert_eq!(w.reload(3, Some(u32::MAX)), Reload::TooFar);
        w.push(part(3, 2, 10));
        assert_eq!(w.reload(3, Some(2)), Reload::Ready);
    }
}
