//! FLV / Enhanced RTMP tag bodies from hostile publishers, through the HLS codec
//! parsers and the packager with arbitrary marks: must never panic, and the same
//! frames must give the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use raftcast::hls::codec;
use raftcast::hls::mark::{Boundary, HlsMark, SegmentOpen};
use raftcast::hls::packager::Packager;
use raftcast::media::Frame;

fuzz_target!(|data: &[u8]| {
    let _ = codec::parse_video(&Bytes::copy_from_slice(data));
    let _ = codec::parse_audio(&Bytes::copy_from_slice(data));
    let frames = frames(data);
    let run = || {
        let mut p = Packager::new();
        let mut out: Vec<_> = frames.iter().flat_map(|f| p.push(f)).collect();
        out.extend(p.finish());
        out
    };
    assert_eq!(run(), run());
});

/// `[kind][mark][len][body; len]…`: kind picks video/audio/data and header; mark
/// picks the boundary, msn and part; the time advances by the mark byte.
fn frames(mut data: &[u8]) -> Vec<Frame> {
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
