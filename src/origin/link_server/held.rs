//! Media held for a publish that waits for its claim: a bounded, ordered buffer.
//!
//! Knows frames only: no sockets, no claims, no clock.

use std::collections::VecDeque;

use crate::media::Frame;

/// Frames held for one waiting publish.
pub const PENDING_FRAMES: usize = 512;
/// Bytes held for one waiting publish, as [`Frame::cost`] counts them.
pub const PENDING_BYTES: usize = 4 * 1024 * 1024;

/// Frames of a waiting publish, in arrival order, within [`PENDING_FRAMES`] and
/// [`PENDING_BYTES`]. On overflow every held frame except headers (codec sequence
/// headers and metadata, without which nothing decodes) is dropped, and so is every
/// later non-header frame until the publish is decided: the hub then starts the
/// stream again at the publisher's next keyframe.
#[derive(Debug, Default)]
pub struct HeldFrames {
    frames: VecDeque<Frame>,
    bytes: usize,
    overflowed: bool,
}

impl HeldFrames {
    /// Holds `frame`; returns how many frames were dropped to stay within bounds
    /// (this one included).
    pub fn hold(&mut self, frame: Frame) -> u64 {
        if self.overflowed && !frame.header {
            return 1;
        }
        let mut dropped = 0;
        if !self.fits(&frame) && !self.overflowed {
            let before = self.frames.len();
            self.frames.retain(|f| f.header);
            self.bytes = self.frames.iter().map(Frame::cost).sum();
            self.overflowed = true;
            dropped = (before - self.frames.len()) as u64;
            if !frame.header {
                return dropped + 1;
            }
        }
        if !self.fits(&frame) {
            return dropped + 1;
        }
        self.bytes += frame.cost();
        self.frames.push_back(frame);
        dropped
    }

    fn fits(&self, frame: &Frame) -> bool {
        self.frames.len() < PENDING_FRAMES && self.bytes + frame.cost() <= PENDING_BYTES
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The held frames, in arrival order.
    pub fn into_frames(self) -> VecDeque<Frame> {
        self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(ts: u32, key: bool, size: usize) -> Frame {
        let mut body = vec![0u8; size.max(6)];
        body[0] = if key { 0x17 } else { 0x27 };
        body[1] = 0x01;
        Frame::video(ts, Bytes::from(body))
    }

    fn header() -> Frame {
        Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1]))
    }

    #[test]
    fn frames_are_held_in_order_while_they_fit() {
        let mut held = HeldFrames::default();
        assert_eq!(held.hold(Frame::metadata(0, Bytes::from_static(b"meta"))), 0);
        assert_eq!(held.hold(header()), 0);
        for i in 0..10 {
            assert_eq!(held.hold(video(i * 33, i == 0, 100)), 0);
        }
        let ts: Vec<u32> = held.into_frames().iter().map(|f| f.timestamp).collect();
        assert_eq!(ts, [0, 0, 0, 33, 66, 99, 132, 165, 198, 231, 264, 297]);
    }

    #[test]
    fn overflow_keeps_only_headers_and_drops_media_until_decided() {
        let mut held = HeldFrames::default();
        held.hold(Frame::metadata(0, Bytes::from_static(b"meta")));
        held.hold(header());
        let mut dropped = 0;
        for i in 0..(PENDING_FRAMES as u32 + 10) {
            dropped += held.hold(video(i, i % 30 == 0, 100));
        }
        // Two headers plus 510 frames fit; the 511th overflowed and took them all.
        assert_eq!(held.len(), 2);
        assert_eq!(dropped, PENDING_FRAMES as u64 + 10);
        assert!(held.into_frames().iter().all(|f| f.header));
    }

    #[test]
    fn bytes_are_bounded_too_even_for_headers() {
        let mut held = HeldFrames::default();
        let big = PENDING_BYTES / 3;
        assert_eq!(held.hold(video(0, true, big)), 0);
        assert_eq!(held.hold(video(1, false, big)), 0);
        assert_eq!(held.hold(video(2, false, big)), 3, "overflow drops the held frames and this one");
        // A flood of headers (a hostile edge) cannot grow the buffer past its bound.
        let mut dropped = 0;
        for _ in 0..PENDING_FRAMES * 2 {
            dropped += held.hold(Frame::metadata(0, Bytes::from(vec![2u8; 64 * 1024])));
        }
        assert!(held.len() <= PENDING_FRAMES);
        assert!(held.len() * (64 * 1024) <= PENDING_BYTES);
        assert!(dropped > 0);
    }
}
