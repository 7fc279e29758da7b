//! HLS and Low-Latency HLS on the edges, the same on every edge.
//!
//! A stream's segments and parts are cut and numbered **once**, by the edge its
//! publisher is connected to ([`stamper::Stamper`]), and the decision travels with every
//! frame ([`mark::HlsMark`]) over the link, through the owner origin, to every edge.
//! Each edge then packages the frames it relays ([`packager::Packager`]: CMAF/fMP4
//! init segment, parts and segments) deterministically from the frames and their marks
//! alone, so two edges produce byte-identical segments under the same URIs without
//! talking to each other. See `docs/hls.md` for why the numbering holds across an owner
//! failover, a publisher reconnecting through another edge, an edge restart and an
//! edge that starts serving a stream late.
//!
//! Layers, each sans-IO except the last:
//! - [`mark`]: the marks and the publishing edge's stamper;
//! - `codec`, `fmp4`, [`packager`]: FLV / Enhanced RTMP payloads to fMP4 bytes;
//! - `window`, `playlist`: the per-stream sliding window of parts and segments, the
//!   media playlist, blocking playlist reloads;
//! - `dvr`: live rewind's wire (origin to edge) and the packaging of an old segment
//!   from its recorded frames;
//! - `crate::edge::hls`: the HTTP routes and each stream's packaging task.

pub(crate) mod codec;
pub mod dvr;
pub(crate) mod fmp4;
pub mod mark;
pub mod packager;
pub(crate) mod playlist;
pub(crate) mod stamper;
pub(crate) mod window;

use bytes::Bytes;

/// What a stream's packager produced from the frames pushed into it, in order. For one
/// stream, every edge that pushes the same marked frames gets the same events with
/// the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packaged {
    /// An initialization segment (`EXT-X-MAP`): the tracks' codec configuration. A new
    /// version follows a change of sequence headers and is used from the next segment.
    Init(Init),
    /// A segment opened: its parts follow, then [`Packaged::SegmentEnd`].
    SegmentStart(SegmentStart),
    /// One complete part of the open segment.
    Part(Part),
    /// The open segment is complete; its bytes are its parts' bytes, concatenated.
    SegmentEnd(SegmentEnd),
}

/// An initialization segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// Names the init segment in URIs (`init-{version}.mp4`).
    pub version: u32,
    /// The `CODECS` attribute value (RFC 6381), e.g. `avc1.64001f,mp4a.40.2`.
    pub codecs: String,
    pub bytes: Bytes,
}

/// Facts of a segment that are known when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStart {
    /// Media sequence number.
    pub(crate) msn: u64,
    /// `EXT-X-DISCONTINUITY-SEQUENCE` of this segment; one more than the previous
    /// segment's where the media timeline breaks (`EXT-X-DISCONTINUITY` before it).
    pub(crate) discontinuity: u32,
    /// Wall clock at the publishing edge when the segment's first frame arrived, ms
    /// since the Unix epoch (`EXT-X-PROGRAM-DATE-TIME`).
    pub(crate) wall_ms: u64,
    /// The [`Init::version`] this segment's media needs.
    pub init_version: u32,
    /// The targets the publishing edge cut with, in ms (`EXT-X-TARGETDURATION` is
    /// derived from the segments' durations, `PART-TARGET` from this).
    pub(crate) target_ms: u32,
    pub(crate) part_target_ms: u32,
}

/// One part (`EXT-X-PART`): a CMAF chunk, `moof` + `mdat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub msn: u64,
    /// Index of the part in its segment, from 0.
    pub index: u32,
    /// Starts with a keyframe (`INDEPENDENT=YES`).
    pub(crate) independent: bool,
    /// Duration, ms.
    pub(crate) duration_ms: u32,
    pub bytes: Bytes,
}

/// Facts of a segment known when it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentEnd {
    pub msn: u64,
    /// Duration, ms (`EXTINF`): the sum of its parts'.
    pub duration_ms: u32,
    pub(crate) parts: u32,
}
