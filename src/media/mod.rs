//! The media plane's data structures: frames, the per-stream hub with its GOP cache,
//! and bounded subscriber queues that skip to the next keyframe when a reader falls
//! behind.
//!
//! Knows no sockets and no RTMP: publishers push [`Frame`]s, readers pull them. A slow
//! reader never blocks the publisher or other readers.

pub mod continuity;
pub mod frame;
pub mod gop;
pub mod hop;
pub mod hub;
pub mod queue;
pub mod retain;
pub mod segments;

pub use frame::{Frame, FrameKind};
pub use hub::{Hub, HubLimits, ReaderCloser, ResumePoint, Subscription};
