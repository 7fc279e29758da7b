//! What a publishing edge keeps of its stream so a new owner can be given everything
//! the old one may have lost.
//!
//! While the link to the owner is up, [`Retained`] keeps the frames back to the latest
//! keyframe that is at least `history_ms` old (frames in flight when an owner dies are
//! lost with its socket buffers; a player edge drops what it already delivered), and,
//! with `window_segments`, back to the start of the HLS window's oldest segment (by the
//! frames' HLS marks), so a new owner rebuilds the window the old one had. While
//! the link is down it keeps everything, so frames sent during the outage are delivered
//! late, not lost. Both are bounded by bytes and by duration: past a bound the oldest
//! frames go, up to the next keyframe, and are counted as lost. The latest codec
//! headers and metadata are kept apart and always replayed first.
//!
//! Knows frames only: no sockets, no clock (durations are the publisher's timestamps).

use std::collections::VecDeque;

use super::frame::{Frame, FrameKind};
use crate::hls::mark::Boundary;

/// Bounds of what a publication keeps.
#[derive(Debug, Clone, Copy)]
pub struct RetainLimits {
    /// While live: keep back to a keyframe at least this old, in ms of stream time.
    pub history_ms: u32,
    /// At most this many bytes...
    pub max_bytes: usize,
    /// ...and this much stream time, live or not.
    pub max_ms: u32,
    /// While live: also keep back to the start of the segment that opened this many
    /// segment starts before the newest (the complete segments of an HLS window, the
    /// open one on top); 0 keeps no segments. Bounded by the two limits above.
    pub window_segments: usize,
}

impl Default for RetainLimits {
    fn default() -> Self {
        // 2 s covers what sits in socket buffers; 30 s / 64 MiB covers any outage the
        // cluster should take to route around (about 3 s at worst), with room to spare.
        RetainLimits { history_ms: 2_000, max_bytes: 64 * 1024 * 1024, max_ms: 30_000, window_segments: 0 }
    }
}

impl RetainLimits {
    /// What an owner's hub keeps for edges resuming after a move or a lost link: back
    /// to a keyframe at least 10 s old, at most 20 s and 16 MiB. An edge cut off from
    /// the owner alone (nobody moves the stream) is away for the cut, 0.5 s to notice
    /// and a reconnect; 4 s of history lost frames after a 4 s cut (chaos harness,
    /// `edge-owner-cut`).
    pub fn default_history() -> Self {
        RetainLimits { history_ms: 10_000, max_bytes: 16 * 1024 * 1024, max_ms: 20_000, window_segments: 0 }
    }
}

/// The retained frames of one publication.
#[derive(Debug)]
pub struct Retained {
    limits: RetainLimits,
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Latest audio and video sequence headers and metadata, by kind.
    headers: [Option<Frame>; 3],
    has_video: bool,
    lost: u64,
    /// Whether `window_segments` applies now ([`Retained::keep_window`]).
    window: bool,
}

fn slot(kind: FrameKind) -> usize {
    match kind {
        FrameKind::Audio => 0,
        FrameKind::Video => 1,
        FrameKind::Data => 2,
    }
}

impl Retained {
    pub fn new(limits: RetainLimits) -> Self {
        Retained {
            limits,
            frames: VecDeque::new(),
            bytes: 0,
            headers: [None, None, None],
            has_video: false,
            lost: 0,
            window: true,
        }
    }

    /// Where a decoder can start: a video keyframe, or any audio frame in a stream with
    /// no video.
    fn is_start(&self, frame: &Frame) -> bool {
        match frame.kind {
            FrameKind::Video => frame.keyframe,
            FrameKind::Audio => !self.has_video,
            FrameKind::Data => false,
        }
    }

    /// Keeps `frame`. `live`: the owner is reachable, so history beyond `history_ms`
    /// (back to a keyframe) may go.
    pub fn push(&mut self, frame: Frame, live: bool) {
        if frame.header {
            let k = slot(frame.kind);
            self.headers[k] = Some(frame);
            return;
        }
        if frame.kind == FrameKind::Video && !self.has_video {
            self.has_video = true;
            // Audio frames were the start points so far; from now on keyframes are.
            self.drop_to_start(false);
        }
        self.bytes += frame.cost();
        let newest = frame.timestamp;
        let start = self.is_start(&frame);
        self.frames.push_back(frame);
        // Trimmed when a start frame arrives (once per GOP), not on every frame: at most
        // one GOP more is kept, and the duration and byte bounds below still hold.
        if live && start {
            self.trim_history(newest);
        }
        while self.bytes > self.limits.max_bytes
            || self.frames.front().is_some_and(|f| newest.saturating_sub(f.timestamp) > self.limits.max_ms)
        {
            // Over a bound: lose the oldest frames up to the next start.
            self.pop_front(true);
            self.drop_to_start(true);
            if self.frames.is_empty() {
                break;
            }
        }
    }

