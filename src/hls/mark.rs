//! Where each frame stands in its stream's HLS timeline, decided once by the
//! publishing edge and carried with the frame everywhere (the link, the owner's hub and
//! history, the publishing edge's retained frames that are re-sent after an owner
//! failover), so every edge cuts the same parts and segments under the same numbers.

use serde::{Deserialize, Serialize};

/// A frame's place in the HLS timeline of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlsMark {
    /// Media sequence number of the segment the frame belongs to.
    pub msn: u64,
    /// Index, within that segment, of the part the frame belongs to.
    pub part: u32,
    /// The frame's position on the stream's timeline, ms. Continuous across owner
    /// failovers; a new publishing session continues after the previous one's end (and
    /// its first segment is a discontinuity). This, not the RTMP timestamp, is the
    /// decode time the packager writes.
    pub time_ms: u64,
    /// Set on the first frame of a part (and of a segment): what opens there.
    pub boundary: Option<Boundary>,
}

/// What opens at a marked frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// A new part of the current segment; `independent` when the frame is a keyframe.
    Part { independent: bool },
    /// A new segment (its part 0), always on a keyframe when the stream has video.
    Segment(SegmentOpen),
}

/// The facts of a segment fixed where it opens (see [`super::SegmentStart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOpen {
    pub discontinuity: u32,
    pub wall_ms: u64,
    pub target_ms: u32,
    pub part_target_ms: u32,
}

/// Where a stream's numbering stood at the end of a publishing session: what a new
/// session continues after. The owner origin remembers it from the marks it forwarded
/// and hands it to the next publishing edge (`Control::PublishAcceptedAt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// The last segment's media sequence number.
    pub(crate) msn: u64,
    /// The last segment's discontinuity sequence number.
    pub(crate) discontinuity: u32,
    /// The latest timeline position of the session, ms.
    pub(crate) time_ms: u64,
}

impl Continuation {
    /// Extends what is known with a mark that followed it (segment facts come from
    /// segment boundaries).
    pub(crate) fn after(prev: Option<Continuation>, mark: &HlsMark) -> Option<Continuation> {
        let discontinuity = match mark.boundary {
            Some(Boundary::Segment(open)) => open.discontinuity,
            _ => prev?.discontinuity,
        };
        let time_ms = prev.map_or(mark.time_ms, |p| p.time_ms.max(mark.time_ms));
        Some(Continuation { msn: mark.msn, discontinuity, time_ms })
    }
}
