//! Sans-IO RTMP: bytes in, bytes and events out. The chunk codec, AMF0, the session
//! state machines and FLV tag facts live here.
//!
//! Nothing in this module knows tokio, sockets or the clock; the connection drivers in
//! `edge` feed it bytes and `now`.

pub mod amf0;
pub mod flv;
pub mod handshake;
