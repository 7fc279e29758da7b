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
