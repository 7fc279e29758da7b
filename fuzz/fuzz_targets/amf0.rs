//! AMF0 decoding of hostile bytes: must never panic; whatever decodes must re-encode
//! and decode to the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftcast::rtmp::amf0;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = amf0::decode_all(data) {
        let again = amf0::decode_all(&amf0::encode_all(&values)).expect("our own encoding decodes");
        assert_eq!(format!("{again:?}"), format!("{values:?}"));
    }
});
