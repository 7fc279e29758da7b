//! PROXY protocol headers from hostile bytes (what a compromised or misconfigured
//! balancer can send an edge): see `raftcast::proxy_protocol::check_invariants`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftcast::proxy_protocol::check_invariants(data);
});
