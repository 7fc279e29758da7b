//! RTMP sessions after the handshake, sans-IO: the server side ([`ServerSession`]) and the client
//! side ([`ClientSession`]) of the NetConnection / NetStream conversation.
//!
//! Owns the command flow (`connect`, `createStream`, `publish`, `play` and the Flash Media Server
//! extras FFmpeg, OBS and librtmp send), the lifecycle of each message stream, the `onStatus`
//! replies, protocol control (chunk size, window acknowledgements, ping) and media in and out.
//! Bytes come in through `handle_input`; bytes to send accumulate in an outbox drained by
//! `take_output`; whatever needs a decision (accepting a connection, a publish, a play) becomes an
//! event the driver answers by calling a method. It never touches sockets, tokio or the clock.
//!
//! Outgoing chunk streams (both sides):
//!
//! | csid | carries |
//! |------|---------|
//! | [`CSID_PROTOCOL`] (2) | protocol control and user control messages, on message stream 0 |
//! | [`CSID_COMMAND`] (3) | commands and their `_result` / `_error` replies |
//! | [`CSID_DATA`] (4) | data messages: `onMetaData`, `\|RtmpSampleAccess` |
//! | [`CSID_STATUS`] (5) | `onStatus` commands, on the message stream concerned |
//! | [`CSID_AUDIO`] (6) | audio |
//! | [`CSID_VIDEO`] (7) | video |
//!
//! Pre-chunked media handed to [`ServerSession::send_prechunked`] must use [`CSID_AUDIO`],
//! [`CSID_VIDEO`] or [`CSID_DATA`] and type-0 headers ([`chunk::encode_standalone`]).

mod client;
mod server;

#[cfg(test)]
mod tests;

pub use client::{ClientConfig, ClientEvent, ClientSession};
pub use server::{PublishMode, PublishRejection, ServerConfig, ServerEvent, ServerSession, CAPS_EX_RECONNECT};

use bytes::{Buf, Bytes, BytesMut};

use super::amf0::{self, Amf0Value};
use super::chunk::{self, ChunkDecoder, ChunkEncoder, ChunkError, DecoderLimits, RawMessage};
use super::message::{self, Command, Message, MessageError};

/// Chunk stream of protocol control and user control messages.
pub(crate) const CSID_PROTOCOL: u32 = 2;
/// Chunk stream of commands and their replies.
pub(crate) const CSID_COMMAND: u32 = 3;
/// Chunk stream of data messages (`onMetaData` and friends).
pub(crate) const CSID_DATA: u32 = 4;
/// Chunk stream of `onStatus` messages.
pub(crate) const CSID_STATUS: u32 = 5;
/// Chunk stream of audio messages.
pub(crate) const CSID_AUDIO: u32 = 6;
/// Chunk stream of video messages.
pub(crate) const CSID_VIDEO: u32 = 7;

/// Longest app, tcUrl or stream name (query included) accepted from a peer, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 4096;

/// Largest payload a message header can announce (24-bit length).
const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Largest valid chunk size.
const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;
/// A message stream id sessions never hand out (a client refuses it from a server).
const NO_STREAM: u32 = u32::MAX;

