//! The HLS window a hub keeps: the frames of a stream's last complete segments and the
//! open one, as the publishing edge marked them, so a reader that starts late (an edge
//! that joins the stream, or restarted) can package the same segments under the same
//! numbers as every other edge.
//!
//! A segment starts at a frame whose mark opens one ([`Boundary::Segment`]). Headers
//! (sequence headers, metadata) are kept in order with the frames; the ones in effect
//! where the window begins are kept apart and replayed first. Bounded by a number of
//! segments, bytes and timeline span: past a bound the oldest whole segment goes. An
//! open segment alone over the byte bound is dropped whole, and keeping resumes at the
//! next segment.
//!
//! Knows frames only: no sockets, no clock.

use std::collections::VecDeque;

use super::frame::{Frame, FrameKind};
use crate::hls::mark::Boundary;

/// Bounds of a hub's HLS window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Complete segments kept (the open one comes on top).
    pub segments: usize,
    /// Bytes of frames, as [`Frame::cost`] counts them.
    pub max_bytes: usize,
    /// Timeline span from the oldest segment's start to the newest frame, ms.
    pub max_ms: u64,
}

impl Default for WindowLimits {
    fn default() -> Self {
        // Six 2 s segments is what a playlist lists (three target durations of
        // hold-back need at least that); 48 MiB holds 14 s of a 25 Mbit/s stream, and
        // 60 s stops a stream with rare keyframes from holding minutes.
        WindowLimits { segments: 6, max_bytes: 48 * 1024 * 1024, max_ms: 60_000 }
    }
}

struct Segment {
    frames: Vec<Frame>,
    bytes: usize,
    start_ms: u64,
}

/// The HLS window of one stream.
pub struct SegmentWindow {
    limits: WindowLimits,
    /// Headers in effect where the window begins, by kind.
    front_headers: [Option<Frame>; 3],
    segments: VecDeque<Segment>,
    bytes: usize,
}

fn slot(kind: FrameKind) -> usize {
    match kind {
        FrameKind::Audio => 0,
        FrameKind::Video => 1,
        FrameKind::Data => 2,
    }
}

impl SegmentWindow {
    pub fn new(limits: WindowLimits) -> Self {
        SegmentWindow { limits, front_headers: [None, None, None], segments: VecDeque::new(), bytes: 0 }
    }

