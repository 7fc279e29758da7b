//! Link framing. Every frame is `length: u32 BE` (bytes that follow, at most
//! [`MAX_FRAME`]) then a tag byte:
//!
//! - `0x01` control: a bincode-encoded [`Control`];
//! - `0x02` media: `channel: u32 BE, kind: u8 (FLV tag type 8/9/18), flags: u8,
//!   timestamp: u32 BE`, then the FLV tag body, untouched.
//!
//! Media flags: bit 0 keyframe, bit 1 header (sequence header or metadata), bit 2 the
//! frame carries its HLS mark ([`HlsMark`]), which then follows the timestamp:
//! `msn: u64 BE, part: u32 BE, time_ms: u64 BE, boundary: u8` (0 none, 1 a part, 2 an
//! independent part, 3 a segment), and for a segment `discontinuity: u32 BE, wall_ms:
//! u64 BE, target_ms: u32 BE, part_target_ms: u32 BE`: 21 bytes a frame, 41 where a
//! segment opens. Other flag bits are refused. Decoded media payloads share the
//! receive buffer (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::protocol::{ChannelId, Control};
use crate::hls::mark::{Boundary, HlsMark, SegmentOpen};
use crate::media::{Frame, FrameKind};

/// Largest frame body: an RTMP message can be 16 MiB - 1, plus the media header.
pub(crate) const MAX_FRAME: usize = 16 * 1024 * 1024 + 16;
/// Largest control frame body (control messages are small).
pub(crate) const MAX_CONTROL: usize = 64 * 1024;
/// Largest frame body before the peer has authenticated (a `Hello` is a few dozen
/// bytes): a stranger cannot make a link buffer more than this.
pub(crate) const MAX_UNAUTHENTICATED: usize = 4 * 1024;

const TAG_CONTROL: u8 = 0x01;
const TAG_MEDIA: u8 = 0x02;
const MEDIA_HEADER: usize = 4 + FRAME_HEAD;
/// A frame head without its mark: kind, flags, timestamp.
const FRAME_HEAD: usize = 1 + 1 + 4;
const FLAG_KEYFRAME: u8 = 0b01;
const FLAG_HEADER: u8 = 0b10;
const FLAG_MARK: u8 = 0b100;
const MARK: usize = 8 + 4 + 8 + 1;
const SEGMENT_OPEN: usize = 4 + 8 + 4 + 4;
const BOUNDARY_NONE: u8 = 0;
const BOUNDARY_PART: u8 = 1;
const BOUNDARY_INDEPENDENT: u8 = 2;
const BOUNDARY_SEGMENT: u8 = 3;

/// A media frame on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    pub channel: ChannelId,
    pub frame: Frame,
}

/// One frame of the link.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkFrame {
    Control(Control),
    Media(MediaFrame),
}

/// Why bytes from a link peer were refused. The link is closed; other links are not
/// affected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// A length prefix above the limit for its kind.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// An empty frame (no tag).
    #[error("empty frame")]
    Empty,
    /// A tag that is neither control nor media.
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    /// A control body that is not a valid `Control`.
    #[error("invalid control frame: {0}")]
    BadControl(String),
    /// A media frame shorter than its header, or with an unknown media kind.
    #[error("invalid media frame: {0}")]
    BadMedia(&'static str),
}

/// Encodes and decodes link frames.
#[derive(Debug, Default)]
pub struct FrameCodec;

/// A frame kind as its FLV tag type.
fn kind_byte(kind: FrameKind) -> u8 {
    match kind {
        FrameKind::Audio => 8,
        FrameKind::Video => 9,
        FrameKind::Data => 18,
    }
}

/// The frame kind of an FLV tag type, `None` for any other byte.
fn kind_of(byte: u8) -> Option<FrameKind> {
    match byte {
        8 => Some(FrameKind::Audio),
        9 => Some(FrameKind::Video),
        18 => Some(FrameKind::Data),
        _ => None,
    }
}

impl FrameCodec {
    /// Appends `frame` to `out`.
    pub fn encode(frame: &LinkFrame, out: &mut BytesMut) {
        match frame {
            LinkFrame::Control(control) => {
                let body = raftcast_raft::rpc::encode(control);
                out.reserve(5 + body.len());
                out.put_u32(1 + body.len() as u32);
                out.put_u8(TAG_CONTROL);
                out.put_slice(&body);
            }
            LinkFrame::Media(m) => {
                let f = &m.frame;
                let len = 1 + 4 + head_len(f) + f.payload.len();
                out.reserve(4 + len);
                out.put_u32(len as u32);
                out.put_u8(TAG_MEDIA);
                out.put_u32(m.channel.0);
                put_head(f, out);
                out.put_slice(&f.payload);
            }
        }
    }

