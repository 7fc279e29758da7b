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

#[test]
fn hls_tag_regressions_package_without_panicking() {
    for (_name, bytes) in inputs("hls_tags") {
        raftcast::hls::packager::check_invariants(&bytes);
        raftcast::hls::dvr::check_invariants(&bytes);
    }
}
