//! FLV / Enhanced RTMP tag bodies from hostile publishers, through the HLS codec
//! parsers and the packager with arbitrary marks, and the same bytes as live rewind's
//! origin-to-edge bodies (`raftcast::hls::dvr`): must never panic, the same frames
//! must give the same bytes, and a parsed DVR body re-encodes to itself
//! (`raftcast::hls::packager::check_invariants`, `raftcast::hls::dvr::check_invariants`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftcast::hls::packager::check_invariants(data);
    raftcast::hls::dvr::check_invariants(data);
});
