//! Keeps a relayed stream continuous for its players across owner changes and
//! publisher sessions.
//!
//! After an origin fails, the publishing edge re-sends the stream to the new owner
//! from a keyframe it still holds, so a player edge that re-subscribes receives frames
//! it already delivered. [`Continuity`] sits between the upstream subscription and the
//! local hub and:
//!
//! - drops frames already delivered, recognised by the publisher's original timestamp
//!   (and, for equal timestamps, by size and content hash);
//! - passes codec headers and metadata only when they changed;
//! - when a different publishing session takes over (its timestamps start afresh),
//!   rebases its timestamps so each kind's timeline continues just after what players
//!   already have, without a jump back or a long leap forward.
//!
//! Knows frames only: no sockets, no clock.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use super::frame::{Frame, FrameKind, WireCache};

/// Frames remembered to recognise duplicates: more than a replayed GOP plus an outage.
const RECENT: usize = 2048;

fn slot(kind: FrameKind) -> usize {
    match kind {
        FrameKind::Audio => 0,
        FrameKind::Video => 1,
        FrameKind::Data => 2,
    }
}

/// A fingerprint of a delivered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    kind: FrameKind,
    timestamp: u32,
    len: usize,
    hash: u64,
}

fn fingerprint(frame: &Frame) -> Seen {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    frame.payload.hash(&mut h);
    Seen { kind: frame.kind, timestamp: frame.timestamp, len: frame.payload.len(), hash: h.finish() }
}

/// Duplicate filter and timestamp rebaser of one relayed stream.
#[derive(Debug, Default)]
pub struct Continuity {
    /// Per kind: the publisher's timestamp of the last frame delivered.
    last_source: [Option<u32>; 3],
    /// Per kind: the timestamp players last got (after rebasing).
    last_out: [Option<u32>; 3],
    recent: VecDeque<Seen>,
    /// Per kind: the last header delivered (audio/video sequence header, metadata).
    headers: [Option<Bytes>; 3],
    /// Added to the publisher's timestamps of the current session.
    offset: i64,
    /// A new session began: compute the offset from its first frame.
    rebase: bool,
    /// Frames dropped as already delivered, and headers dropped as unchanged.
    pub duplicates: u64,
}

impl Continuity {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// A different publishing session follows: its timestamps are unrelated to the old
    /// ones. Everything it sends is new; its timeline is joined to the old one.
    pub fn new_session(&mut self) {
        self.last_source = [None; 3];
        self.recent.clear();
        self.rebase = true;
    }

    /// Where players are in the current session, for a subscription that should resume
    /// right after it (`None` before the session's first frame).
    pub fn resume_point(&self) -> Option<super::hub::ResumePoint> {
        let [audio, video, _] = self.last_source;
        (audio.is_some() || video.is_some()).then_some(super::hub::ResumePoint { audio, video })
    }

    /// The frame to hand to players, re-timestamped if needed, or `None` when players
    /// already have it.
    pub fn admit(&mut self, frame: Frame) -> Option<Frame> {
        let k = slot(frame.kind);
        if self.rebase {
            self.rebase = false;
            // One offset for every kind keeps audio and video in sync: the new
            // session's first frame lands one millisecond after the latest frame
            // players have.
            if let Some(latest) = self.last_out.iter().flatten().max() {
                self.offset = i64::from(*latest) + 1 - i64::from(frame.timestamp);
            }
        }
        if frame.header {
            if self.headers[k].as_ref() == Some(&frame.payload) {
                self.duplicates += 1;
                return None;
            }
            self.headers[k] = Some(frame.payload.clone());
            return Some(self.retime(frame, k));
        }
        let seen = fingerprint(&frame);
        // Only a frame at or before the last delivered one of its kind can be a repeat;
        // the common case (a newer frame) never scans the recent fingerprints.
        if let Some(last) = self.last_source[k] {
            if frame.timestamp < last || (frame.timestamp == last && self.recent.contains(&seen)) {
                self.duplicates += 1;
                return None;
            }
        }
        self.last_source[k] = Some(frame.timestamp);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(seen);
        Some(self.retime(frame, k))
    }