    /// Takes the next complete frame from `buf`, or `Ok(None)` when more bytes are
    /// needed. A length prefix is checked before any of its bytes are awaited.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<LinkFrame>, LinkError> {
        Self::decode_within(buf, MAX_FRAME)
    }

    /// [`decode`](Self::decode) with a lower bound on the frame length, e.g.
    /// [`MAX_UNAUTHENTICATED`] until the peer has said `Hello`.
    pub(crate) fn decode_within(buf: &mut BytesMut, max: usize) -> Result<Option<LinkFrame>, LinkError> {
        let Some(prefix) = buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len == 0 {
            return Err(LinkError::Empty);
        }
        if len > max.min(MAX_FRAME) {
            return Err(LinkError::TooLarge(len));
        }
        let Some(&tag) = buf.get(4) else { return Ok(None) };
        match tag {
            TAG_CONTROL if len > MAX_CONTROL => return Err(LinkError::TooLarge(len)),
            TAG_CONTROL | TAG_MEDIA => {}
            other => return Err(LinkError::UnknownTag(other)),
        }
        // Memory grows only with bytes that arrived, never with a declared length.
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(5);
        let mut body = buf.split_to(len - 1).freeze();
        match tag {
            TAG_CONTROL => raftcast_raft::rpc::decode::<Control>(&body)
                .map(|c| Some(LinkFrame::Control(c)))
                .map_err(|e| LinkError::BadControl(e.to_string())),
            _ => {
                if body.len() < MEDIA_HEADER {
                    return Err(LinkError::BadMedia("shorter than its header"));
                }
                let channel = ChannelId(body.get_u32());
                let head = get_head(&mut body).map_err(LinkError::BadMedia)?;
                if head.header {
                    // Sequence headers and metadata live as long as the stream (hubs keep
                    // them for every new player); as a slice of the read buffer one would
                    // keep that whole buffer (64 KiB or more) alive with it. They are
                    // small and rare: a copy of their own.
                    body = Bytes::copy_from_slice(&body);
                }
                Ok(Some(LinkFrame::Media(MediaFrame { channel, frame: head.frame(body) })))
            }
        }
    }
}

/// A media frame's head, as the link and live rewind's frames body (`crate::hls::dvr`)
/// carry it before the payload: `kind: u8, flags: u8, timestamp: u32 BE`, then the
/// mark when flagged.
#[derive(Debug)]
pub(crate) struct FrameHead {
    kind: FrameKind,
    keyframe: bool,
    pub(crate) header: bool,
    timestamp: u32,
    hls: Option<HlsMark>,
}

impl FrameHead {
    /// The frame with this head and `payload`.
    pub(crate) fn frame(self, payload: Bytes) -> Frame {
        let mut frame = Frame::new(self.kind, self.timestamp, self.keyframe, self.header, payload);
        frame.hls = self.hls;
        frame
    }
}

/// Bytes [`put_head`] writes for `frame`.
pub(crate) fn head_len(frame: &Frame) -> usize {
    FRAME_HEAD + frame.hls.as_ref().map_or(0, mark_len)
}

/// Appends `frame`'s head.
pub(crate) fn put_head(frame: &Frame, out: &mut BytesMut) {
    out.put_u8(kind_byte(frame.kind));
    out.put_u8(
        if frame.keyframe { FLAG_KEYFRAME } else { 0 }
            | if frame.header { FLAG_HEADER } else { 0 }
            | if frame.hls.is_some() { FLAG_MARK } else { 0 },
    );
    out.put_u32(frame.timestamp);
    if let Some(mark) = &frame.hls {
        put_mark(mark, out);
    }
}

