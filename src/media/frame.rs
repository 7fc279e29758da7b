//! One audio, video or data message of a stream, with the facts the media plane needs.

use bytes::Bytes;

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
}

impl Frame {
    /// An audio frame; AAC and Enhanced sequence headers are recognised.
    pub fn audio(timestamp: u32, payload: Bytes) -> Frame {
        let header = flv::audio_facts(&payload).is_some_and(|f| f.sequence_header);
        Frame { kind: FrameKind::Audio, timestamp, keyframe: false, header, payload }
    }

    /// A video frame; keyframes and sequence headers are recognised.
    pub fn video(timestamp: u32, payload: Bytes) -> Frame {
        let facts = flv::video_facts(&payload);
        Frame {
            kind: FrameKind::Video,
            timestamp,
            keyframe: facts.is_some_and(|f| f.keyframe && !f.sequence_header),
            header: facts.is_some_and(|f| f.sequence_header),
            payload,
        }
    }

    /// Stream metadata (`onMetaData`): cached like a sequence header.
    pub fn metadata(timestamp: u32, payload: Bytes) -> Frame {
        Frame { kind: FrameKind::Data, timestamp, keyframe: false, header: true, payload }
    }

    /// Any other data message (`onCuePoint`, …): delivered in order, not cached.
    pub fn data(timestamp: u32, payload: Bytes) -> Frame {
        Frame { kind: FrameKind::Data, timestamp, keyframe: false, header: false, payload }
    }

    /// Bytes this frame accounts for in queue and cache limits.
    pub fn cost(&self) -> usize {
        self.payload.len() + 32
    }
}
