//! FLV / Enhanced RTMP tag bodies from hostile publishers, through the HLS codec
//! parsers and the packager with arbitrary marks: must never panic, and the same
//! frames must give the same bytes (`raftcast::hls::packager::check_invariants`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftcast::hls::packager::check_invariants(data));
