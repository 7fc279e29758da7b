//! raftcast: the origin (Raft + admin API + media origin), the edge (RTMP and HTTP-FLV
//! front door), the admin client and the load generators.
//!
//! The replicated state machine and Raft transport live in `raftcast-raft`, durable
//! storage in `raftcast-storage`; this crate wires them into processes.
//!
//! Only what the binary (`main.rs`), `tests/`, `chaos/` and `fuzz/` use is `pub`; the
//! rest is `pub(crate)`, so the dead-code lint sees items nothing calls.

pub(crate) mod backoff;
pub(crate) mod bans;
pub mod bench;
pub mod ctl;
pub mod edge;
pub(crate) mod heap;
pub mod hls;
pub(crate) mod http_server;
pub(crate) mod lease;
pub(crate) mod limits;
pub mod link;
pub(crate) mod logging;
pub mod media;
pub(crate) mod metrics;
pub mod origin;
pub(crate) mod peer;
pub(crate) mod process;
pub mod proxy_protocol;
pub mod rtmp;
pub(crate) mod secrets;
pub mod tls;
pub mod vod;
