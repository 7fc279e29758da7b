//! A reader's bounded queue. When it overflows, the reader is behind: every queued
//! frame except headers is dropped and the queue skips ahead to the next place a
//! decoder can start (a video keyframe; any audio frame in audio-only streams).
//! Headers and metadata are never dropped. Drops are counted.

use std::collections::VecDeque;

use super::frame::Frame;

/// Bounds of one reader's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        // About 8 s of a 2.5 Mbit/s, 30 fps stream.
        QueueLimits { max_frames: 512, max_bytes: 4 * 1024 * 1024 }
    }
}

/// An emptied queue with room for more frames than this gives the room back...
const SHRINK_ABOVE: usize = 16;
/// ...keeping room for this many.
const SHRINK_TO: usize = 4;

/// Frames waiting for one reader.
#[derive(Debug)]
pub struct Queue {
    limits: QueueLimits,
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Behind: drop everything but headers until a start frame.
    skipping: bool,
    dropped: u64,
}

impl Queue {
    pub fn new(limits: QueueLimits) -> Self {
        Queue { limits, frames: VecDeque::new(), bytes: 0, skipping: false, dropped: 0 }
    }

    /// Adds `frame`; `start` says whether a decoder can start at it.
    pub fn push(&mut self, frame: Frame, start: bool) {
        if self.skipping && !frame.header {
            if !start {
                self.dropped += 1;
                return;
            }
            self.skipping = false;
        }
        let full = self.frames.len() >= self.limits.max_frames || self.bytes + frame.cost() > self.limits.max_bytes;
        if full && !frame.header {
            self.drop_all_but_headers();
            if !start {
                self.skipping = true;
                self.dropped += 1;
                return;
            }
        }
        self.bytes += frame.cost();
        self.frames.push_back(frame);
    }

    fn drop_all_but_headers(&mut self) {
        let before = self.frames.len();
        self.frames.retain(|f| f.header);
        self.dropped += (before - self.frames.len()) as u64;
        self.bytes = self.frames.iter().map(Frame::cost).sum();
    }

    pub fn pop(&mut self) -> Option<Frame> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.cost();
        // A play starts with the cached GOP (150 frames and more) and then holds a
        // frame or two: give the start's room back once it is drained, or every player
        // keeps ~30 KiB of empty queue for good.
        if self.frames.is_empty() && self.frames.capacity() > SHRINK_ABOVE {
            self.frames.shrink_to(SHRINK_TO);
        }
        Some(frame)
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped because the reader was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(ts: u32, key: bool) -> Frame {
        let b0 = if key { 0x17 } else { 0x27 };
        Frame::video(ts, Bytes::from(vec![b0, 0x01, 0, 0, 0, 0]))
    }

    #[test]
    fn a_drained_burst_gives_its_room_back() {
        let mut q = Queue::new(QueueLimits::default());
        for i in 0..200 {
            q.push(video(i, i == 0), i == 0);
        }
        assert!(q.frames.capacity() >= 200);
        while q.pop().is_some() {}
        assert!(q.frames.capacity() <= SHRINK_ABOVE, "room kept: {}", q.frames.capacity());
        // A steady reader's queue is not reallocated.
        q.push(video(200, false), false);
        let room = q.frames.capacity();
        q.pop();
        assert_eq!(q.frames.capacity(), room);
    }

    #[test]
    fn overflow_skips_to_the_next_keyframe_and_keeps_headers() {
        let mut q = Queue::new(QueueLimits { max_frames: 4, max_bytes: usize::MAX });
        q.push(Frame::metadata(0, Bytes::from_static(b"m")), false);
        q.push(video(0, true), true);
        q.push(video(40, false), false);
        q.push(video(80, false), false);
        // Full: this inter frame overflows; the reader now waits for a keyframe.
        q.push(video(120, false), false);
        q.push(video(160, false), false);
        // A header arriving meanwhile is kept.
        q.push(Frame::video(170, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])), false);
        q.push(video(200, true), true);
        q.push(video(240, false), false);
        let got: Vec<(u32, bool, bool)> =
            std::iter::from_fn(|| q.pop()).map(|f| (f.timestamp, f.keyframe, f.header)).collect();
        assert_eq!(got, vec![(0, false, true), (170, false, true), (200, true, false), (240, false, false)]);
        // keyframe 0, inter 40 and 80 dropped on overflow; 120 and 160 while skipping.
        assert_eq!(q.dropped(), 5);
    }

    #[test]
    fn a_keyframe_that_overflows_starts_fresh_instead_of_being_dropped() {
        let mut q = Queue::new(QueueLimits { max_frames: 2, max_bytes: usize::MAX });
        q.push(video(0, true), true);
        q.push(video(40, false), false);
        q.push(video(80, true), true);
        assert_eq!(q.pop().map(|f| f.timestamp), Some(80));
        assert!(q.is_empty());
        assert_eq!(q.dropped(), 2);
    }

    #[test]
    fn the_byte_limit_bounds_the_queue() {
        let mut q = Queue::new(QueueLimits { max_frames: usize::MAX, max_bytes: 1000 });
        for i in 0..1000 {
            q.push(video(i * 40, i % 30 == 0), i % 30 == 0);
            assert!(q.bytes <= 1000 + 64, "{} bytes queued", q.bytes);
        }
        assert!(q.dropped() > 900);
    }
}
