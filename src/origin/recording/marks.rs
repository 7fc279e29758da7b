//! The marks side file of a piece, `{epoch}.marks`: one fixed-size record per tag of
//! the piece's FLV, in the same order, saying where the tag lies and the HLS mark its
//! frame carried (`docs/recording.md`, "Marks"). What live rewind reads to list a
//! piece's old segments and to give back their frames with their marks
//! ([`super::dvr`]).
//!
//! A record is [`RECORD`] bytes, big-endian: `offset: u64` (the tag's byte offset in
//! the piece), `msn: u64, time_ms: u64, wall_ms: u64, part: u32, discontinuity: u32,
//! target_ms: u32, part_target_ms: u32, kind: u8` ([`Kind`]), `tag_type: u8` (8, 9 or
//! 18), `header: u8` (a codec header or metadata), then 5 bytes of padding (zero).
//! The segment-opening fields (`discontinuity`, `wall_ms`, the targets) are zero
//! unless `kind` is [`Kind::Segment`].
//!
//! Sans-IO: bytes in, records out.

use crate::hls::mark::{Boundary, HlsMark, SegmentOpen};
use crate::media::{Frame, FrameKind};
use crate::rtmp::flv::{TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

/// Bytes of one record.
pub const RECORD: usize = 56;

/// What a record says opens at its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No mark: a codec header, metadata, a frame before the stream's first segment.
    Unmarked = 0,
    /// Marked, nothing opens here.
    Marked = 1,
    /// A new part.
    Part = 2,
    /// A new part, on a keyframe.
    IndependentPart = 3,
    /// A new segment (its part 0).
    Segment = 4,
}

/// One record: a tag of the piece and its frame's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkRecord {
    pub offset: u64,
    pub msn: u64,
    pub time_ms: u64,
    pub wall_ms: u64,
    pub part: u32,
    pub discontinuity: u32,
    pub target_ms: u32,
    pub part_target_ms: u32,
    pub kind: Kind,
    pub tag_type: u8,
    pub header: bool,
}

impl MarkRecord {
    /// The record of `frame`, whose tag starts at `offset` in the piece.
    pub fn of(frame: &Frame, offset: u64) -> MarkRecord {
        let tag_type = match frame.kind {
            FrameKind::Audio => TAG_AUDIO,
            FrameKind::Video => TAG_VIDEO,
            FrameKind::Data => TAG_SCRIPT,
        };
        let mut record = MarkRecord {
            offset,
            msn: 0,
            time_ms: 0,
            wall_ms: 0,
            part: 0,
            discontinuity: 0,
            target_ms: 0,
            part_target_ms: 0,
            kind: Kind::Unmarked,
            tag_type,
            header: frame.header,
        };
        if let Some(mark) = frame.hls {
            record.msn = mark.msn;
            record.time_ms = mark.time_ms;
            record.part = mark.part;
            record.kind = match mark.boundary {
                None => Kind::Marked,
                Some(Boundary::Part { independent: false }) => Kind::Part,
                Some(Boundary::Part { independent: true }) => Kind::IndependentPart,
                Some(Boundary::Segment(open)) => {
                    record.discontinuity = open.discontinuity;
                    record.wall_ms = open.wall_ms;
                    record.target_ms = open.target_ms;
                    record.part_target_ms = open.part_target_ms;
                    Kind::Segment
                }
            };
        }
        record
    }

    /// The mark the frame carried (`None` for [`Kind::Unmarked`]).
    pub fn mark(&self) -> Option<HlsMark> {
        let boundary = match self.kind {
            Kind::Unmarked => return None,
            Kind::Marked => None,
            Kind::Part => Some(Boundary::Part { independent: false }),
            Kind::IndependentPart => Some(Boundary::Part { independent: true }),
            Kind::Segment => Some(Boundary::Segment(SegmentOpen {
                discontinuity: self.discontinuity,
                wall_ms: self.wall_ms,
                target_ms: self.target_ms,
                part_target_ms: self.part_target_ms,
            })),
        };
        Some(HlsMark { msn: self.msn, part: self.part, time_ms: self.time_ms, boundary })
    }

    /// Whether a segment opens at this tag.
    pub fn opens_segment(&self) -> bool {
        self.kind == Kind::Segment
    }

