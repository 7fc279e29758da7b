//! Joins a recording's pieces into one FLV stream, each frame once and in order.
//!
//! When a stream's owner changes, the publishing edge re-sends the new owner what it
//! retained (from a keyframe at least two seconds old, `media::retain`), so the new
//! owner's piece begins with frames the old owner's piece may already hold, and the old
//! piece may lack its last frames (those its writer had not written when it died).
//! The join drops what an earlier piece already gave, exactly as a relay drops a
//! replayed GOP after a failover: [`Continuity`] recognises a frame by the publisher's
//! timestamp and, for equal timestamps, by its size and content. Unchanged codec
//! headers and metadata are dropped too. One recording is one publishing session, so
//! the timestamps are never rebased.
//!
//! Sans-IO: frames in, bytes out.

use bytes::Bytes;

use super::flv_file;
use crate::media::continuity::Continuity;
use crate::media::Frame;
use crate::rtmp::flv;

/// The joined file of one recording, built frame by frame, piece after piece.
#[derive(Debug, Default)]
pub struct Joiner {
    continuity: Continuity,
    frames: u64,
}

impl Joiner {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the joined file starts with.
    pub fn header() -> Bytes {
        Bytes::from_static(&flv::FILE_HEADER)
    }

    /// The tag to append for `frame` (the next frame of the current piece), or `None`
    /// when an earlier piece gave it already.
    pub fn push(&mut self, frame: Frame) -> Option<Bytes> {
        let frame = self.continuity.admit(frame)?;
        self.frames += 1;
        Some(flv_file::tag(&frame))
    }

    /// Frames written so far, and frames dropped as already written.
    pub fn counts(&self) -> (u64, u64) {
        (self.frames, self.continuity.duplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::FrameKind;

    fn video(ts: u32, key: bool, n: u8) -> Frame {
        Frame::video(ts, Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, n]))
    }

    fn audio(ts: u32, n: u8) -> Frame {
        Frame::audio(ts, Bytes::from(vec![0xAF, 1, n]))
    }

    fn header() -> Frame {
        Frame::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 0x64]))
    }

    fn joined(pieces: Vec<Vec<Frame>>) -> Vec<(FrameKind, u32, u8)> {
        let mut j = Joiner::new();
        let mut out = Vec::new();
        for piece in pieces {
            for frame in piece {
                let last = *frame.payload.last().unwrap();
                let (kind, ts) = (frame.kind, frame.timestamp);
                if j.push(frame).is_some() {
                    out.push((kind, ts, last));
                }
            }
        }
        out
    }

    #[test]
    fn a_new_owners_replay_is_dropped_and_what_the_old_piece_lacked_is_kept() {
        // The old owner wrote up to video 66 and audio 43; it died before writing audio
        // 66 and video 100, which the edge had sent it.
        let old =
            vec![header(), video(0, true, 0), audio(20, 1), audio(43, 2), video(33, false, 3), video(66, false, 4)];
        // The new owner got the edge's retained frames from keyframe 0 onwards.
        let new = vec![
            header(),
            video(0, true, 0),
            audio(20, 1),
            audio(43, 2),
            video(33, false, 3),
            video(66, false, 4),
            audio(66, 5),
            video(100, false, 6),
            video(133, true, 7),
        ];
        let got = joined(vec![old, new]);
        let want = vec![
            (FrameKind::Video, 0, 0x64),
            (FrameKind::Video, 0, 0),
            (FrameKind::Audio, 20, 1),
            (FrameKind::Audio, 43, 2),
            (FrameKind::Video, 33, 3),
            (FrameKind::Video, 66, 4),
            (FrameKind::Audio, 66, 5),
            (FrameKind::Video, 100, 6),
            (FrameKind::Video, 133, 7),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn pieces_that_do_not_overlap_are_concatenated() {
        let a = vec![header(), video(0, true, 0), video(33, false, 1)];
        let b = vec![header(), video(66, true, 2)];
        let got = joined(vec![a, b]);
        assert_eq!(got.len(), 4, "the repeated header is dropped: {got:?}");
        assert_eq!(got.last(), Some(&(FrameKind::Video, 66, 2)));
    }
}
