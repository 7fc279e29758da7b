//! Facts about FLV tag bodies (the payload of RTMP audio and video messages): is it a
//! keyframe, a codec sequence header, which codec. Legacy FLV (AVC, AAC) and Enhanced
//! RTMP (HEVC, AV1, VP9, … identified by FourCC, including multitrack and ModEx
//! packets).
//!
//! Only looks; never changes a byte: payloads are relayed untouched. Knows nothing of
//! chunks, sessions or sockets.

/// A FourCC codec tag of Enhanced RTMP, e.g. `*b"hvc1"`.
pub type FourCc = [u8; 4];

/// Video codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// Legacy codec id (7 = AVC, 2 = Sorenson H.263, …).
    Legacy(u8),
    /// Enhanced RTMP FourCC (`avc1`, `hvc1`, `av01`, `vp09`, `vp08`).
    FourCc(FourCc),
}

/// What a video tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFacts {
    pub codec: VideoCodec,
    /// A frame a decoder can start from (frame type 1).
    pub keyframe: bool,
    /// Codec configuration (AVC sequence header, Enhanced SequenceStart): a new player
    /// needs the latest one before any frame.
    pub sequence_header: bool,
    /// End of sequence marker.
    pub end_of_sequence: bool,
    /// A video info/command frame (frame type 5), not a picture.
    pub command: bool,
}

/// Audio codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// Legacy sound format (10 = AAC, 2 = MP3, …).
    Legacy(u8),
    /// Enhanced RTMP FourCC (`mp4a`, `Opus`, `fLaC`, `ac-3`, `ec-3`, `.mp3`).
    FourCc(FourCc),
}

/// What an audio tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFacts {
    pub codec: AudioCodec,
    /// Codec configuration (AAC AudioSpecificConfig, Enhanced SequenceStart).
    pub sequence_header: bool,
}

const AVC: u8 = 7;
const AAC: u8 = 10;
const EX_AUDIO: u8 = 9;

/// Enhanced packet types (shared by audio and video where they exist).
const SEQUENCE_START: u8 = 0;
const SEQUENCE_END: u8 = 2;
const MPEG2TS_SEQUENCE_START: u8 = 5;
const MULTITRACK: u8 = 6;
const MOD_EX: u8 = 7;

/// Reads an Enhanced RTMP packet type that may be wrapped in ModEx packets: returns the
/// real packet type and the bytes after it. `first` is the packet type from byte 0,
/// `rest` the bytes after byte 0.
pub(crate) fn resolve_packet_type(mut packet_type: u8, mut rest: &[u8]) -> Option<(u8, &[u8])> {
    while packet_type == MOD_EX {
        // ModEx: data size (u8 + 1, or 0xFF then u16 + 1), data, then
        // [modex type:4][packet type:4].
        let (&size, tail) = rest.split_first()?;
        let (size, tail) = if size == 0xFF {
            let (s, tail) = tail.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([s[0], s[1]])) + 1, tail)
        } else {
            (usize::from(size) + 1, tail)
        };
        let (_, tail) = tail.split_at_checked(size)?;
        let (&next, tail) = tail.split_first()?;
        packet_type = next & 0x0F;
        rest = tail;
    }
    Some((packet_type, rest))
}

/// The real packet type and the FourCC of an Enhanced RTMP audio or video tag, looking
/// through ModEx wrappers and a multitrack header. `packet_type` is the low nibble of
/// byte 0, `rest` the bytes after it.
fn enhanced_packet(packet_type: u8, rest: &[u8]) -> Option<(u8, FourCc)> {
    let (packet_type, rest) = resolve_packet_type(packet_type, rest)?;
    let (packet_type, rest) = if packet_type == MULTITRACK {
        // [multitrack type:4][packet type:4], then the (first) track's FourCC.
        let (&b1, tail) = rest.split_first()?;
        (b1 & 0x0F, tail)
    } else {
        (packet_type, rest)
    };
    Some((packet_type, rest.get(..4)?.try_into().ok()?))
}