    pub fn encode(&self) -> [u8; RECORD] {
        let mut out = [0u8; RECORD];
        out[0..8].copy_from_slice(&self.offset.to_be_bytes());
        out[8..16].copy_from_slice(&self.msn.to_be_bytes());
        out[16..24].copy_from_slice(&self.time_ms.to_be_bytes());
        out[24..32].copy_from_slice(&self.wall_ms.to_be_bytes());
        out[32..36].copy_from_slice(&self.part.to_be_bytes());
        out[36..40].copy_from_slice(&self.discontinuity.to_be_bytes());
        out[40..44].copy_from_slice(&self.target_ms.to_be_bytes());
        out[44..48].copy_from_slice(&self.part_target_ms.to_be_bytes());
        out[48] = self.kind as u8;
        out[49] = self.tag_type;
        out[50] = u8::from(self.header);
        out
    }

    /// Parses one record; `None` when it cannot be one (an unknown kind or tag type, a
    /// flag that is not 0 or 1, padding that is not zero).
    pub fn decode(bytes: &[u8]) -> Option<MarkRecord> {
        if bytes.len() != RECORD || bytes[51..].iter().any(|b| *b != 0) {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let kind = match bytes[48] {
            0 => Kind::Unmarked,
            1 => Kind::Marked,
            2 => Kind::Part,
            3 => Kind::IndependentPart,
            4 => Kind::Segment,
            _ => return None,
        };
        let tag_type = bytes[49];
        if ![TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT].contains(&tag_type) || bytes[50] > 1 {
            return None;
        }
        Some(MarkRecord {
            offset: u64_at(0),
            msn: u64_at(8),
            time_ms: u64_at(16),
            wall_ms: u64_at(24),
            part: u32_at(32),
            discontinuity: u32_at(36),
            target_ms: u32_at(40),
            part_target_ms: u32_at(44),
            kind,
            tag_type,
            header: bytes[50] == 1,
        })
    }
}

/// The records of `bytes` that can be trusted: whole ones, in increasing offset,
/// stopping at the first that is not (a torn or damaged tail). `after` is the offset
/// of the record before `bytes` (0 for the first).
pub fn decode_all(bytes: &[u8], mut after: u64) -> Vec<MarkRecord> {
    let mut out = Vec::with_capacity(bytes.len() / RECORD);
    for chunk in bytes.chunks_exact(RECORD) {
        match MarkRecord::decode(chunk) {
            Some(r) if r.offset > after => {
                after = r.offset;
                out.push(r);
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::packager::tests::stream;

    #[test]
    fn records_are_56_bytes_and_round_trip_with_their_marks() {
        let frames = stream(3);
        let mut offset = 13;
        let mut kinds = std::collections::HashSet::new();
        for f in &frames {
            let record = MarkRecord::of(f, offset);
            let bytes = record.encode();
            assert_eq!(bytes.len(), RECORD);
            assert_eq!(MarkRecord::decode(&bytes), Some(record));
            assert_eq!(record.mark(), f.hls, "{f:?}");
            assert_eq!(record.header, f.header);
            kinds.insert(record.kind as u8);
            offset += 100;
        }
        assert_eq!(kinds.len(), 5, "every kind, from unmarked headers to segment openings: {kinds:?}");
        // The layout is fixed: offset first, kind, tag type and header after the numbers.
        let record = MarkRecord::of(&frames[0], 0x0102);
        let bytes = record.encode();
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!((bytes[48], bytes[49], bytes[50]), (0, record.tag_type, 1));
    }

    #[test]
    fn garbage_and_torn_tails_are_left_out() {
        let frames = stream(2);
        let mut bytes = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            bytes.extend_from_slice(&MarkRecord::of(f, 13 + i as u64 * 50).encode());
        }
        assert_eq!(decode_all(&bytes, 0).len(), frames.len());
        // A torn last record.
        assert_eq!(decode_all(&bytes[..bytes.len() - 3], 0).len(), frames.len() - 1);
        // A damaged one ends what can be trusted.
        let mut damaged = bytes.clone();
        damaged[5 * RECORD + 48] = 9;
        assert_eq!(decode_all(&damaged, 0).len(), 5);
        let mut padded = bytes.clone();
        padded[2 * RECORD + 55] = 1;
        assert_eq!(decode_all(&padded, 0).len(), 2);
        // Offsets must increase.
        let mut backwards = bytes.clone();
        backwards[3 * RECORD..4 * RECORD].copy_from_slice(&MarkRecord::of(&frames[3], 13).encode());
        assert_eq!(decode_all(&backwards, 0).len(), 3);
        // Continuing after an earlier record.
        assert_eq!(decode_all(&bytes[4 * RECORD..], 13 + 3 * 50).len(), frames.len() - 4);
        assert!(decode_all(&bytes[4 * RECORD..], 13 + 4 * 50).is_empty());
    }
}
