//! Link frame decoding of hostile bytes (what an unauthenticated peer can send an
//! origin): must never panic; decoded frames must re-encode to frames that decode the
//! same.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raftcast::link::FrameCodec;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = FrameCodec::decode(&mut buf) {
        let mut again = BytesMut::new();
        FrameCodec::encode(&frame, &mut again);
        assert_eq!(FrameCodec::decode(&mut again).ok().flatten().as_ref(), Some(&frame));
    }
});
