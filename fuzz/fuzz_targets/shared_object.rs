//! Shared-object message bodies (RTMP types 19/16) from hostile bytes: must never
//! panic; whatever decodes must re-encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftcast::rtmp::shared_object;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = shared_object::decode(data) {
        let again = shared_object::decode(&shared_object::encode(&msg)).expect("our own encoding decodes");
        assert_eq!(format!("{again:?}"), format!("{msg:?}"));
    }
});