    fn retime(&mut self, frame: Frame, k: usize) -> Frame {
        let mut out = i64::from(frame.timestamp) + self.offset;
        // Never backwards within a kind, whatever the publisher does.
        if let Some(last) = self.last_out[k] {
            out = out.max(i64::from(last));
        }
        let out = out.clamp(0, i64::from(u32::MAX)) as u32;
        self.last_out[k] = Some(out);
        if out == frame.timestamp {
            return frame;
        }
        Frame { timestamp: out, wire: WireCache::default(), ..frame }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(ts: u32, key: bool, n: u8) -> Frame {
        Frame::video(ts, Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, n]))
    }

    fn avc_header(n: u8) -> Frame {
        Frame::video(0, Bytes::from(vec![0x17, 0, 0, 0, 0, n]))
    }

    fn audio(ts: u32, n: u8) -> Frame {
        Frame::audio(ts, Bytes::from(vec![0xAF, 1, n]))
    }

    fn run(c: &mut Continuity, frames: Vec<Frame>) -> Vec<(FrameKind, u32, u8)> {
        frames
            .into_iter()
            .filter_map(|f| c.admit(f))
            .map(|f| (f.kind, f.timestamp, *f.payload.last().unwrap()))
            .collect()
    }

    #[test]
    fn a_replayed_gop_after_an_owner_change_is_not_delivered_twice() {
        let mut c = Continuity::new();
        let first = vec![avc_header(9), video(0, true, 0), audio(10, 1), video(33, false, 2), video(66, false, 3)];
        assert_eq!(run(&mut c, first).len(), 5);
        // The new owner's subscription starts with the header and the GOP again, then
        // what the old owner never sent.
        let replay = vec![avc_header(9), video(0, true, 0), audio(10, 1), video(33, false, 2), video(66, false, 3)];
        let more = vec![audio(33, 4), video(100, false, 5)];
        assert!(run(&mut c, replay).is_empty(), "everything replayed was delivered already");
        assert_eq!(run(&mut c, more), vec![(FrameKind::Audio, 33, 4), (FrameKind::Video, 100, 5)]);
        assert_eq!(c.duplicates, 5);
    }

    #[test]
    fn equal_timestamps_are_told_apart_by_content() {
        let mut c = Continuity::new();
        let got = run(&mut c, vec![video(0, true, 0), video(40, false, 1), video(40, false, 2), video(40, false, 1)]);
        assert_eq!(got, vec![(FrameKind::Video, 0, 0), (FrameKind::Video, 40, 1), (FrameKind::Video, 40, 2)]);
    }

    #[test]
    fn a_new_session_is_joined_after_the_old_timeline_and_changed_headers_pass() {
        let mut c = Continuity::new();
        run(&mut c, vec![avc_header(1), video(5000, true, 0), video(5033, false, 1), audio(5020, 2)]);
        c.new_session();
        // The new publisher starts at 0 with the same header (dropped) and a new one.
        let got = run(&mut c, vec![avc_header(1), video(0, true, 3), video(33, false, 4), audio(10, 5)]);
        assert_eq!(got, vec![(FrameKind::Video, 5034, 3), (FrameKind::Video, 5067, 4), (FrameKind::Audio, 5044, 5)]);
        let got = run(&mut c, vec![avc_header(2), video(66, false, 6)]);
        assert_eq!(got, vec![(FrameKind::Video, 5067, 2), (FrameKind::Video, 5100, 6)], "a changed header passes");
    }

    #[test]
    fn timestamps_never_go_backwards_and_unchanged_frames_keep_their_cache() {
        let mut c = Continuity::new();
        let f = video(100, true, 0);
        let wire = f.wire.clone();
        let out = c.admit(f).unwrap();
        // The same cache: a frame that needs no change is passed through as is.
        assert_eq!(out.wire.rtmp(1, 1, || Bytes::from_static(b"x")), wire.rtmp(1, 1, || Bytes::from_static(b"y")));
        assert!(c.admit(video(50, false, 1)).is_none(), "an older frame is never delivered");
    }
}