    /// While live: lets go of what precedes the latest start at least `history_ms`
    /// older than `newest` (and the window's oldest segment, while it is kept).
    fn trim_history(&mut self, newest: u32) {
        let cut = self
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| self.is_start(f) && newest.saturating_sub(f.timestamp) >= self.limits.history_ms)
            .map(|(i, _)| i)
            .next_back();
        let cut = match (cut, self.window_start()) {
            (Some(by_time), Some(by_window)) => Some(by_time.min(by_window)),
            (cut, _) => cut,
        };
        if let Some(cut) = cut {
            for _ in 0..cut {
                self.pop_front(false);
            }
        }
    }

    /// Keeps the HLS window's segments (`window_segments`) or not: only a new owner
    /// that some edge packages HLS from (or that records) needs them, and at 2.5 Mbit/s
    /// they are about 4 MB a stream. Kept from the start; a window let go goes at
    /// once (only while live: call it while the owner is reachable), and one wanted
    /// again fills from what is kept then. Returns whether anything changed.
    pub fn keep_window(&mut self, keep: bool) -> bool {
        if self.window == keep {
            return false;
        }
        self.window = keep;
        if !keep {
            if let Some(newest) = self.frames.back().map(|f| f.timestamp) {
                self.trim_history(newest);
            }
        }
        true
    }

    /// With `window_segments`: the index of the frame opening the HLS window's oldest
    /// segment (the `window_segments + 1`-th newest segment start), or 0 while fewer
    /// segments are kept. `None` without `window_segments`.
    fn window_start(&self) -> Option<usize> {
        if self.limits.window_segments == 0 || !self.window {
            return None;
        }
        let opens = |f: &Frame| f.hls.is_some_and(|m| matches!(m.boundary, Some(Boundary::Segment(_))));
        let oldest = self.frames.iter().enumerate().rev().filter(|(_, f)| opens(f)).nth(self.limits.window_segments);
        Some(oldest.map_or(0, |(i, _)| i))
    }

    /// Removes front frames until a start frame leads, counting them as lost if `lost`.
    fn drop_to_start(&mut self, lost: bool) {
        while let Some(front) = self.frames.front() {
            if self.is_start(front) {
                return;
            }
            self.pop_front(lost);
        }
    }

    fn pop_front(&mut self, lost: bool) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.cost();
            if lost {
                self.lost += 1;
            }
        }
    }

    /// What a new owner gets: metadata and sequence headers, then the kept frames from
    /// a start point, in order.
    pub fn replay(&self) -> impl Iterator<Item = &Frame> {
        let [audio, video, data] = &self.headers;
        data.iter().chain(video.iter()).chain(audio.iter()).chain(self.frames.iter())
    }

    /// Frames lost to the bounds so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(ts: u32, key: bool) -> Frame {
        Frame::video(ts, Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, (ts / 33) as u8]))
    }

    fn stamps(r: &Retained) -> Vec<u32> {
        r.replay().filter(|f| !f.header).map(|f| f.timestamp).collect()
    }

    fn limits() -> RetainLimits {
        RetainLimits { history_ms: 1000, max_bytes: usize::MAX, max_ms: 5000, window_segments: 0 }
    }

    #[test]
    fn live_keeps_back_to_a_keyframe_at_least_the_history_old() {
        let mut r = Retained::new(limits());
        // A keyframe every 500 ms.
        for i in 0..40u32 {
            r.push(video(i * 100, i % 5 == 0), true);
        }
        // Newest 3900: the latest keyframe at least 1000 ms older is 2500.
        assert_eq!(stamps(&r).first(), Some(&2500));
        assert_eq!(stamps(&r).last(), Some(&3900));
        assert_eq!(r.lost(), 0);
    }

    #[test]
    fn an_outage_keeps_everything_and_replays_headers_first() {
        let mut r = Retained::new(limits());
        r.push(Frame::metadata(0, Bytes::from_static(b"meta")), true);
        r.push(Frame::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1])), true);
        for i in 0..20u32 {
            r.push(video(i * 100, i % 5 == 0), true);
        }
        let from = stamps(&r)[0];
        // Down: nothing is trimmed, keyframes or not.
        for i in 20..40u32 {
            r.push(video(i * 100, i % 5 == 0), false);
        }
        let s = stamps(&r);
        assert_eq!((s[0], *s.last().unwrap(), s.len()), (from, 3900, ((3900 - from) / 100 + 1) as usize));
        let first: Vec<bool> = r.replay().take(3).map(|f| f.header).collect();
        assert_eq!(first, vec![true, true, false], "metadata and the sequence header lead the replay");
    }

    #[test]
    fn past_the_bounds_the_oldest_go_to_the_next_keyframe_and_are_counted() {
        let mut r = Retained::new(limits());
        for i in 0..100u32 {
            r.push(video(i * 100, i % 5 == 0), false);
        }
        let s = stamps(&r);
        assert!(*s.last().unwrap() - s[0] <= 5000, "{s:?}");
        assert!(r.replay().find(|f| !f.header).unwrap().keyframe, "the replay starts at a keyframe");
        assert_eq!(r.lost() as usize, 100 - s.len());
        let mut small = Retained::new(RetainLimits { max_bytes: 2000, ..limits() });
        for i in 0..100u32 {
            small.push(video(i * 100, i % 5 == 0), false);
            assert!(small.bytes() <= 2000);
        }
        assert!(small.lost() > 0);
    }

    #[test]
    fn with_window_segments_live_keeps_the_whole_hls_window() {
        use crate::hls::stamper::{Stamper, StamperConfig};
        // 2 s segments over 1.5 s GOPs (segments of 3 s on the timeline), 30 fps: the
        // window's oldest segment starts further back than any fixed time would say.
        let mut stamper = Stamper::new(StamperConfig { target_ms: 2000, part_target_ms: 250 }, None);
        let mut r = Retained::new(RetainLimits { window_segments: 3, max_ms: 30_000, ..limits() });
        let mut opened = Vec::new();
        for i in 0..(30 * 20) {
            let mut f = video(i * 1000 / 30, i % 45 == 0);
            f.hls = stamper.mark(&f, 1_764_892_800_000 + u64::from(f.timestamp));
            if f.hls.is_some_and(|m| matches!(m.boundary, Some(Boundary::Segment(_)))) {
                opened.push(f.timestamp);
            }
            r.push(f, true);
        }
        // Three complete segments and the open one: from the fourth newest start on.
        let from = opened[opened.len() - 4];
        assert_eq!(stamps(&r).first(), Some(&from), "segment starts {opened:?}");
        assert_eq!(r.lost(), 0);
        // Without window segments, the usual keyframe at least 1 s old.
        let mut plain = Retained::new(limits());
        for i in 0..(30 * 20) {
            plain.push(video(i * 1000 / 30, i % 45 == 0), true);
        }
        assert!(stamps(&plain)[0] > from);

        // Told the window is not wanted: trimmed to the usual history at once, and
        // from then on.
        r.keep_window(false);
        let (oldest, newest) = (stamps(&r)[0], *stamps(&r).last().unwrap());
        assert!(newest - oldest < 1000 + 1500, "{oldest}..{newest}: no more than a GOP past the history");
        for i in (30 * 20)..(30 * 20 + 45) {
            let mut f = video(i * 1000 / 30, i % 45 == 0);
            f.hls = stamper.mark(&f, 1_764_892_800_000 + u64::from(f.timestamp));
            r.push(f, true);
        }
        let newest = *stamps(&r).last().unwrap();
        let oldest = stamps(&r)[0];
        assert!(newest - oldest < 1000 + 1500, "{oldest}..{newest}: no more than a GOP past the history");
        // Wanted again: kept from what is there then, growing back to the window.
        r.keep_window(true);
        for i in (30 * 20 + 45)..(30 * 40) {
            let mut f = video(i * 1000 / 30, i % 45 == 0);
            f.hls = stamper.mark(&f, 1_764_892_800_000 + u64::from(f.timestamp));
            r.push(f, true);
        }
        assert!(*stamps(&r).last().unwrap() - stamps(&r)[0] > 3 * 2000, "{:?}", stamps(&r).first());
        assert_eq!(r.lost(), 0);
    }

    #[test]
    fn audio_only_streams_start_at_any_audio_frame() {
        let mut r = Retained::new(limits());
        for i in 0..50u32 {
            r.push(Frame::audio(i * 23, Bytes::from(vec![0xAF, 1, i as u8])), true);
        }
        let s = stamps(&r);
        assert!(*s.last().unwrap() - s[0] >= 1000 && *s.last().unwrap() - s[0] < 1100, "{s:?}");
    }
}
