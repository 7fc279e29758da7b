//! Replays every saved fuzz input (fuzz/regressions/<target>/*) through the parser its
//! target exercises, on the stable toolchain, in every test run: a crash the fuzzer
//! once found stays fixed.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

#[test]
fn amf0_regressions_decode_without_panicking() {
    use raftcast::rtmp::amf0;
    for (name, bytes) in inputs("amf0") {
        if let Ok(values) = amf0::decode_all(&bytes) {
            let again = amf0::decode_all(&amf0::encode_all(&values)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(format!("{again:?}"), format!("{values:?}"), "{name}");
        }
    }
}

#[test]
fn proxy_protocol_regressions_keep_the_invariants() {
    for (_name, bytes) in inputs("proxy_protocol") {
        raftcast::proxy_protocol::check_invariants(&bytes);
    }
}

#[test]
fn link_frame_regressions_decode_without_panicking() {
    use bytes::BytesMut;
    use raftcast::link::FrameCodec;
    for (name, bytes) in inputs("link_frame") {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = FrameCodec::decode(&mut buf) {
            let mut again = BytesMut::new();
            FrameCodec::encode(&frame, &mut again);
            assert_eq!(FrameCodec::decode(&mut again).ok().flatten().as_ref(), Some(&frame), "{name}");
        }
    }
}

#[test]
fn rtmp_chunk_regressions_decode_without_panicking() {
    use bytes::BytesMut;
    use raftcast::rtmp::chunk::{ChunkDecoder, DecoderLimits};
    use raftcast::rtmp::message::Message;
    for (_name, bytes) in inputs("rtmp_chunks") {
        let mut decoder = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(raw)) = decoder.decode(&mut buf) {
            let _ = Message::parse(&raw);
        }
    }
}

/// The input that makes rml_rtmp 0.8's decoder panic (NOTES.md): a 300-byte video
/// message at chunk size 128 on csid 4 with a whole audio message on csid 5 between
/// its first and second chunk. Both messages must come out whole.
#[test]
fn interleaved_chunk_streams_decode_to_whole_messages() {
    use bytes::BytesMut;
    use raftcast::rtmp::chunk::{ChunkDecoder, DecoderLimits};
    let bytes =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/regressions/rtmp_chunks/interleaved-notes-case"))
            .unwrap();
    let mut decoder = ChunkDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::from(&bytes[..]);
    let mut got = Vec::new();
    while let Some(m) = decoder.decode(&mut buf).unwrap() {
        got.push((m.csid, m.type_id, m.payload.len()));
    }
    assert_eq!(got, vec![(5, 8, 20), (4, 9, 300)]);
}

#[test]
fn shared_object_regressions_decode_without_panicking() {
    use raftcast::rtmp::shared_object;
    let mut decoded = 0;
    for (name, bytes) in inputs("shared_object") {
        if let Ok(msg) = shared_object::decode(&bytes) {
            decoded += 1;
            let again = shared_object::decode(&shared_object::encode(&msg)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(format!("{again:?}"), format!("{msg:?}"), "{name}");
        }
    }
    assert!(decoded >= 3, "the valid seeds decode");
}

/// The same frames the `hls_tags` target builds from its input (see
/// fuzz/fuzz_targets/hls_tags.rs): `[kind][mark][len][body; len]…`.
fn hls_frames(mut data: &[u8]) -> Vec<raftcast::media::Frame> {
    use bytes::Bytes;
    use raftcast::hls::mark::{Boundary, HlsMark, SegmentOpen};
    use raftcast::media::Frame;
    let mut frames = Vec::new();
    let mut time_ms = 0u64;
    while let [kind, mark, len, rest @ ..] = data {
        let body = Bytes::copy_from_slice(&rest[..usize::from(*len).min(rest.len())]);
        data = &rest[body.len()..];
        let mut frame = match kind % 3 {
            0 => Frame::video(0, body),
            1 => Frame::audio(0, body),
            _ => Frame::data(0, body),
        };
        time_ms += u64::from(*mark);
        let boundary = match mark % 4 {
            0 => Some(Boundary::Segment(SegmentOpen {
                discontinuity: 0,
                wall_ms: 0,
                target_ms: 2000,
                part_target_ms: 200,
            })),
            1 => Some(Boundary::Part { independent: kind & 0x80 != 0 }),
            _ => None,
        };
        if kind & 0x40 == 0 {
            frame.hls =
                Some(HlsMark { msn: u64::from(mark >> 5), part: u32::from((mark >> 2) & 7), time_ms, boundary });
        }
        frames.push(frame);
    }
    frames
}

#[test]
fn hls_tag_regressions_package_without_panicking() {
    use bytes::Bytes;
    use raftcast::hls::{codec, packager::Packager};
    for (name, bytes) in inputs("hls_tags") {
        let _ = codec::parse_video(&Bytes::copy_from_slice(&bytes));
        let _ = codec::parse_audio(&Bytes::copy_from_slice(&bytes));
        let frames = hls_frames(&bytes);
        let run = || {
            let mut p = Packager::new();
            let mut out: Vec<_> = frames.iter().flat_map(|f| p.push(f)).collect();
            out.extend(p.finish());
            out
        };
        assert_eq!(run(), run(), "{name}");
    }
}