    /// Records a published frame.
    pub fn push(&mut self, frame: &Frame) {
        let opens = frame.hls.is_some_and(|m| matches!(m.boundary, Some(Boundary::Segment(_))));
        if opens {
            let start_ms = frame.hls.map_or(0, |m| m.time_ms);
            self.segments.push_back(Segment { frames: Vec::new(), bytes: 0, start_ms });
        }
        let Some(open) = self.segments.back_mut() else {
            if frame.header {
                self.front_headers[slot(frame.kind)] = Some(frame.clone());
            }
            return;
        };
        open.bytes += frame.cost();
        open.frames.push(frame.clone());
        self.bytes += frame.cost();
        let newest = frame.hls.map(|m| m.time_ms);
        while self.segments.len() > 1
            && (self.segments.len() > self.limits.segments + 1
                || self.bytes > self.limits.max_bytes
                || newest.is_some_and(|t| t.saturating_sub(self.segments[0].start_ms) > self.limits.max_ms))
        {
            self.pop_front();
        }
        if self.bytes > self.limits.max_bytes {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.segments.pop_front() {
            self.bytes -= old.bytes;
            for f in old.frames.into_iter().filter(|f| f.header) {
                let k = slot(f.kind);
                self.front_headers[k] = Some(f);
            }
        }
    }

    /// Whether a segment start is held.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Segments held, the open one included.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Frames held, headers included.
    pub fn frames(&self) -> usize {
        self.front_headers.iter().flatten().count() + self.segments.iter().map(|s| s.frames.len()).sum::<usize>()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The headers in effect at the window's start, then every frame from the oldest
    /// segment's start, in order (empty when no segment start is held).
    pub fn replay(&self) -> impl Iterator<Item = &Frame> {
        let [audio, video, data] = &self.front_headers;
        let headers = [data, video, audio].into_iter().flatten().filter(|_| !self.segments.is_empty());
        headers.chain(self.segments.iter().flat_map(|s| s.frames.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::mark::{HlsMark, SegmentOpen};
    use bytes::Bytes;

    /// A video frame of `size` bytes at `ms`, opening segment `msn` when `opens`.
    fn frame(msn: u64, ms: u64, opens: bool, size: usize) -> Frame {
        let mut body = vec![0u8; size.max(6)];
        body[0] = if opens { 0x17 } else { 0x27 };
        body[1] = 1;
        let mut f = Frame::video(ms as u32, Bytes::from(body));
        let open = SegmentOpen { discontinuity: 0, wall_ms: ms, target_ms: 2000, part_target_ms: 250 };
        f.hls = Some(HlsMark { msn, part: 0, time_ms: ms, boundary: opens.then_some(Boundary::Segment(open)) });
        f
    }

    fn header(n: u8) -> Frame {
        Frame::video(0, Bytes::from(vec![0x17, 0, 0, 0, 0, n]))
    }

    fn msns(w: &SegmentWindow) -> Vec<u64> {
        let mut out: Vec<u64> = w.replay().filter_map(|f| f.hls.map(|m| m.msn)).collect();
        out.dedup();
        out
    }

    /// Segments of 2 s, 10 frames each, numbered from 100.
    fn segments(w: &mut SegmentWindow, from: u64, n: u64, size: usize) {
        for msn in from..from + n {
            for i in 0..10 {
                w.push(&frame(100 + msn, msn * 2000 + i * 200, i == 0, size));
            }
        }
    }

    #[test]
    fn keeps_the_last_complete_segments_and_the_open_one() {
        let mut w = SegmentWindow::new(WindowLimits { segments: 3, max_bytes: usize::MAX, max_ms: 60_000 });
        w.push(&header(1));
        w.push(&frame(99, 0, false, 10)); // before any segment start: not kept
        segments(&mut w, 0, 8, 10);
        assert_eq!(msns(&w), vec![104, 105, 106, 107]);
        assert!(w.replay().next().unwrap().header, "the header in effect comes first");
        assert_eq!(w.frames(), 1 + 40);
    }

    #[test]
    fn a_header_changed_inside_the_window_is_replayed_in_place() {
        let mut w = SegmentWindow::new(WindowLimits { segments: 2, max_bytes: usize::MAX, max_ms: 60_000 });
        w.push(&header(1));
        segments(&mut w, 0, 2, 10);
        w.push(&header(2));
        segments(&mut w, 2, 2, 10);
        let headers: Vec<u8> = w.replay().filter(|f| f.header).map(|f| f.payload[5]).collect();
        assert_eq!(headers, vec![1, 2], "the old header at the front, the new one where it came");
        segments(&mut w, 4, 2, 10);
        let headers: Vec<u8> = w.replay().filter(|f| f.header).map(|f| f.payload[5]).collect();
        assert_eq!(headers, vec![2], "once the change is at the front, only it");
    }

    #[test]
    fn bytes_and_time_bound_the_window() {
        let cost = frame(0, 0, false, 1000).cost();
        let mut w = SegmentWindow::new(WindowLimits { segments: 6, max_bytes: 25 * cost, max_ms: 60_000 });
        segments(&mut w, 0, 5, 1000);
        assert!(w.bytes() <= 25 * cost);
        assert_eq!(msns(&w), vec![103, 104], "whole segments go, oldest first");
        let mut w = SegmentWindow::new(WindowLimits { segments: 6, max_bytes: usize::MAX, max_ms: 5_000 });
        segments(&mut w, 0, 5, 10);
        assert_eq!(msns(&w), vec![103, 104], "at most 5 s from the oldest start to the newest frame");
        // An open segment alone over the bytes is dropped, and keeping resumes at the
        // next start.
        let mut w = SegmentWindow::new(WindowLimits { segments: 6, max_bytes: 5 * cost, max_ms: 60_000 });
        segments(&mut w, 0, 1, 1000);
        assert!(w.is_empty());
        w.push(&frame(200, 30_000, true, 1000));
        assert_eq!(msns(&w), vec![200]);
    }
}