/// Reads a frame's head from the front of `body`, checking every length first; what is
/// wrong when it is not one.
pub(crate) fn get_head(body: &mut Bytes) -> Result<FrameHead, &'static str> {
    if body.len() < FRAME_HEAD {
        return Err("shorter than its header");
    }
    let kind = kind_of(body.get_u8()).ok_or("unknown media kind")?;
    let flags = body.get_u8();
    if flags & !(FLAG_KEYFRAME | FLAG_HEADER | FLAG_MARK) != 0 {
        return Err("unknown media flags");
    }
    let timestamp = body.get_u32();
    let hls = if flags & FLAG_MARK != 0 { Some(get_mark(body)?) } else { None };
    Ok(FrameHead { kind, keyframe: flags & FLAG_KEYFRAME != 0, header: flags & FLAG_HEADER != 0, timestamp, hls })
}

/// Bytes [`put_mark`] writes for `mark`.
fn mark_len(mark: &HlsMark) -> usize {
    MARK + if matches!(mark.boundary, Some(Boundary::Segment(_))) { SEGMENT_OPEN } else { 0 }
}

fn put_mark(mark: &HlsMark, out: &mut BytesMut) {
    out.put_u64(mark.msn);
    out.put_u32(mark.part);
    out.put_u64(mark.time_ms);
    match mark.boundary {
        None => out.put_u8(BOUNDARY_NONE),
        Some(Boundary::Part { independent: false }) => out.put_u8(BOUNDARY_PART),
        Some(Boundary::Part { independent: true }) => out.put_u8(BOUNDARY_INDEPENDENT),
        Some(Boundary::Segment(open)) => {
            out.put_u8(BOUNDARY_SEGMENT);
            out.put_u32(open.discontinuity);
            out.put_u64(open.wall_ms);
            out.put_u32(open.target_ms);
            out.put_u32(open.part_target_ms);
        }
    }
}