/// Why a session failed. Every variant is fatal: the driver closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The peer's chunk stream is corrupt or exceeds the decoder's limits.
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    /// A message does not parse: a command with invalid AMF, a control message of the wrong size.
    #[error("message: {0}")]
    Message(#[from] MessageError),
    /// Input arrived after the session had already failed.
    #[error("the session failed earlier and must be closed")]
    Failed,
    /// A client-side call made in a state that does not allow it (e.g. `publish` before `connect`).
    #[error("{0} is not allowed in the current state")]
    InvalidState(&'static str),
    /// A client-side call named a message stream that was never created or is gone.
    #[error("unknown message stream {0}")]
    UnknownStream(u32),
}

/// The byte plumbing shared by both sides: chunk decoding with acknowledgements, and chunk
/// encoding into the outbox.
#[derive(Debug)]
struct Wire {
    decoder: ChunkDecoder,
    /// Received bytes not yet decoded: at most one partial chunk after each `handle_input`.
    input: BytesMut,
    encoder: ChunkEncoder,
    outbox: BytesMut,
    /// The peer's Window Acknowledgement Size: it wants an Acknowledgement every that many bytes.
    ack_window: Option<u32>,
    /// `decoder.bytes_consumed()` when the last Acknowledgement was sent.
    acked: u64,
    /// Outgoing messages dropped because their payload does not fit a message header.
    dropped: u64,
}

impl Wire {
    fn new() -> Self {
        Self {
            decoder: ChunkDecoder::new(DecoderLimits::default()),
            input: BytesMut::new(),
            encoder: ChunkEncoder::new(),
            outbox: BytesMut::new(),
            ack_window: None,
            acked: 0,
            dropped: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole message, acknowledging received bytes as the peer's window asks.
    fn next_message(&mut self) -> Result<Option<RawMessage>, SessionError> {
        let decoded = self.decoder.decode(&mut self.input);
        self.acknowledge();
        Ok(decoded?)
    }

    /// Records the peer's Window Acknowledgement Size; 0 switches acknowledgements off.
    fn set_ack_window(&mut self, size: u32) {
        self.ack_window = (size > 0).then_some(size);
    }

    fn acknowledge(&mut self) {
        let Some(window) = self.ack_window else { return };
        let received = self.decoder.bytes_consumed();
        if received - self.acked > u64::from(window) {
            self.acked = received;
            // Sequence numbers wrap at 2^32.
            let sequence = received as u32;
            self.send(CSID_PROTOCOL, 0, 0, &Message::Acknowledgement { sequence });
        }
    }

    /// Encodes `msg` into the outbox; drops it (and counts it) when it is too large to send.
    fn send(&mut self, csid: u32, timestamp: u32, stream_id: u32, msg: &Message) {
        let (type_id, payload) = msg.encode();
        self.send_raw(RawMessage { csid, timestamp, type_id, stream_id, payload });
    }

    fn send_raw(&mut self, raw: RawMessage) {
        if raw.payload.len() > MAX_PAYLOAD {
            self.dropped += 1;
        } else {
            self.encoder.encode(&raw, &mut self.outbox);
        }
    }

    fn send_command(&mut self, csid: u32, stream_id: u32, name: &str, transaction_id: f64, args: Vec<Amf0Value>) {
        let command = Command { name: name.to_owned(), transaction_id, object: Amf0Value::Null, args };
        self.send(csid, 0, stream_id, &Message::Command { command, amf3: false });
    }

    fn send_data(&mut self, stream_id: u32, values: &[Amf0Value]) {
        let payload = Bytes::from(amf0::encode_all(values));
        self.send(CSID_DATA, 0, stream_id, &Message::Data { payload, amf3: false });
    }

    /// Sends an `onStatus` command on `stream_id`.
    fn send_status(&mut self, stream_id: u32, status: Status<'_>) {
        self.send_command(CSID_STATUS, stream_id, "onStatus", 0.0, vec![status.info()]);
    }

    fn send_user_control(&mut self, event: message::UserControl) {
        self.send(CSID_PROTOCOL, 0, 0, &Message::UserControl(event));
    }

    /// Announces and applies a new outgoing chunk size (clamped to what the protocol allows).
    fn set_chunk_size(&mut self, size: u32) {
        let size = size.clamp(1, MAX_CHUNK_SIZE);
        self.send(CSID_PROTOCOL, 0, 0, &Message::SetChunkSize(size));
        self.encoder.set_chunk_size(size);
    }

    /// Appends bytes chunked elsewhere and makes the encoder forget what it last sent on `csids`,
    /// so its next message on each of them has a type-0 header whatever those bytes said.
    #[cfg(test)]
    fn send_foreign(&mut self, bytes: &[u8], csids: &[u32]) {
        self.outbox.extend_from_slice(bytes);
        self.forget(csids);
    }

    /// Makes the encoder forget what it last sent on `csids`: someone else sent chunks
    /// there, so its next message on them needs a full header.
    fn forget(&mut self, csids: &[u32]) {
        for &csid in csids {
            self.encoder.forget(csid);
        }
    }

    fn take_output(&mut self) -> Bytes {
        // The whole buffer, not a split of it: a split leaves the rest of the
        // allocation to the outbox, so each idle session would keep its largest burst
        // (a play's status messages and metadata) for as long as it lives.
        std::mem::take(&mut self.outbox).freeze()
    }
}

/// The info object of an `onStatus` message or an `_error` reply.
#[derive(Debug, Clone, Copy)]
struct Status<'a> {
    level: &'a str,
    code: &'a str,
    description: &'a str,
    /// The stream name concerned, sent as `details`.
    details: Option<&'a str>,
}

impl<'a> Status<'a> {
    fn new(code: &'a str, description: &'a str) -> Self {
        Self { level: "status", code, description, details: None }
    }

    fn error(code: &'a str, description: &'a str) -> Self {
        Self { level: "error", code, description, details: None }
    }

    fn details(self, name: &'a str) -> Self {
        Self { details: Some(name), ..self }
    }

    fn properties(self) -> Vec<(String, Amf0Value)> {
        let text = |s: &str| Amf0Value::String(s.to_owned());
        let mut props = vec![
            ("level".to_owned(), text(self.level)),
            ("code".to_owned(), text(self.code)),
            ("description".to_owned(), text(self.description)),
        ];
        if let Some(name) = self.details {
            props.push(("details".to_owned(), text(name)));
        }
        props
    }

    fn info(self) -> Amf0Value {
        Amf0Value::Object(self.properties())
    }
}

/// Splits `s` at its first `?`: `("foo", Some("key=abc"))` for `"foo?key=abc"`. An empty query is none.
pub(crate) fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((name, query)) => (name, (!query.is_empty()).then_some(query)),
        None => (s, None),
    }
}