/// Facts of a video tag body, or `None` when it is too short to tell.
pub fn video_facts(body: &[u8]) -> Option<VideoFacts> {
    let (&b0, rest) = body.split_first()?;
    if b0 & 0x80 == 0 {
        let frame_type = b0 >> 4;
        let codec = b0 & 0x0F;
        let avc_packet = if codec == AVC { Some(*rest.first()?) } else { None };
        return Some(VideoFacts {
            codec: VideoCodec::Legacy(codec),
            keyframe: frame_type == 1,
            sequence_header: avc_packet == Some(0),
            end_of_sequence: avc_packet == Some(2),
            command: frame_type == 5,
        });
    }
    // Enhanced: [IsExHeader:1][FrameType:3][PacketType:4], then the FourCC (or, for
    // multitrack, [multitrack type:4][packet type:4] and a FourCC).
    let frame_type = (b0 >> 4) & 0x07;
    let (packet_type, fourcc) = enhanced_packet(b0 & 0x0F, rest)?;
    let command = frame_type == 5;
    Some(VideoFacts {
        codec: VideoCodec::FourCc(fourcc),
        keyframe: frame_type == 1 && !command,
        sequence_header: !command && matches!(packet_type, SEQUENCE_START | MPEG2TS_SEQUENCE_START),
        end_of_sequence: !command && packet_type == SEQUENCE_END,
        command,
    })
}

/// Facts of an audio tag body, or `None` when it is too short to tell.
pub fn audio_facts(body: &[u8]) -> Option<AudioFacts> {
    let (&b0, rest) = body.split_first()?;
    let format = b0 >> 4;
    if format == EX_AUDIO {
        // Enhanced: [SoundFormat=9:4][PacketType:4], then a FourCC (or multitrack).
        let (packet_type, fourcc) = enhanced_packet(b0 & 0x0F, rest)?;
        return Some(AudioFacts { codec: AudioCodec::FourCc(fourcc), sequence_header: packet_type == SEQUENCE_START });
    }
    let sequence_header = format == AAC && *rest.first()? == 0;
    Some(AudioFacts { codec: AudioCodec::Legacy(format), sequence_header })
}

/// The FLV file header for a stream with audio and video, followed by the first
/// `PreviousTagSize0` (zero): what an HTTP-FLV response starts with.
pub const FILE_HEADER: [u8; 13] = [b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0];

/// FLV tag types.
pub(crate) const TAG_AUDIO: u8 = 8;
pub(crate) const TAG_VIDEO: u8 = 9;
pub(crate) const TAG_SCRIPT: u8 = 18;

/// Bytes of a tag header, and of the previous tag's size that follows each tag.
pub(crate) const TAG_HEADER: usize = 11;
pub(crate) const BACK_POINTER: usize = 4;

/// Whether `header` starts like [`FILE_HEADER`]: `FLV`, then a header of 9 bytes.
pub(crate) fn is_file_header(header: &[u8]) -> bool {
    header.len() >= 9 && &header[..3] == b"FLV" && header[5..9] == [0, 0, 0, 9]
}

/// A tag header read back (what [`write_tag`] writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagHeader {
    pub(crate) tag_type: u8,
    /// Bytes of the body.
    pub(crate) size: u32,
    pub(crate) timestamp: u32,
}

impl TagHeader {
    pub(crate) fn parse(h: &[u8; TAG_HEADER]) -> TagHeader {
        TagHeader {
            tag_type: h[0] & 0x1F,
            size: u32::from_be_bytes([0, h[1], h[2], h[3]]),
            timestamp: u32::from_be_bytes([h[7], h[4], h[5], h[6]]),
        }
    }

    /// Audio, video or script data: the only types an FLV file holds.
    pub(crate) fn known_type(&self) -> bool {
        matches!(self.tag_type, TAG_AUDIO | TAG_VIDEO | TAG_SCRIPT)
    }

