//! One audio, video or data message of a stream, with the facts the media plane needs.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::hls::mark::HlsMark;
use crate::rtmp::flv;

/// What a frame carries (the FLV tag type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Audio,
    Video,
    /// Script data: `onMetaData`, `onCuePoint`, `onTextData`, … (AMF0 bytes).
    Data,
}

/// A media frame. Cloning is cheap: the payload is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// The publisher's timestamp, in milliseconds.
    pub timestamp: u32,
    /// A video frame a decoder can start from.
    pub keyframe: bool,
    /// Codec configuration or stream metadata: cached by the hub, given to every new
    /// reader first, and never dropped from a reader's queue.
    pub header: bool,
    /// The FLV tag body, untouched.
    pub payload: Bytes,
    /// This frame serialized for players, computed by the first player that needs it
    /// and shared by every clone (see [`WireCache`]).
    pub(crate) wire: WireCache,
    /// When this process got the frame (see [`crate::media::hop`]).
    pub(crate) arrived: Arrival,
    /// Its place in the stream's HLS timeline, set by the publishing edge (`None` on
    /// headers and before the stamper has seen the frame).
    pub hls: Option<HlsMark>,
}

/// When a process got a frame: what its hop latency is measured from. Not part of a
/// frame's identity (two frames with the same content are equal whenever they came).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival(pub Instant);

impl Arrival {
    pub(crate) fn now() -> Self {
        Arrival(Instant::now())
    }
}

impl PartialEq for Arrival {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Arrival {}

/// Serialized forms of one frame, shared by all clones of it, so a stream is chunked
/// once for all players with the same parameters instead of once per player. The
/// media plane does not know the formats: callers pass the encoder.
#[derive(Clone, Default)]
pub(crate) struct WireCache(Arc<WireForms>);

#[derive(Default)]
struct WireForms {
    /// RTMP chunks for (chunk size, message stream id).
    rtmp: OnceLock<(u32, u32, Bytes)>,
    /// A whole FLV tag (header, body, previous-tag-size) for HTTP-FLV.
    flv: OnceLock<Bytes>,
}

impl WireCache {
    /// The RTMP chunks of the frame for `chunk_size` and `stream_id`: cached for the
    /// first parameters asked for, encoded afresh (not cached) for any others.
    pub(crate) fn rtmp(&self, chunk_size: u32, stream_id: u32, encode: impl FnOnce() -> Bytes) -> Bytes {
        let mut encode = Some(encode);
        let (size, id, bytes) = self.0.rtmp.get_or_init(|| (chunk_size, stream_id, (encode.take().unwrap())()));
        if (*size, *id) == (chunk_size, stream_id) {
            return bytes.clone();
        }
        match encode.take() {
            Some(encode) => encode(),
            None => bytes.clone(),
        }
    }

    /// The FLV tag of the frame, encoded once.
    pub(crate) fn flv(&self, encode: impl FnOnce() -> Bytes) -> Bytes {
        self.0.flv.get_or_init(encode).clone()
    }
}

impl PartialEq for WireCache {
    /// A cache never makes two frames differ.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WireCache {}

impl std::fmt::Debug for WireCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCache")
    }
}

impl Frame {
    /// A frame with the given facts, arriving now, not yet serialized for anyone.
    pub(crate) fn new(kind: FrameKind, timestamp: u32, keyframe: bool, header: bool, payload: Bytes) -> Frame {
        Frame {
            kind,
            timestamp,
            keyframe,
            header,
            payload,
            wire: WireCache::default(),
            arrived: Arrival::now(),
            hls: None,
        }
    }

    /// An audio frame; AAC and Enhanced sequence headers are recognised.
    pub fn audio(timestamp: u32, payload: Bytes) -> Frame {
        let header = flv::audio_facts(&payload).is_some_and(|f| f.sequence_header);
        Frame::new(FrameKind::Audio, timestamp, false, header, payload)
    }

    /// A video frame; keyframes and sequence headers are recognised.
    pub fn video(timestamp: u32, payload: Bytes) -> Frame {
        let facts = flv::video_facts(&payload);
        let keyframe = facts.is_some_and(|f| f.keyframe && !f.sequence_header);
        Frame::new(FrameKind::Video, timestamp, keyframe, facts.is_some_and(|f| f.sequence_header), payload)
    }

    /// Audio other than a sequence header: what an [`AudioGate`](super::hub::AudioGate)
    /// lets a reader sleep through, and what the edge's adaptive merge may hold.
    pub fn is_plain_audio(&self) -> bool {
        self.kind == FrameKind::Audio && !self.header
    }

    /// Stream metadata (`onMetaData`): cached like a sequence header.
    pub fn metadata(timestamp: u32, payload: Bytes) -> Frame {
        Frame::new(FrameKind::Data, timestamp, false, true, payload)
    }

    /// Any other data message (`onCuePoint`, …): delivered in order, not cached.
    pub(crate) fn data(timestamp: u32, payload: Bytes) -> Frame {
        Frame::new(FrameKind::Data, timestamp, false, false, payload)
    }

    /// Bytes this frame accounts for in queue and cache limits.
    pub(crate) fn cost(&self) -> usize {
        self.payload.len() + 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_encoding_per_parameters() {
        let frame = Frame::video(40, Bytes::from_static(&[0x27, 1, 0, 0, 0]));
        let copy = frame.clone();
        let calls = std::cell::Cell::new(0);
        let encode = |tag: &'static [u8]| {
            calls.set(calls.get() + 1);
            Bytes::from_static(tag)
        };
        assert_eq!(frame.wire.rtmp(4096, 1, || encode(b"a")), Bytes::from_static(b"a"));
        assert_eq!(copy.wire.rtmp(4096, 1, || encode(b"b")), Bytes::from_static(b"a"));
        assert_eq!(calls.get(), 1, "the clone reused the first encoding");
        // Other parameters are encoded for the asker and not cached.
        assert_eq!(copy.wire.rtmp(128, 1, || encode(b"c")), Bytes::from_static(b"c"));
        assert_eq!(copy.wire.rtmp(4096, 1, || encode(b"d")), Bytes::from_static(b"a"));
        assert_eq!(copy.wire.flv(|| encode(b"flv")), Bytes::from_static(b"flv"));
        assert_eq!(frame.wire.flv(|| encode(b"other")), Bytes::from_static(b"flv"));
        assert_eq!(calls.get(), 3);
    }
}
