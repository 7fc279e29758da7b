//! The GOP cache: what a new reader needs to show a picture at once — the latest
//! metadata and sequence headers, then every frame since the last keyframe.

use std::collections::VecDeque;

use super::frame::{Frame, FrameKind};

/// Bounds of the cache. A GOP that outgrows them is dropped whole (a partial GOP
/// without its keyframe is useless) and caching resumes at the next keyframe.
#[derive(Debug, Clone, Copy)]
pub struct GopLimits {
    pub max_bytes: usize,
    /// Longest span of cached frames, in milliseconds of stream time.
    pub max_duration_ms: u32,
}

impl Default for GopLimits {
    fn default() -> Self {
        GopLimits { max_bytes: 16 * 1024 * 1024, max_duration_ms: 10_000 }
    }
}

/// Headers and the current GOP of one stream.
#[derive(Debug, Default)]
pub struct GopCache {
    limits: GopLimits,
    metadata: Option<Frame>,
    video_header: Option<Frame>,
    audio_header: Option<Frame>,
    frames: VecDeque<Frame>,
    bytes: usize,
    /// A video frame has been seen: only video keyframes start a GOP.
    has_video: bool,
    /// The current GOP overflowed; wait for the next keyframe.
    overflowed: bool,
}

impl GopCache {
    pub fn new(limits: GopLimits) -> Self {
        GopCache { limits, ..Default::default() }
    }

    /// Whether the stream has video (then only video keyframes are places to start).
    #[cfg(test)]
    pub fn has_video(&self) -> bool {
        self.has_video
    }

    /// Whether a reader may start (or resume) at `frame`.
    pub fn is_start(&self, frame: &Frame) -> bool {
        match frame.kind {
            FrameKind::Video => frame.keyframe,
            FrameKind::Audio => !self.has_video,
            FrameKind::Data => false,
        }
    }

    /// Records a published frame.
    pub fn push(&mut self, frame: &Frame) {
        if frame.header {
            let slot = match frame.kind {
                FrameKind::Video => &mut self.video_header,
                FrameKind::Audio => &mut self.audio_header,
                FrameKind::Data => &mut self.metadata,
            };
            *slot = Some(frame.clone());
            return;
        }
        if frame.kind == FrameKind::Video && !self.has_video {
            // Audio cached so far cannot start a video stream.
            self.has_video = true;
            self.clear();
        }
        if self.has_video {
            // A GOP: from a video keyframe to the next; dropped whole when too big.
            if frame.kind == FrameKind::Video && frame.keyframe {
                self.clear();
                self.overflowed = false;
            } else if self.overflowed || self.frames.is_empty() {
                return;
            }
            self.append(frame);
            if self.over_limits_now() {
                self.clear();
                self.overflowed = true;
            }
        } else {
            // Audio only: a sliding window that starts with an audio frame.
            if self.frames.is_empty() && frame.kind != FrameKind::Audio {
                return;
            }
            self.append(frame);
            while (self.frames.len() > 1 && self.over_limits_now()) || self.front_is_not_audio() {
                if let Some(old) = self.frames.pop_front() {
                    self.bytes -= old.cost();
                }
            }
        }
    }

    fn append(&mut self, frame: &Frame) {
        self.bytes += frame.cost();
        self.frames.push_back(frame.clone());
    }

    fn front_is_not_audio(&self) -> bool {
        self.frames.front().is_some_and(|f| f.kind != FrameKind::Audio)
    }

    fn over_limits_now(&self) -> bool {
        let span = match (self.frames.front(), self.frames.back()) {
            (Some(a), Some(b)) => b.timestamp.wrapping_sub(a.timestamp),
            _ => 0,
        };
        self.bytes > self.limits.max_bytes || (span > self.limits.max_duration_ms && span < u32::MAX / 2)
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// What a new reader receives first: metadata, sequence headers, then the cached
    /// frames (starting with a keyframe), in order.
    pub fn start_frames(&self) -> impl Iterator<Item = &Frame> {
        [&self.metadata, &self.video_header, &self.audio_header].into_iter().flatten().chain(self.frames.iter())
    }

    /// Bytes of frames cached.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    pub fn key(ts: u32) -> Frame {
        Frame::video(ts, Bytes::from_static(&[0x17, 0x01, 0, 0, 0, 0xAA]))
    }
    pub fn inter(ts: u32) -> Frame {
        Frame::video(ts, Bytes::from_static(&[0x27, 0x01, 0, 0, 0, 0xBB]))
    }
    pub fn avc_header() -> Frame {
        Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1]))
    }
    pub fn aac(ts: u32) -> Frame {
        Frame::audio(ts, Bytes::from_static(&[0xAF, 0x01, 0x21]))
    }

    #[test]
    fn a_new_reader_gets_headers_then_the_gop_from_its_keyframe() {
        let mut g = GopCache::new(GopLimits::default());
        g.push(&Frame::metadata(0, Bytes::from_static(b"meta")));
        g.push(&avc_header());
        g.push(&Frame::audio(0, Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10])));
        g.push(&inter(0)); // before any keyframe: useless, not cached
        g.push(&key(40));
        g.push(&aac(45));
        g.push(&inter(80));
        g.push(&key(2000)); // a new GOP replaces the old one
        g.push(&inter(2040));
        let got: Vec<(FrameKind, u32, bool, bool)> =
            g.start_frames().map(|f| (f.kind, f.timestamp, f.keyframe, f.header)).collect();
        assert_eq!(
            got,
            vec![
                (FrameKind::Data, 0, false, true),
                (FrameKind::Video, 0, false, true),
                (FrameKind::Audio, 0, false, true),
                (FrameKind::Video, 2000, true, false),
                (FrameKind::Video, 2040, false, false),
            ]
        );
    }

    #[test]
    fn an_oversized_gop_is_dropped_until_the_next_keyframe() {
        let mut g = GopCache::new(GopLimits { max_bytes: 200, max_duration_ms: 10_000 });
        g.push(&key(0));
        for i in 1..10 {
            g.push(&inter(i * 40));
        }
        assert_eq!(g.start_frames().count(), 0, "no partial GOP without its keyframe");
        g.push(&inter(500));
        assert_eq!(g.start_frames().count(), 0);
        g.push(&key(600));
        assert_eq!(g.start_frames().next().map(|f| f.timestamp), Some(600));
        assert!(g.bytes() <= 200);
    }

    #[test]
    fn a_long_gop_is_bounded_by_time() {
        let mut g = GopCache::new(GopLimits { max_bytes: usize::MAX, max_duration_ms: 1_000 });
        g.push(&key(0));
        g.push(&inter(900));
        assert_eq!(g.start_frames().count(), 2);
        g.push(&inter(1100));
        assert_eq!(g.start_frames().count(), 0);
    }

    #[test]
    fn audio_only_streams_keep_a_sliding_window() {
        let mut g = GopCache::new(GopLimits { max_bytes: usize::MAX, max_duration_ms: 100 });
        for i in 0..20 {
            g.push(&aac(i * 23));
        }
        let ts: Vec<u32> = g.start_frames().map(|f| f.timestamp).collect();
        assert!(ts.len() > 1 && ts.last().unwrap() - ts[0] <= 100, "{ts:?}");
        assert!(!g.has_video());
        // Video arriving switches to keyframe-started GOPs.
        g.push(&inter(500));
        assert_eq!(g.start_frames().count(), 0);
        g.push(&key(540));
        g.push(&aac(545));
        assert_eq!(g.start_frames().map(|f| f.timestamp).collect::<Vec<_>>(), vec![540, 545]);
    }
}