    /// Bytes of the whole tag: header, body and the back pointer after it.
    pub(crate) fn total(&self) -> u64 {
        (TAG_HEADER + BACK_POINTER) as u64 + u64::from(self.size)
    }

    /// Whether `back`, the 4 bytes after the body, is this tag's size as it must be.
    pub(crate) fn back_pointer_matches(&self, back: [u8; BACK_POINTER]) -> bool {
        u64::from(u32::from_be_bytes(back)) == TAG_HEADER as u64 + u64::from(self.size)
    }
}

/// Largest tag body FLV can describe (a 24-bit size).
pub const MAX_TAG_BODY: usize = 0xFF_FFFF;

/// Appends one FLV tag: the 11-byte header (type, 24-bit size, timestamp with its
/// extension byte, stream id 0), the body untouched, then the 4-byte previous tag size.
/// Returns `false` (appending nothing) for a body larger than [`MAX_TAG_BODY`].
pub fn write_tag(tag_type: u8, timestamp: u32, body: &[u8], out: &mut bytes::BytesMut) -> bool {
    use bytes::BufMut;
    if body.len() > MAX_TAG_BODY {
        return false;
    }
    let size = body.len() as u32;
    out.reserve(TAG_HEADER + body.len() + BACK_POINTER);
    out.put_u8(tag_type);
    out.put_slice(&size.to_be_bytes()[1..]);
    out.put_slice(&(timestamp & 0xFF_FFFF).to_be_bytes()[1..]);
    out.put_u8((timestamp >> 24) as u8);
    out.put_slice(&[0, 0, 0]);
    out.put_slice(body);
    out.put_u32(size + TAG_HEADER as u32);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_avc_keyframes_inter_frames_and_sequence_headers() {
        let seq = video_facts(&[0x17, 0x00, 0, 0, 0, 0x01, 0x64]).unwrap();
        assert!(seq.keyframe && seq.sequence_header && !seq.end_of_sequence);
        assert_eq!(seq.codec, VideoCodec::Legacy(7));
        let idr = video_facts(&[0x17, 0x01, 0, 0, 0, 0, 0, 0, 5, 0x65]).unwrap();
        assert!(idr.keyframe && !idr.sequence_header);
        let inter = video_facts(&[0x27, 0x01, 0, 0, 0]).unwrap();
        assert!(!inter.keyframe && !inter.sequence_header);
        let eos = video_facts(&[0x17, 0x02, 0, 0, 0]).unwrap();
        assert!(eos.end_of_sequence);
        let info = video_facts(&[0x57, 0x01]).unwrap();
        assert!(info.command && !info.keyframe);
        // Sorenson H.263 keyframe: no packet type byte needed.
        assert!(video_facts(&[0x12]).unwrap().keyframe);
    }

    #[test]
    fn enhanced_hevc_is_recognised_byte_for_byte() {
        // IsExHeader | FrameType 1 (key) | PacketType 0 (SequenceStart), "hvc1", then
        // an HEVCDecoderConfigurationRecord (its first bytes).
        let seq = [0x90, b'h', b'v', b'c', b'1', 0x01, 0x01, 0x60, 0x00, 0x00, 0x00];
        let f = video_facts(&seq).unwrap();
        assert_eq!(f.codec, VideoCodec::FourCc(*b"hvc1"));
        assert!(f.keyframe && f.sequence_header);
        // Key frame, CodedFrames (1): composition time follows the FourCC.
        let key = [0x91, b'h', b'v', b'c', b'1', 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x26, 0x01];
        let f = video_facts(&key).unwrap();
        assert!(f.keyframe && !f.sequence_header);
        // Inter frame, CodedFramesX (3): no composition time.
        let inter = [0xA3, b'h', b'v', b'c', b'1', 0x00, 0x00, 0x00, 0x08, 0x02, 0x01];
        let f = video_facts(&inter).unwrap();
        assert!(!f.keyframe && !f.sequence_header);
        // End of sequence.
        assert!(video_facts(&[0x92, b'h', b'v', b'c', b'1']).unwrap().end_of_sequence);
    }

    #[test]
    fn enhanced_av1_vp9_multitrack_and_modex() {
        let av1 = video_facts(&[0x90, b'a', b'v', b'0', b'1', 0x81]).unwrap();
        assert_eq!(av1.codec, VideoCodec::FourCc(*b"av01"));
        assert!(av1.sequence_header);
        let vp9 = video_facts(&[0x93, b'v', b'p', b'0', b'9', 0x00]).unwrap();
        assert!(vp9.keyframe && !vp9.sequence_header);
        // MPEG2TSSequenceStart counts as a sequence header.
        assert!(video_facts(&[0x95, b'a', b'v', b'0', b'1']).unwrap().sequence_header);
        // Multitrack (6): [OneTrack:4][SequenceStart:4], FourCC.
        let mt = video_facts(&[0x96, 0x00, b'h', b'v', b'c', b'1', 0x00]).unwrap();
        assert!(mt.sequence_header && mt.keyframe);
        // ModEx (7) wrapping CodedFrames: size-1 = 2 (3 bytes of data), then
        // [TimestampOffsetNano:4][CodedFrames:4].
        let modex = video_facts(&[0x97, 0x02, 0x00, 0x01, 0x02, 0x01, b'v', b'p', b'0', b'9']).unwrap();
        assert!(modex.keyframe && !modex.sequence_header);
        assert_eq!(modex.codec, VideoCodec::FourCc(*b"vp09"));
        // A command frame is never a keyframe or header.
        let cmd = video_facts(&[0xD0, b'h', b'v', b'c', b'1']).unwrap();
        assert!(cmd.command && !cmd.keyframe && !cmd.sequence_header);
    }

    #[test]
    fn tags_carry_size_extended_timestamp_and_back_pointer() {
        let mut out = bytes::BytesMut::new();
        assert!(write_tag(9, 0x0123_4567, &[0x17, 1, 2], &mut out));
        assert_eq!(
            &out[..],
            &[9, 0, 0, 3, 0x23, 0x45, 0x67, 0x01, 0, 0, 0, 0x17, 1, 2, 0, 0, 0, 14][..],
            "timestamp's low 24 bits, then its high byte; previous tag size = 11 + 3"
        );
    }

    #[test]
    fn audio_sequence_headers() {
        let aac_seq = audio_facts(&[0xAF, 0x00, 0x12, 0x10]).unwrap();
        assert_eq!(aac_seq.codec, AudioCodec::Legacy(10));
        assert!(aac_seq.sequence_header);
        assert!(!audio_facts(&[0xAF, 0x01, 0x21]).unwrap().sequence_header);
        assert!(!audio_facts(&[0x2F, 0xFF]).unwrap().sequence_header); // MP3
        let opus = audio_facts(&[0x90, b'O', b'p', b'u', b's', 0x4F]).unwrap();
        assert_eq!(opus.codec, AudioCodec::FourCc(*b"Opus"));
        assert!(opus.sequence_header);
        assert!(!audio_facts(&[0x91, b'O', b'p', b'u', b's']).unwrap().sequence_header);
    }

    #[test]
    fn short_or_truncated_bodies_say_nothing_and_never_panic() {
        assert_eq!(video_facts(&[]), None);
        assert_eq!(video_facts(&[0x17]), None, "AVC needs its packet type");
        assert_eq!(video_facts(&[0x90, b'h', b'v']), None);
        assert_eq!(video_facts(&[0x97, 0xFF, 0x00]), None, "truncated ModEx size");
        assert_eq!(video_facts(&[0x97, 0x05, 1, 2]), None, "ModEx data shorter than its size");
        assert_eq!(audio_facts(&[]), None);
        assert_eq!(audio_facts(&[0xAF]), None);
        for len in 0..32 {
            for seed in 0..=255u8 {
                let body: Vec<u8> = (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7)).collect();
                let _ = video_facts(&body);
                let _ = audio_facts(&body);
            }
        }
    }
}
