//! raftcast: the origin (Raft + admin API), and the admin client.
//!
//! The replicated state machine and Raft transport live in `raftcast-raft`, durable
//! storage in `raftcast-storage`; this crate wires them into processes.

pub mod bench;
pub mod ctl;
pub mod link;
pub mod logging;
pub mod media;
pub mod origin;
pub mod rtmp;
pub mod secrets;
