//! The media plane's data structures: frames, the per-stream hub with its GOP cache,
//! and bounded subscriber queues that skip to the next keyframe when a reader falls
//! behind.
//!
//! Knows no sockets and no RTMP: publishers push [`Frame`]s, readers pull them. A slow
//! reader never blocks the publisher or other readers.

pub(crate) mod continuity;
pub(crate) mod fanout;
pub(crate) mod frame;
pub(crate) mod gop;
pub(crate) mod hop;
pub(crate) mod hub;
pub(crate) mod queue;
pub(crate) mod retain;
pub(crate) mod segments;

pub use frame::{Frame, FrameKind};
pub(crate) use hub::{Hub, HubLimits, ReaderCloser, ResumePoint, Subscription};
