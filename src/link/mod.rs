//! The edge↔origin link: one TCP connection per edge–origin pair carrying every session
//! of that edge. This module holds the wire protocol (`protocol`) and its sans-IO codec
//! (`frame`); the connection drivers come with the edge and origin servers.
//!
//! The codec knows no sockets and no clock.

pub mod client;
pub mod frame;
pub mod protocol;

pub use client::{LinkEvent, LinkHandle, LinkState, LinkTiming};
pub use frame::{FrameCodec, LinkError, LinkFrame, MediaFrame};
pub use protocol::{ChannelId, Control, PublishRefusal, OLDEST_PROTOCOL, PROTOCOL_VERSION};
