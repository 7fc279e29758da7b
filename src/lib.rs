//! raftcast: the origin (Raft + admin API + media origin), the edge (RTMP and HTTP-FLV
//! front door), the admin client and the load generators.
//!
//! The replicated state machine and Raft transport live in `raftcast-raft`, durable
//! storage in `raftcast-storage`; this crate wires them into processes.

pub mod backoff;
pub mod bans;
pub mod bench;
pub mod ctl;
pub mod edge;
pub mod heap;
pub mod hls;
pub mod http_server;
pub mod lease;
pub mod limits;
pub mod link;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod origin;
pub mod peer;
pub mod process;
pub mod proxy_protocol;
pub mod rtmp;
pub mod secrets;
pub mod tls;