/// A stream name from a command argument, split from its query; `None` when it is missing,
/// empty or longer than [`MAX_NAME_LEN`].
fn stream_name(arg: Option<&Amf0Value>) -> Option<(String, Option<String>)> {
    let raw = arg?.as_str()?;
    if raw.len() > MAX_NAME_LEN {
        return None;
    }
    let (name, query) = split_query(raw);
    (!name.is_empty()).then(|| (name.to_owned(), query.map(str::to_owned)))
}

/// A transaction id or stream id carried as an AMF0 number, if it is a whole number in `u32`.
fn as_u32(value: Option<&Amf0Value>) -> Option<u32> {
    whole_u32(value?.as_f64()?)
}

/// `n` as a `u32` if it is a whole number in range (not NaN, not infinite, not fractional).
fn whole_u32(n: f64) -> Option<u32> {
    (n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n)).then_some(n as u32)
}

/// The kind of a media message inside a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaKind {
    Audio,
    Video,
    Data,
}

/// Splits the body of an aggregate message (type 22) into its audio, video and AMF0 data
/// sub-messages, with timestamps rebased onto the aggregate's own `timestamp`. Sub-messages of
/// other types are skipped; a truncated tail ends the walk.
fn split_aggregate(timestamp: u32, mut body: Bytes) -> Vec<(MediaKind, u32, Bytes)> {
    const HEADER: usize = 11;
    const BACK_POINTER: usize = 4;
    let mut parts = Vec::new();
    let mut first: Option<u32> = None;
    while body.len() >= HEADER {
        let type_id = body[0];
        let size = u32::from_be_bytes([0, body[1], body[2], body[3]]) as usize;
        let sub_ts = u32::from_be_bytes([body[7], body[4], body[5], body[6]]);
        if body.len() < HEADER + size {
            break;
        }
        body.advance(HEADER);
        let payload = body.split_to(size);
        body.advance(BACK_POINTER.min(body.len()));
        let base = *first.get_or_insert(sub_ts);
        let ts = timestamp.wrapping_add(sub_ts.wrapping_sub(base));
        let kind = match type_id {
            message::AUDIO => MediaKind::Audio,
            message::VIDEO => MediaKind::Video,
            message::DATA_AMF0 => MediaKind::Data,
            _ => continue,
        };
        parts.push((kind, ts, payload));
    }
    parts
}

/// Encodes `msg` once for fan-out with [`chunk::encode_standalone`], checking what would panic.
/// Returns `None` for a payload longer than a message can carry or an out-of-range chunk size or csid.
pub(crate) fn prechunk(msg: &RawMessage, chunk_size: u32) -> Option<Bytes> {
    let mut out = BytesMut::new();
    prechunk_into(msg, chunk_size, &mut out).then(|| out.freeze())
}

/// [`prechunk`] appended to `out`, for a driver that gathers several messages into one
/// buffer; returns whether `msg` could be chunked (nothing is appended otherwise).
pub(crate) fn prechunk_into(msg: &RawMessage, chunk_size: u32, out: &mut BytesMut) -> bool {
    let valid = msg.payload.len() <= MAX_PAYLOAD
        && (1..=MAX_CHUNK_SIZE).contains(&chunk_size)
        && (2..=65599).contains(&msg.csid);
    if valid {
        chunk::encode_standalone(msg, chunk_size, out);
    }
    valid
}