/// Reads a mark from the front of `body`, checking every length first.
fn get_mark(body: &mut Bytes) -> Result<HlsMark, &'static str> {
    if body.len() < MARK {
        return Err("a mark shorter than its fields");
    }
    let msn = body.get_u64();
    let part = body.get_u32();
    let time_ms = body.get_u64();
    let boundary = match body.get_u8() {
        BOUNDARY_NONE => None,
        BOUNDARY_PART => Some(Boundary::Part { independent: false }),
        BOUNDARY_INDEPENDENT => Some(Boundary::Part { independent: true }),
        BOUNDARY_SEGMENT => {
            if body.len() < SEGMENT_OPEN {
                return Err("a segment mark shorter than its fields");
            }
            Some(Boundary::Segment(SegmentOpen {
                discontinuity: body.get_u32(),
                wall_ms: body.get_u64(),
                target_ms: body.get_u32(),
                part_target_ms: body.get_u32(),
            }))
        }
        _ => return Err("unknown mark boundary"),
    };
    Ok(HlsMark { msn, part, time_ms, boundary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raftcast_raft::StreamKey;

    #[test]
    fn a_large_frame_is_refused_before_hello_from_its_prefix_alone() {
        let mut buf = BytesMut::new();
        buf.put_u32(16 * 1024 * 1024);
        buf.put_u8(TAG_MEDIA);
        assert_eq!(FrameCodec::decode(&mut buf), Ok(None), "after Hello a 16 MiB frame is awaited");
        assert_eq!(
            FrameCodec::decode_within(&mut buf, MAX_UNAUTHENTICATED),
            Err(LinkError::TooLarge(16 * 1024 * 1024))
        );
        let hello = encode_to_bytes(&LinkFrame::Control(Control::Hello {
            protocol: 1,
            edge: "edge-1".into(),
            secret: "s".repeat(64),
        }));
        let mut small = BytesMut::from(&hello[..]);
        assert!(FrameCodec::decode_within(&mut small, MAX_UNAUTHENTICATED).unwrap().is_some());
    }

    fn encode_to_bytes(frame: &LinkFrame) -> Bytes {
        let mut out = BytesMut::new();
        FrameCodec::encode(frame, &mut out);
        out.freeze()
    }

    fn media(channel: u32, ts: u32, key: bool, payload: &'static [u8]) -> LinkFrame {
        let frame = Frame::new(FrameKind::Video, ts, key, false, Bytes::from_static(payload));
        LinkFrame::Media(MediaFrame { channel: ChannelId(channel), frame })
    }

    #[test]
    fn headers_get_their_own_bytes_and_other_frames_stay_slices_of_the_read_buffer() {
        let header = Frame::new(FrameKind::Video, 0, true, true, Bytes::from_static(b"\x17\x00avcC"));
        let mut wire = BytesMut::new();
        FrameCodec::encode(&LinkFrame::Media(MediaFrame { channel: ChannelId(1), frame: header }), &mut wire);
        FrameCodec::encode(&media(1, 40, false, b"\x27\x01slice"), &mut wire);
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        let within = |f: &LinkFrame| match f {
            LinkFrame::Media(m) => range.contains(&(m.frame.payload.as_ptr() as usize)),
            _ => unreachable!(),
        };
        let first = FrameCodec::decode(&mut wire).unwrap().unwrap();
        let second = FrameCodec::decode(&mut wire).unwrap().unwrap();
        assert!(!within(&first), "a sequence header does not keep the read buffer alive");
        assert!(within(&second), "media is not copied");
    }

    #[test]
    fn media_frames_have_the_documented_layout() {
        let bytes = encode_to_bytes(&media(7, 0x0102_0304, true, b"\x17\x01xyz"));
        assert_eq!(&bytes[..], &[0, 0, 0, 16, 0x02, 0, 0, 0, 7, 9, 0b01, 1, 2, 3, 4, 0x17, 0x01, b'x', b'y', b'z'][..]);
    }

    #[test]
    fn frames_round_trip_byte_by_byte_and_all_at_once() {
        let frames = vec![
            LinkFrame::Control(Control::Hello { protocol: 1, edge: "edge-1".into(), secret: "s".repeat(20) }),
            media(1, 0, true, b"\x17\x01abc"),
            LinkFrame::Control(Control::Subscribe {
                channel: ChannelId(2),
                stream: StreamKey::new("live", "foo").unwrap(),
            }),
            media(2, 40, false, b""),
            LinkFrame::Control(Control::Ping { seq: 9 }),
            LinkFrame::Control(Control::PublishRefused {
                channel: ChannelId(3),
                reason: crate::link::PublishRefusal::StaleEpoch { epoch: 4, current: 5 },
            }),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            FrameCodec::encode(f, &mut wire);
        }
        let all = wire.clone();
        let mut got = Vec::new();
        while let Some(f) = FrameCodec::decode(&mut wire).unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
        assert!(wire.is_empty());
        // One byte at a time: nothing until each frame is complete, then the same frames.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(f) = FrameCodec::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn bad_frames_are_refused_before_their_bytes_arrive() {
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, TAG_MEDIA][..]);
        assert_eq!(FrameCodec::decode(&mut huge), Err(LinkError::TooLarge(0x7fff_ffff)));
        let mut big_control = BytesMut::from(&[0, 0x10, 0, 0, TAG_CONTROL][..]);
        assert!(matches!(FrameCodec::decode(&mut big_control), Err(LinkError::TooLarge(_))));
        let mut empty = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(FrameCodec::decode(&mut empty), Err(LinkError::Empty));
        let mut tag = BytesMut::from(&[0, 0, 0, 1, 0x7e][..]);
        assert_eq!(FrameCodec::decode(&mut tag), Err(LinkError::UnknownTag(0x7e)));
        let mut short = BytesMut::from(&[0, 0, 0, 3, TAG_MEDIA, 0, 0][..]);
        assert_eq!(FrameCodec::decode(&mut short), Err(LinkError::BadMedia("shorter than its header")));
        let mut kind = BytesMut::from(&[0, 0, 0, 11, TAG_MEDIA, 0, 0, 0, 1, 42, 0, 0, 0, 0, 0][..]);
        assert_eq!(FrameCodec::decode(&mut kind), Err(LinkError::BadMedia("unknown media kind")));
        let mut control = BytesMut::from(&[0, 0, 0, 3, TAG_CONTROL, 0xff, 0xff][..]);
        assert!(matches!(FrameCodec::decode(&mut control), Err(LinkError::BadControl(_))));
    }

    fn marked(channel: u32, mark: HlsMark) -> LinkFrame {
        let mut frame = Frame::new(FrameKind::Video, 40, true, false, Bytes::from_static(b"\x17\x01pay"));
        frame.hls = Some(mark);
        LinkFrame::Media(MediaFrame { channel: ChannelId(channel), frame })
    }

    fn segment_mark() -> HlsMark {
        let open = SegmentOpen { discontinuity: 3, wall_ms: 1_764_892_800_123, target_ms: 2000, part_target_ms: 250 };
        HlsMark { msn: 882_446_400, part: 0, time_ms: 1_764_892_800_000, boundary: Some(Boundary::Segment(open)) }
    }

    #[test]
    fn marks_round_trip_and_have_the_documented_size() {
        let plain = encode_to_bytes(&media(1, 40, true, b"\x17\x01pay"));
        for (mark, extra) in [
            (HlsMark { msn: 7, part: 2, time_ms: 99, boundary: None }, MARK),
            (HlsMark { msn: 7, part: 3, time_ms: 100, boundary: Some(Boundary::Part { independent: false }) }, MARK),
            (HlsMark { msn: 7, part: 4, time_ms: 101, boundary: Some(Boundary::Part { independent: true }) }, MARK),
            (segment_mark(), MARK + SEGMENT_OPEN),
        ] {
            let frame = marked(1, mark);
            let bytes = encode_to_bytes(&frame);
            assert_eq!(bytes.len(), plain.len() + extra);
            assert_eq!(bytes[10] & FLAG_MARK, FLAG_MARK);
            let mut buf = BytesMut::from(&bytes[..]);
            let got = FrameCodec::decode(&mut buf).unwrap().unwrap();
            assert_eq!(got, frame);
            let LinkFrame::Media(m) = got else { unreachable!() };
            assert_eq!(m.frame.hls, Some(mark), "the mark itself, not only equal frames");
            assert_eq!(&m.frame.payload[..], b"\x17\x01pay", "the payload follows the mark");
        }
    }

    #[test]
    fn truncated_or_invalid_marks_are_refused_without_panicking() {
        let bytes = encode_to_bytes(&marked(1, segment_mark()));
        let payload = 5;
        // Every truncation of the mark (re-framed with a consistent length prefix).
        for cut in 1..=(MARK + SEGMENT_OPEN + payload) {
            let body = &bytes[4..bytes.len() - cut];
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.put_slice(body);
            match FrameCodec::decode(&mut buf) {
                Err(LinkError::BadMedia(_)) => assert!(cut > payload, "cut {cut}"),
                // Cutting only payload bytes leaves a valid, shorter frame.
                Ok(Some(_)) => assert!(cut <= payload, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let mut bad = BytesMut::from(&bytes[..]);
        bad[4 + 1 + 4 + 1 + 1 + 4 + 20] = 9; // the boundary byte
        assert_eq!(FrameCodec::decode(&mut bad), Err(LinkError::BadMedia("unknown mark boundary")));
        let mut flags = BytesMut::from(&bytes[..]);
        flags[10] |= 0x80;
        assert_eq!(FrameCodec::decode(&mut flags), Err(LinkError::BadMedia("unknown media flags")));
    }

    proptest! {
        #[test]
        fn marked_media_round_trips(msn: u64, part: u32, time_ms: u64, boundary in 0..4u8, disc: u32, wall: u64,
                                    target: u32, part_target: u32,
                                    payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let boundary = match boundary {
                0 => None,
                1 => Some(Boundary::Part { independent: false }),
                2 => Some(Boundary::Part { independent: true }),
                _ => Some(Boundary::Segment(SegmentOpen {
                    discontinuity: disc, wall_ms: wall, target_ms: target, part_target_ms: part_target,
                })),
            };
            let mut frame = Frame::new(FrameKind::Audio, 5, false, false, Bytes::from(payload));
            frame.hls = Some(HlsMark { msn, part, time_ms, boundary });
            let f = LinkFrame::Media(MediaFrame { channel: ChannelId(3), frame });
            let mut buf = BytesMut::new();
            FrameCodec::encode(&f, &mut buf);
            prop_assert_eq!(FrameCodec::decode(&mut buf).unwrap(), Some(f));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = FrameCodec::decode(&mut buf) {}
        }

        #[test]
        fn media_round_trips(channel: u32, ts: u32, key: bool, header: bool, kind in 0..3u8,
                             payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kind = [FrameKind::Audio, FrameKind::Video, FrameKind::Data][kind as usize];
            let frame = Frame::new(kind, ts, key, header, Bytes::from(payload));
            let f = LinkFrame::Media(MediaFrame { channel: ChannelId(channel), frame });
            let mut buf = BytesMut::new();
            FrameCodec::encode(&f, &mut buf);
            prop_assert_eq!(FrameCodec::decode(&mut buf).unwrap(), Some(f));
            prop_assert!(buf.is_empty());
        }
    }
}
