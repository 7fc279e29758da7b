//! The edge↔origin link: one TCP connection per edge–origin pair carrying every session
//! of that edge. This module holds the wire protocol (`protocol`), its sans-IO codec
//! (`frame`), the byte stream under it (`stream`: TCP, or mutual TLS within the
//! cluster) and the edge's end (`client`); the origin's end is `origin::link_server`.
//!
//! The codec knows no sockets and no clock.

pub mod client;
pub(crate) mod frame;
pub mod protocol;
pub mod stream;

pub use client::{LinkEvent, LinkHandle, LinkState, LinkTiming};
pub use frame::{FrameCodec, LinkError, LinkFrame, MediaFrame};
pub use protocol::{ChannelId, Control, PublishRefusal, OLDEST_PROTOCOL, PROTOCOL_VERSION};
