//! Sans-IO RTMP: bytes in, bytes and events out. The handshake, the chunk codec, AMF0,
//! typed messages, shared-object messages and FLV tag facts live here (the session state machines join them).
//!
//! Nothing in this module knows tokio, sockets or the clock; the connection drivers in
//! `edge` feed it bytes and `now`.

pub mod amf0;
pub mod chunk;
pub(crate) mod flv;
pub mod handshake;
pub mod message;
pub mod session;
pub mod shared_object;
