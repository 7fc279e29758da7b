//! RTMP chunk stream codec, sans-IO.
//!
//! Owns the chunk layer of RTMP: turning a connection's byte stream into whole [`RawMessage`]s
//! ([`ChunkDecoder`]) and back ([`ChunkEncoder`], [`encode_standalone`]). That covers the basic
//! header's three chunk stream id forms, message header types 0–3 and extended timestamps,
//! per-chunk-stream reassembly of arbitrarily interleaved messages, header compression, the chunk
//! size and the abort of partially received messages.
//!
//! This module must never know sockets, tokio or message semantics beyond the two protocol
//! control messages that change chunking: Set Chunk Size (type 1) and Abort (type 2).
//!
//! Where the specification is ambiguous or peers deviate from it, the decoder does this:
//!
//! - **Type-3 chunk starting a new message after a type-0 header.** The specification says the
//!   delta is then the type-0 header's absolute timestamp, which implementations disagree on.
//!   The decoder instead reuses the step from the previous message on that chunk stream to the
//!   type-0 message (`type0.timestamp - previous.timestamp`, wrapping), or 0 when the type-0
//!   header opened the chunk stream. After a type-1/2 header the delta is the one it carried.
//!   The encoder never relies on this: after a type-0 header it sends a type-2 header (3 bytes
//!   of delta) rather than a type-3 one, so its output means the same to every decoder.
//! - **Extended timestamp in type-3 chunks.** When the last type-0/1/2 header of a chunk stream
//!   carried an extended timestamp, the specification repeats that 4-byte field in each of the
//!   stream's type-3 chunks, and the encoder always writes it. Some encoders leave it out, so the
//!   decoder consumes the 4 bytes after a type-3 basic header only when they equal the stored
//!   extended value, and otherwise reads them as payload. A peer that omits the field and whose
//!   payload happens to start with those 4 bytes is misread; no rule can tell the two apart.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Chunk size in force in both directions until a Set Chunk Size message changes it.
const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest value of a 24-bit header field; as a timestamp it announces an extended timestamp.
const MAX_FIELD: u32 = 0xFF_FFFF;
/// Message type id of Set Chunk Size.
const SET_CHUNK_SIZE: u8 = 1;
/// Message type id of Abort.
const ABORT: u8 = 2;

/// A whole RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream id it travelled on, in `2..=65599`.
    pub csid: u32,
    /// Absolute timestamp in milliseconds; deltas between messages use wrapping `u32` arithmetic.
    pub timestamp: u32,
    /// Message type id.
    pub type_id: u8,
    /// Message stream id (little-endian on the wire).
    pub stream_id: u32,
    /// Message payload, at most 16 777 215 bytes.
    pub payload: Bytes,
}

/// Errors of [`ChunkDecoder::decode`]. Each is fatal for the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// A type-1, -2 or -3 header arrived on a chunk stream that never had a type-0 header.
    #[error("compressed chunk header on unknown chunk stream {csid}")]
    UnknownChunkStream { csid: u32 },
    /// A type-0, -1 or -2 header arrived on a chunk stream whose current message is incomplete.
    #[error("message header on chunk stream {csid} while a message is in progress on it")]
    HeaderMidMessage { csid: u32 },
    /// A message header announced a length above [`DecoderLimits::max_message_len`].
    #[error("message length {len} exceeds the limit of {max} bytes")]
    MessageTooLarge { len: u32, max: u32 },
    /// The peer opened more than [`DecoderLimits::max_chunk_streams`] chunk streams.
    #[error("more than {max} chunk streams")]
    TooManyChunkStreams { max: usize },
    /// Partially received messages would hold more than [`DecoderLimits::max_buffered`] bytes.
    #[error("partially received messages exceed {max} buffered bytes")]
    BufferLimit { max: usize },
    /// A Set Chunk Size message asked for 0 or for more than 16 777 215 bytes.
    #[error("invalid chunk size {0}")]
    BadChunkSize(u32),
    /// A Set Chunk Size or Abort message whose payload is not exactly 4 bytes long.
    #[error("protocol control message of type {type_id} has a {len}-byte payload, expected 4")]
    MalformedControl { type_id: u8, len: usize },
    /// A [`DecoderState`] to restore is inconsistent (a csid out of range or repeated, a
    /// partial payload as long as its message).
    #[error("invalid decoder state: {0}")]
    BadState(&'static str),
}

/// Resource limits that bound what a peer can make a [`ChunkDecoder`] hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest accepted message length in bytes.
    pub(crate) max_message_len: u32,
    /// Largest number of payload bytes held for partially received messages, over all chunk streams.
    pub(crate) max_buffered: usize,
    /// Largest number of distinct chunk stream ids the peer may use.
    pub(crate) max_chunk_streams: usize,
}

impl Default for DecoderLimits {
    /// 16 MiB - 1 per message (the most the 24-bit length field can say), 32 MiB buffered,
    /// 64 chunk streams.
    fn default() -> Self {
        Self { max_message_len: MAX_FIELD, max_buffered: 32 << 20, max_chunk_streams: 64 }
    }
}

/// The last message header seen on an incoming chunk stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct InHeader {
    timestamp: u32,
    /// Added to `timestamp` when a type-3 chunk starts a new message.
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The extended timestamp field of the last type-0/1/2 header, repeated in type-3 chunks.
    extended: Option<u32>,
}

#[derive(Debug, Clone)]
struct InStream {
    header: InHeader,
    /// Payload received so far of the message in progress; empty between messages.
    partial: Vec<u8>,
}

/// A decoder's state at any point, to continue decoding the same byte stream elsewhere
/// (an RTMPT session taken over by another edge decodes its client's chunks from where
/// the first edge stopped). The bytes of a partial chunk are not in it: they stay in the
/// caller's input buffer, which the caller carries along.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecoderState {
    chunk_size: u32,
    /// By csid, ascending, so equal decoders give equal states.
    streams: Vec<ChunkStreamState>,
    consumed: u64,
}

/// One incoming chunk stream of a [`DecoderState`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ChunkStreamState {
    csid: u32,
    header: InHeader,
    /// Payload received of the message in progress; empty between messages.
    partial: Vec<u8>,
}

/// A chunk found complete at the front of the input buffer, not yet consumed.
struct Chunk {
    csid: u32,
    /// The chunk stream's header once this chunk is consumed.
    header: InHeader,
    /// Length of the basic header, message header and extended timestamp.
    header_len: usize,
    payload_len: usize,
}

/// Why no chunk could be taken from the front of the input buffer.
enum Parse {
    Incomplete,
    Invalid(ChunkError),
}

impl From<ChunkError> for Parse {
    fn from(error: ChunkError) -> Self {
        Parse::Invalid(error)
    }
}

/// Takes `N` bytes from the front of `input`, or reports that more bytes are needed.
fn take<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], Parse> {
    let (head, tail) = input.split_first_chunk::<N>().ok_or(Parse::Incomplete)?;
    *input = tail;
    Ok(*head)
}

/// Takes a 24-bit big-endian field from the front of `input`.
fn take_u24(input: &mut &[u8]) -> Result<u32, Parse> {
    let [a, b, c] = take(input)?;
    Ok(u32::from_be_bytes([0, a, b, c]))
}

/// Takes the extended timestamp that follows a type-0/1/2 header whose 24-bit field is `field`.
fn take_extended(input: &mut &[u8], field: u32) -> Result<Option<u32>, Parse> {
    Ok(if field == MAX_FIELD { Some(u32::from_be_bytes(take(input)?)) } else { None })
}

/// Appends `data` to the partial payload of a `length`-byte message. The buffer grows
/// geometrically, so each reservation is at most the bytes received, and never past `length`.
fn append(partial: &mut Vec<u8>, data: &[u8], length: usize) {
    let needed = partial.len() + data.len();
    if needed > partial.capacity() {
        let target = needed.max(2 * partial.len()).min(length);
        partial.reserve_exact(target - partial.len());
    }
    partial.extend_from_slice(data);
}

/// Checks one chunk stream of a [`DecoderState`] as [`ChunkDecoder::parse`] would have.
fn check_stream_state(limits: &DecoderLimits, csid: u32, header: &InHeader, partial: &[u8]) -> Result<(), ChunkError> {
    if !(2..=65599).contains(&csid) {
        return Err(ChunkError::BadState("a chunk stream id outside 2..=65599"));
    }
    if header.length > limits.max_message_len {
        return Err(ChunkError::MessageTooLarge { len: header.length, max: limits.max_message_len });
    }
    if !partial.is_empty() && partial.len() >= header.length as usize {
        return Err(ChunkError::BadState("a partial payload as long as its message"));
    }
    Ok(())
}

/// Checks a chunk size announced by a Set Chunk Size message.
fn valid_chunk_size(size: u32) -> Result<u32, ChunkError> {
    if (1..=MAX_FIELD).contains(&size) {
        Ok(size)
    } else {
        Err(ChunkError::BadChunkSize(size))
    }
}

/// Reassembles whole messages from the chunks of one connection's incoming byte stream.
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    limits: DecoderLimits,
    chunk_size: u32,
    streams: HashMap<u32, InStream>,
    /// Sum of the lengths of all partial payloads.
    buffered: usize,
    consumed: u64,
    /// Every payload owns exactly its bytes (see [`set_compact`](Self::set_compact)).
    compact: bool,
}

impl ChunkDecoder {
    /// Creates a decoder for a new connection; the incoming chunk size starts at 128.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
            buffered: 0,
            consumed: 0,
            compact: false,
        }
    }

    /// For a reader that keeps messages (a server keeps published frames for its GOP
    /// cache and history): a one-chunk payload is copied out of the read buffer instead
    /// of sliced from it. Otherwise a kept 300-byte audio frame keeps a whole read
    /// buffer alive (a publisher's kept frames held 4 MB of read buffers at 2.5 Mbit/s).
    /// Off by default: a reader that drops each message at once (a player) gains
    /// nothing from the copy.
    pub fn set_compact(&mut self, on: bool) {
        self.compact = on;
    }

    /// Consumes as many complete chunks from `buf` as possible and returns the next completed
    /// message, or `Ok(None)` when more bytes are needed. Partial chunks are left in `buf`, so
    /// the caller must let it grow to a whole chunk: [`chunk_size`](Self::chunk_size) plus at
    /// most 18 bytes of headers.
    ///
    /// Set Chunk Size and Abort messages are applied when they complete, whatever chunk stream
    /// and message stream they arrive on, and are still returned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let chunk = match self.parse(buf) {
                Ok(chunk) => chunk,
                Err(Parse::Incomplete) => return Ok(None),
                Err(Parse::Invalid(error)) => return Err(error),
            };
            if let Some(msg) = self.consume(chunk, buf) {
                self.apply_control(&msg)?;
                return Ok(Some(msg));
            }
        }
    }

    /// A decoder whose peer already announced `chunk_size` and whose chunk streams all
    /// start with a type-0 header: what a reader of a re-encoded stream needs (the
    /// encoder is fresh, the chunk size is the one the first reader had).
    pub fn with_chunk_size(limits: DecoderLimits, chunk_size: u32) -> Result<ChunkDecoder, ChunkError> {
        let mut decoder = ChunkDecoder::new(limits);
        decoder.chunk_size = valid_chunk_size(chunk_size)?;
        Ok(decoder)
    }

    /// The decoder's whole state, to [`restore`](Self::restore) elsewhere.
    pub fn snapshot(&self) -> DecoderState {
        let mut streams: Vec<ChunkStreamState> = self
            .streams
            .iter()
            .map(|(&csid, s)| ChunkStreamState { csid, header: s.header, partial: s.partial.clone() })
            .collect();
        streams.sort_unstable_by_key(|s| s.csid);
        DecoderState { chunk_size: self.chunk_size, streams, consumed: self.consumed }
    }

    /// A decoder that continues from `state`. The state may come from another machine,
    /// so it is checked against `limits` as the bytes it stands for would have been:
    /// a valid chunk size, at most `max_chunk_streams` distinct csids in `2..=65599`,
    /// lengths within `max_message_len`, each partial payload shorter than its message
    /// and all of them within `max_buffered`.
    pub fn restore(limits: DecoderLimits, state: DecoderState) -> Result<ChunkDecoder, ChunkError> {
        let chunk_size = valid_chunk_size(state.chunk_size)?;
        if state.streams.len() > limits.max_chunk_streams {
            return Err(ChunkError::TooManyChunkStreams { max: limits.max_chunk_streams });
        }
        let mut streams = HashMap::with_capacity(state.streams.len());
        let mut buffered = 0usize;
        for ChunkStreamState { csid, header, partial } in state.streams {
            check_stream_state(&limits, csid, &header, &partial)?;
            buffered = buffered.saturating_add(partial.len());
            if buffered > limits.max_buffered {
                return Err(ChunkError::BufferLimit { max: limits.max_buffered });
            }
            if streams.insert(csid, InStream { header, partial }).is_some() {
                return Err(ChunkError::BadState("a chunk stream id appears twice"));
            }
        }
        Ok(ChunkDecoder { limits, chunk_size, streams, buffered, consumed: state.consumed, compact: false })
    }

    /// The chunk size currently in force for incoming chunks.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Total number of bytes consumed from the input so far, for acknowledgements.
    pub(crate) fn bytes_consumed(&self) -> u64 {
        self.consumed
    }

    /// Payload bytes held now for partially received messages (what a byte budget
    /// over many connections counts).
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Changes the most payload bytes held for partial messages: a connection may be
    /// given a small bound until it has said who it is, a larger one after.
    pub(crate) fn set_max_buffered(&mut self, max: usize) {
        self.limits.max_buffered = max;
    }

    /// Parses the chunk at the front of `input` against the current state, changing nothing.
    fn parse(&self, mut input: &[u8]) -> Result<Chunk, Parse> {
        let total = input.len();
        let [first] = take(&mut input)?;
        let fmt = first >> 6;
        let csid = match first & 0x3F {
            0 => 64 + u32::from(take::<1>(&mut input)?[0]),
            1 => 64 + u32::from(u16::from_le_bytes(take(&mut input)?)),
            id => u32::from(id),
        };
        let stream = self.streams.get(&csid);
        let received = stream.map_or(0, |s| s.partial.len());
        if fmt < 3 && received > 0 {
            return Err(ChunkError::HeaderMidMessage { csid }.into());
        }
        let check_length = |len: u32| {
            let max = self.limits.max_message_len;
            if len > max {
                Err(ChunkError::MessageTooLarge { len, max })
            } else {
                Ok(len)
            }
        };
        let header = match (fmt, stream.map(|s| s.header)) {
            (0, None) if self.streams.len() >= self.limits.max_chunk_streams => {
                return Err(ChunkError::TooManyChunkStreams { max: self.limits.max_chunk_streams }.into());
            }
            (0, prev) => {
                let field = take_u24(&mut input)?;
                let length = check_length(take_u24(&mut input)?)?;
                let [type_id] = take(&mut input)?;
                let stream_id = u32::from_le_bytes(take(&mut input)?);
                let extended = take_extended(&mut input, field)?;
                let timestamp = extended.unwrap_or(field);
                let delta = prev.map_or(0, |p| timestamp.wrapping_sub(p.timestamp));
                InHeader { timestamp, delta, length, type_id, stream_id, extended }
            }
            (_, None) => return Err(ChunkError::UnknownChunkStream { csid }.into()),
            (1 | 2, Some(prev)) => {
                let field = take_u24(&mut input)?;
                let (length, type_id) = if fmt == 1 {
                    (check_length(take_u24(&mut input)?)?, take::<1>(&mut input)?[0])
                } else {
                    (prev.length, prev.type_id)
                };
                let extended = take_extended(&mut input, field)?;
                let delta = extended.unwrap_or(field);
                InHeader { timestamp: prev.timestamp.wrapping_add(delta), delta, length, type_id, extended, ..prev }
            }
            (_, Some(prev)) => {
                if let Some(extended) = prev.extended {
                    let seen = input.len().min(4);
                    if input[..seen] == extended.to_be_bytes()[..seen] {
                        take::<4>(&mut input)?;
                    }
                }
                if received > 0 {
                    prev
                } else {
                    InHeader { timestamp: prev.timestamp.wrapping_add(prev.delta), ..prev }
                }
            }
        };
        let remaining = (header.length as usize).saturating_sub(received);
        let payload_len = remaining.min(self.chunk_size as usize);
        let buffers = received > 0 || payload_len < remaining;
        if buffers && self.buffered.saturating_add(payload_len) > self.limits.max_buffered {
            return Err(ChunkError::BufferLimit { max: self.limits.max_buffered }.into());
        }
        if input.len() < payload_len {
            return Err(Parse::Incomplete);
        }
        Ok(Chunk { csid, header, header_len: total - input.len(), payload_len })
    }

    /// Consumes a parsed chunk from `buf` and returns the message it completes, if any.
    fn consume(&mut self, chunk: Chunk, buf: &mut BytesMut) -> Option<RawMessage> {
        let Chunk { csid, header, header_len, payload_len } = chunk;
        buf.advance(header_len);
        let data = buf.split_to(payload_len);
        self.consumed += (header_len + payload_len) as u64;
        let stream = self.streams.entry(csid).or_insert_with(|| InStream { header, partial: Vec::new() });
        stream.header = header;
        let length = header.length as usize;
        let payload = if stream.partial.is_empty() && data.len() == length {
            if self.compact {
                Bytes::copy_from_slice(&data)
            } else {
                data.freeze()
            }
        } else {
            append(&mut stream.partial, &data, length);
            self.buffered += data.len();
            if stream.partial.len() < length {
                return None;
            }
            self.buffered -= stream.partial.len();
            // `append` never grows a partial payload past its length: no spare room.
            Bytes::from(std::mem::take(&mut stream.partial))
        };
        let InHeader { timestamp, type_id, stream_id, .. } = header;
        Some(RawMessage { csid, timestamp, type_id, stream_id, payload })
    }

    /// Applies a completed Set Chunk Size or Abort message.
    fn apply_control(&mut self, msg: &RawMessage) -> Result<(), ChunkError> {
        if !matches!(msg.type_id, SET_CHUNK_SIZE | ABORT) {
            return Ok(());
        }
        let value = <[u8; 4]>::try_from(&msg.payload[..])
            .map(u32::from_be_bytes)
            .map_err(|_| ChunkError::MalformedControl { type_id: msg.type_id, len: msg.payload.len() })?;
        if msg.type_id == SET_CHUNK_SIZE {
            self.chunk_size = valid_chunk_size(value)?;
        } else if let Some(stream) = self.streams.get_mut(&value) {
            self.buffered -= stream.partial.len();
            stream.partial = Vec::new();
        }
        Ok(())
    }
}

/// What the peer's decoder remembers of the last message sent on a chunk stream.
#[derive(Debug, Clone, Copy)]
struct OutHeader {
    timestamp: u32,
    /// The delta of the last type-1/2 header; `None` after a type-0 header, after which
    /// decoders disagree on what a type-3 chunk's delta is.
    delta: Option<u32>,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Splits outgoing messages into chunks, compressing headers per chunk stream.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    chunk_size: u32,
    streams: HashMap<u32, OutHeader>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self { chunk_size: DEFAULT_CHUNK_SIZE, streams: HashMap::new() }
    }
}

impl ChunkEncoder {
    /// Creates an encoder for a new connection; the outgoing chunk size starts at 128.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets the outgoing chunk size for the following messages. The caller sends the Set Chunk
    /// Size message itself, encoded before calling this.
    ///
    /// # Panics
    /// If `size` is 0 or above 16 777 215.
    pub(crate) fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = checked_chunk_size(size);
    }

    /// The chunk size currently used for outgoing chunks.
    pub(crate) fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Appends `msg` as chunks, compressing headers against the previous message on the same csid
    /// (type 1 when only stream id is equal, type 2 when length and type also equal, type 3 when
    /// the delta also equals). A type-0 header is used on a new chunk stream, when the message
    /// stream id changes or when the timestamp goes backwards; a type-3 header never directly
    /// follows a type-0 one (see the module documentation).
    ///
    /// # Panics
    /// If the payload is longer than 16 777 215 bytes or `msg.csid` is outside `2..=65599`.
    pub(crate) fn encode(&mut self, msg: &RawMessage, out: &mut BytesMut) {
        let length = payload_len(msg);
        let step = self
            .streams
            .get(&msg.csid)
            .filter(|prev| prev.stream_id == msg.stream_id)
            .and_then(|prev| Some((prev, msg.timestamp.checked_sub(prev.timestamp)?)));
        let (fmt, delta) = match step {
            None => (0, None),
            Some((prev, delta)) if (prev.length, prev.type_id) != (length, msg.type_id) => (1, Some(delta)),
            Some((prev, delta)) if prev.delta != Some(delta) => (2, Some(delta)),
            Some((_, delta)) => (3, Some(delta)),
        };
        write_message(msg, fmt, delta.unwrap_or(msg.timestamp), self.chunk_size, out);
        self.remember(msg, delta);
    }

    /// Tells the encoder a message was sent on `msg.csid` by other means (see
    /// [`encode_standalone`]), so its next compressed header refers to it.
    #[cfg(test)]
    pub(crate) fn note_sent(&mut self, msg: &RawMessage) {
        self.remember(msg, None);
    }

    /// Forgets what was last sent on `csid`, so the next message there gets a full
    /// type-0 header (after bytes chunked elsewhere whose headers are unknown).
    pub(crate) fn forget(&mut self, csid: u32) {
        self.streams.remove(&csid);
    }

    fn remember(&mut self, msg: &RawMessage, delta: Option<u32>) {
        let header = OutHeader {
            timestamp: msg.timestamp,
            delta,
            length: payload_len(msg),
            type_id: msg.type_id,
            stream_id: msg.stream_id,
        };
        self.streams.insert(msg.csid, header);
    }
}

/// Encodes `msg` with a type-0 header followed by type-3 continuation chunks, depending on no
/// per-connection state. Media is serialized once with this and the same bytes are sent to every
/// player connection with the same chunk size and message stream id (fan-out without re-chunking).
/// Call [`ChunkEncoder::note_sent`] on each connection's encoder afterwards.
///
/// # Panics
/// If `chunk_size` is 0 or above 16 777 215, the payload is longer than 16 777 215 bytes or
/// `msg.csid` is outside `2..=65599`.
pub fn encode_standalone(msg: &RawMessage, chunk_size: u32, out: &mut BytesMut) {
    write_message(msg, 0, msg.timestamp, checked_chunk_size(chunk_size), out);
}

fn checked_chunk_size(size: u32) -> u32 {
    assert!((1..=MAX_FIELD).contains(&size), "RTMP chunk size {size} is outside 1..=16777215");
    size
}

fn payload_len(msg: &RawMessage) -> u32 {
    let len = msg.payload.len();
    u32::try_from(len)
        .ok()
        .filter(|&len| len <= MAX_FIELD)
        .unwrap_or_else(|| panic!("RTMP message payload of {len} bytes exceeds 16777215"))
}

/// Writes `msg` as a chunk with a header of type `fmt`, whose timestamp field is `field`
/// (absolute for type 0, a delta otherwise), followed by type-3 continuation chunks.
fn write_message(msg: &RawMessage, fmt: u8, field: u32, chunk_size: u32, out: &mut BytesMut) {
    let length = payload_len(msg);
    let extended = (field >= MAX_FIELD).then_some(field);
    let chunk_size = chunk_size as usize;
    let continuation_len = 3 + if extended.is_some() { 4 } else { 0 };
    out.reserve(msg.payload.len() + msg.payload.len().div_ceil(chunk_size).max(1) * continuation_len + 11);
    let mut chunks = msg.payload.chunks(chunk_size);
    write_basic_header(fmt, msg.csid, out);
    if fmt < 3 {
        out.put_uint(u64::from(field.min(MAX_FIELD)), 3);
    }
    if fmt < 2 {
        out.put_uint(u64::from(length), 3);
        out.put_u8(msg.type_id);
    }
    if fmt == 0 {
        out.put_u32_le(msg.stream_id);
    }
    if let Some(extended) = extended {
        out.put_u32(extended);
    }
    out.put_slice(chunks.next().unwrap_or_default());
    for chunk in chunks {
        write_basic_header(3, msg.csid, out);
        if let Some(extended) = extended {
            out.put_u32(extended);
        }
        out.put_slice(chunk);
    }
}

/// Writes a basic header in the shortest of its 1-, 2- and 3-byte forms.
fn write_basic_header(fmt: u8, csid: u32, out: &mut BytesMut) {
    let fmt = fmt << 6;
    match csid {
        2..=63 => out.put_u8(fmt | csid as u8),
        64..=319 => out.put_slice(&[fmt, (csid - 64) as u8]),
        320..=65599 => {
            out.put_u8(fmt | 1);
            out.put_u16_le((csid - 64) as u16);
        }
        _ => panic!("RTMP chunk stream id {csid} is outside 2..=65599"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> RawMessage {
        RawMessage { csid, timestamp, type_id, stream_id, payload: Bytes::copy_from_slice(payload) }
    }

    fn body(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    /// Decodes `wire` at once, or one byte at a time, until it is exhausted or an error occurs.
    fn run(limits: DecoderLimits, wire: &[u8], bytewise: bool) -> (Vec<RawMessage>, Option<ChunkError>) {
        let mut decoder = ChunkDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut messages = Vec::new();
        let pieces: Vec<&[u8]> = if bytewise { wire.chunks(1).collect() } else { vec![wire] };
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(msg)) => messages.push(msg),
                    Ok(None) => break,
                    Err(error) => return (messages, Some(error)),
                }
            }
        }
        assert_eq!(decoder.bytes_consumed() + buf.len() as u64, wire.len() as u64);
        (messages, None)
    }

    /// Decodes a valid stream, checking that feeding it byte by byte gives the same messages.
    fn decode_all(wire: &[u8]) -> Vec<RawMessage> {
        let (messages, error) = run(DecoderLimits::default(), wire, false);
        assert_eq!(error, None);
        assert_eq!(run(DecoderLimits::default(), wire, true), (messages.clone(), None));
        messages
    }

    fn decode_error(limits: DecoderLimits, wire: &[u8]) -> ChunkError {
        let (_, error) = run(limits, wire, false);
        assert_eq!(run(limits, wire, true).1, error);
        error.expect("the stream should be rejected")
    }

    fn encode(messages: &[RawMessage]) -> Vec<u8> {
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        messages.iter().for_each(|m| encoder.encode(m, &mut out));
        out.to_vec()
    }

    #[test]
    fn a_compact_decoder_copies_one_chunk_payloads_out_of_the_read_buffer() {
        let audio = RawMessage { csid: 4, timestamp: 0, type_id: 8, stream_id: 1, payload: Bytes::from(body(100, 1)) };
        let wire = encode(std::slice::from_ref(&audio));
        for compact in [false, true] {
            let mut decoder = ChunkDecoder::new(DecoderLimits::default());
            decoder.set_compact(compact);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            buf.extend_from_slice(&wire);
            let start = buf.as_ptr() as usize;
            let msg = decoder.decode(&mut buf).unwrap().expect("a whole message");
            assert_eq!(msg, audio);
            let at = msg.payload.as_ptr() as usize;
            let in_read_buffer = (start..start + 64 * 1024).contains(&at);
            assert_eq!(in_read_buffer, !compact, "compact {compact}: payload in the read buffer {in_read_buffer}");
        }
    }

    #[test]
    fn forgetting_a_chunk_stream_forces_a_full_header() {
        let msg =
            |ts| RawMessage { csid: 6, timestamp: ts, type_id: 8, stream_id: 1, payload: Bytes::from_static(b"ab") };
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        enc.encode(&msg(0), &mut out);
        out.clear();
        enc.encode(&msg(20), &mut out);
        assert_ne!(out[0] >> 6, 0, "compressed against the previous message");
        enc.forget(6);
        out.clear();
        enc.encode(&msg(40), &mut out);
        assert_eq!(out[0] >> 6, 0, "type 0 after forget");
    }

    #[test]
    fn one_chunk_type0() {
        let wire = [&[0x03, 0x00, 0x03, 0xE8, 0, 0, 5, 0x14, 1, 0, 0, 0][..], b"hello"].concat();
        let m = [msg(3, 1000, 0x14, 1, b"hello")];
        assert_eq!(decode_all(&wire), m);
        assert_eq!(encode(&m), wire);
    }

    #[test]
    fn multi_chunk_message() {
        let video = body(300, 0);
        let wire = [
            &[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..],
            &video[..128],
            &[0xC4],
            &video[128..256],
            &[0xC4],
            &video[256..],
        ]
        .concat();
        let m = [msg(4, 0, 9, 1, &video)];
        assert_eq!(decode_all(&wire), m);
        assert_eq!(encode(&m), wire);
        let mut out = BytesMut::new();
        encode_standalone(&m[0], 128, &mut out);
        assert_eq!(out[..], wire[..]);
    }

    #[test]
    fn partial_chunk_stays_in_buffer() {
        let wire = [&[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..], &body(128, 0), &[0xC4]].concat();
        let mut decoder = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&wire[..100]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!((buf.len(), decoder.bytes_consumed()), (100, 0));
        buf.extend_from_slice(&wire[100..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!((buf.len(), decoder.bytes_consumed(), decoder.buffered), (1, 140, 128));
    }

    #[test]
    fn interleaved_chunk_streams() {
        let (video, audio) = (body(300, 0), body(20, 100));
        let wire = [
            &[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..],
            &video[..128],
            &[0x05, 0, 0, 0, 0, 0, 20, 8, 1, 0, 0, 0],
            &audio,
            &[0xC4],
            &video[128..256],
            &[0xC4],
            &video[256..],
        ]
        .concat();
        assert_eq!(decode_all(&wire), [msg(5, 0, 8, 1, &audio), msg(4, 0, 9, 1, &video)]);
    }

    #[test]
    fn header_compression_with_deltas() {
        let wire = [
            &[0x06, 0x00, 0x03, 0xE8, 0, 0, 4, 8, 1, 0, 0, 0][..],
            b"aaaa",
            &[0x46, 0, 0, 20, 0, 0, 6, 9],
            b"bbbbbb",
            &[0x86, 0, 0, 23],
            b"cccccc",
            &[0xC6],
            b"dddddd",
        ]
        .concat();
        let messages = [
            msg(6, 1000, 8, 1, b"aaaa"),
            msg(6, 1020, 9, 1, b"bbbbbb"),
            msg(6, 1043, 9, 1, b"cccccc"),
            msg(6, 1066, 9, 1, b"dddddd"),
        ];
        assert_eq!(decode_all(&wire), messages);
        assert_eq!(encode(&messages), wire);
    }

    #[test]
    fn type3_new_message_reuses_delta() {
        let wire = [
            // A type-0 header opening the chunk stream: delta 0.
            &[0x07, 0, 0x01, 0xF4, 0, 0, 2, 8, 1, 0, 0, 0][..],
            b"aa",
            &[0xC7],
            b"bb",
            // Type 1 with delta 10, then type 0 at 1000: the step 510 -> 1000 becomes the delta.
            &[0x47, 0, 0, 10, 0, 0, 2, 8],
            b"cc",
            &[0x07, 0, 0x03, 0xE8, 0, 0, 2, 8, 1, 0, 0, 0],
            b"dd",
            &[0xC7],
            b"ee",
        ]
        .concat();
        let timestamps: Vec<u32> = decode_all(&wire).iter().map(|m| m.timestamp).collect();
        assert_eq!(timestamps, [500, 500, 510, 1000, 1490]);
    }

    #[test]
    fn encoder_sends_type2_after_type0() {
        let messages = [msg(3, 0, 20, 0, b"ab"), msg(3, 0, 20, 0, b"cd"), msg(3, 0, 20, 0, b"ef")];
        let wire =
            [&[0x03, 0, 0, 0, 0, 0, 2, 20, 0, 0, 0, 0][..], b"ab", &[0x83, 0, 0, 0], b"cd", &[0xC3], b"ef"].concat();
        assert_eq!(encode(&messages), wire);
        assert_eq!(decode_all(&wire), messages);
    }

    #[test]
    fn encoder_after_note_sent() {
        let first = msg(6, 100, 9, 1, b"abc");
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        encode_standalone(&first, 128, &mut out);
        encoder.note_sent(&first);
        encoder.encode(&msg(6, 140, 9, 1, b"def"), &mut out);
        assert_eq!(out[15..], [0x86, 0, 0, 40, b'd', b'e', b'f']);
    }

    #[test]
    fn extended_timestamp_with_and_without_repeats() {
        let payload = [0xAB; 130];
        let first = [&[0x04, 0xFF, 0xFF, 0xFF, 0, 0, 130, 9, 1, 0, 0, 0, 0x01, 0, 0, 0][..], &payload[..128]].concat();
        let repeated = [&first[..], &[0xC4, 0x01, 0, 0, 0], &payload[128..]].concat();
        let omitted = [&first[..], &[0xC4], &payload[128..]].concat();
        let m = [msg(4, 0x0100_0000, 9, 1, &payload)];
        assert_eq!(decode_all(&repeated), m);
        assert_eq!(decode_all(&omitted), m);
        assert_eq!(encode(&m), repeated);
        // A type-3 chunk starting a new message carries the field too.
        let next = [&repeated[..], &[0xC4, 0x01, 0, 0, 0], &payload[..128], &[0xC4, 0x01, 0, 0, 0], &payload[128..]];
        assert_eq!(decode_all(&next.concat()), [m.clone(), m].concat());
    }

    #[test]
    fn set_chunk_size_mid_stream() {
        let (video, other) = (body(300, 0), body(300, 7));
        let wire = [
            &[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..],
            &video[..128],
            &[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 1, 0],
            &[0xC4],
            &video[128..],
            &[0x06, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0],
            &other[..256],
            &[0xC6],
            &other[256..],
        ]
        .concat();
        let expected = [msg(2, 0, 1, 0, &[0, 0, 1, 0]), msg(4, 0, 9, 1, &video), msg(6, 0, 9, 1, &other)];
        assert_eq!(decode_all(&wire), expected);
        let mut decoder = ChunkDecoder::new(DecoderLimits::default());
        decoder.decode(&mut BytesMut::from(&wire[..])).unwrap();
        assert_eq!(decoder.chunk_size(), 256);
    }

    #[test]
    fn abort_discards_partial_message() {
        let wire = [
            &[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..],
            &body(128, 0),
            &[0x02, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 0, 0, 4],
            &[0x44, 0, 0, 5, 0, 0, 3, 9],
            b"new",
        ]
        .concat();
        assert_eq!(decode_all(&wire), [msg(2, 0, 2, 0, &[0, 0, 0, 4]), msg(4, 5, 9, 1, b"new")]);
        let mut decoder = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::from(&wire[..]);
        while decoder.decode(&mut buf).unwrap().is_some() {}
        assert_eq!(decoder.buffered, 0);
    }

    #[test]
    fn chunk_stream_id_forms() {
        let forms: [(u32, &[u8]); 5] =
            [(63, &[0x3F]), (64, &[0, 0]), (319, &[0, 0xFF]), (320, &[1, 0, 1]), (65599, &[1, 0xFF, 0xFF])];
        for (csid, basic) in forms {
            let wire = [basic, &[0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0], b"x"].concat();
            let m = [msg(csid, 0, 8, 1, b"x")];
            assert_eq!(decode_all(&wire), m);
            assert_eq!(encode(&m), wire);
        }
        let long_form = [&[1, 0, 0][..], &[0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0], b"x"].concat();
        assert_eq!(decode_all(&long_form), [msg(64, 0, 8, 1, b"x")]);
    }

    #[test]
    fn rejects_compressed_header_on_unknown_stream() {
        let limits = DecoderLimits::default();
        assert_eq!(decode_error(limits, &[0x43, 0, 0, 0, 0, 0, 1, 8]), ChunkError::UnknownChunkStream { csid: 3 });
        assert_eq!(decode_error(limits, &[0xC1, 0x00, 0x01]), ChunkError::UnknownChunkStream { csid: 320 });
    }

    #[test]
    fn rejects_header_mid_message() {
        let wire = [&[0x04, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..], &body(128, 0), &[0x84, 0, 0, 1]].concat();
        assert_eq!(decode_error(DecoderLimits::default(), &wire), ChunkError::HeaderMidMessage { csid: 4 });
    }

    #[test]
    fn rejects_bad_chunk_sizes() {
        for size in [0, 0x0100_0000, 0x8000_0080] {
            let wire = [&[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0][..], &u32::to_be_bytes(size)].concat();
            assert_eq!(decode_error(DecoderLimits::default(), &wire), ChunkError::BadChunkSize(size));
        }
    }

    #[test]
    fn rejects_malformed_control_messages() {
        let set = [0x02, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 1, 0];
        let abort = [0x02, 0, 0, 0, 0, 0, 5, 2, 0, 0, 0, 0, 0, 0, 0, 4, 0];
        let limits = DecoderLimits::default();
        assert_eq!(decode_error(limits, &set), ChunkError::MalformedControl { type_id: 1, len: 3 });
        assert_eq!(decode_error(limits, &abort), ChunkError::MalformedControl { type_id: 2, len: 5 });
    }

    #[test]
    fn rejects_oversized_message() {
        let limits = DecoderLimits { max_message_len: 100, ..DecoderLimits::default() };
        let wire = [0x04, 0, 0, 0, 0, 0, 101, 9, 1, 0, 0, 0];
        assert_eq!(decode_error(limits, &wire), ChunkError::MessageTooLarge { len: 101, max: 100 });
        let wire = [&[0x04, 0, 0, 0, 0, 0, 100, 9, 1, 0, 0, 0][..], &[0; 100], &[0x44, 0, 0, 0, 0, 0, 101, 9]].concat();
        assert_eq!(decode_error(limits, &wire), ChunkError::MessageTooLarge { len: 101, max: 100 });
    }

    #[test]
    fn rejects_too_many_chunk_streams() {
        let limits = DecoderLimits { max_chunk_streams: 2, ..DecoderLimits::default() };
        let wire: Vec<u8> = (3..=5).flat_map(|csid| [csid, 0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0, b'x']).collect();
        assert_eq!(run(limits, &wire, false).0.len(), 2);
        assert_eq!(decode_error(limits, &wire), ChunkError::TooManyChunkStreams { max: 2 });
    }

    #[test]
    fn rejects_too_many_buffered_bytes() {
        let limits = DecoderLimits { max_buffered: 200, ..DecoderLimits::default() };
        let first_chunk = |csid| [&[csid, 0, 0, 0, 0, 0x01, 0x2C, 9, 1, 0, 0, 0][..], &body(128, 0)].concat();
        let wire = [first_chunk(4), first_chunk(5)].concat();
        assert_eq!(decode_error(limits, &wire), ChunkError::BufferLimit { max: 200 });
    }

    fn arb_chunk_size() -> impl Strategy<Value = u32> {
        prop_oneof![Just(128u32), Just(1u32), 1..=4096u32]
    }

    /// Messages biased towards repeating csid, stream id, type, length and timestamp step, so
    /// that every header type and extended timestamps (also on type-3 chunks) occur.
    fn arb_messages() -> impl Strategy<Value = Vec<RawMessage>> {
        let start = prop_oneof![Just(0u32), 0xFF_FF00..0x100_0100u32, any::<u32>()];
        let step = prop_oneof![
            Just(0u32),
            Just(33u32),
            Just(0x100_0000u32),
            0..2000u32,
            0xFF_FFF0..0x100_0010u32,
            any::<u32>()
        ];
        let len = prop_oneof![Just(0usize), Just(100usize), Just(300usize), 0..=2000usize];
        let message = (
            prop_oneof![3 => 2..=4u32, 1 => 2..=400u32],
            step,
            len.prop_flat_map(|len| vec(any::<u8>(), len)),
            prop_oneof![3 => Just(9u8), 1 => 3..=255u8],
            prop_oneof![3 => Just(1u32), 1 => any::<u32>()],
        );
        (start, vec(message, 0..16)).prop_map(|(start, messages)| {
            // Each chunk stream advances its own clock by the message's step.
            let mut clocks = HashMap::new();
            let to_message = |(csid, step, payload, type_id, stream_id): (u32, u32, Vec<u8>, u8, u32)| {
                let clock = clocks.entry(csid).or_insert(start);
                *clock = u32::wrapping_add(*clock, step);
                RawMessage { csid, timestamp: *clock, type_id, stream_id, payload: payload.into() }
            };
            messages.into_iter().map(to_message).collect()
        })
    }

    /// Encodes a Set Chunk Size message for `chunk_size`, then `messages` at that size, message `i`
    /// with [`encode_standalone`] when `standalone[i]`. Returns the wire and the expected messages.
    fn encode_stream(chunk_size: u32, messages: &[RawMessage], standalone: &[bool]) -> (Vec<u8>, Vec<RawMessage>) {
        let set = msg(2, 0, SET_CHUNK_SIZE, 0, &chunk_size.to_be_bytes());
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        encoder.encode(&set, &mut out);
        encoder.set_chunk_size(chunk_size);
        for (i, m) in messages.iter().enumerate() {
            if standalone.get(i) == Some(&true) {
                encode_standalone(m, chunk_size, &mut out);
                encoder.note_sent(m);
            } else {
                encoder.encode(m, &mut out);
            }
        }
        (out.to_vec(), std::iter::once(set).chain(messages.iter().cloned()).collect())
    }

    /// Splits a valid stream into its chunks: a chunk ends wherever a decoder fed one byte at a
    /// time has consumed everything.
    fn split_chunks(wire: &[u8]) -> Vec<&[u8]> {
        let mut decoder = ChunkDecoder::new(DecoderLimits::default());
        let mut buf = BytesMut::new();
        let (mut chunks, mut start) = (Vec::new(), 0);
        for (i, &byte) in wire.iter().enumerate() {
            buf.put_u8(byte);
            while decoder.decode(&mut buf).unwrap().is_some() {}
            if buf.is_empty() {
                chunks.push(&wire[start..=i]);
                start = i + 1;
            }
        }
        chunks
    }

    fn on_csid(csid: u32, messages: Vec<RawMessage>) -> Vec<RawMessage> {
        messages.into_iter().map(|m| RawMessage { csid, ..m }).collect()
    }

    /// Encodes `a` and `b` (on distinct csids) and interleaves their chunks as `picks` says.
    fn interleave(chunk_size: u32, a: &[RawMessage], b: &[RawMessage], picks: &[bool]) -> Vec<u8> {
        let (wire_a, wire_b) = (encode_stream(chunk_size, a, &[]).0, encode_stream(chunk_size, b, &[]).0);
        let (chunks_a, chunks_b) = (split_chunks(&wire_a), split_chunks(&wire_b));
        // Both streams open with the same Set Chunk Size chunk.
        let mut wire = chunks_a[0].to_vec();
        let (mut rest_a, mut rest_b) = (chunks_a[1..].iter(), chunks_b[1..].iter());
        let mut picks = picks.iter();
        loop {
            let next = if picks.next().copied().unwrap_or(true) {
                rest_a.next().or_else(|| rest_b.next())
            } else {
                rest_b.next().or_else(|| rest_a.next())
            };
            match next {
                Some(chunk) => wire.extend_from_slice(chunk),
                None => return wire,
            }
        }
    }

    #[test]
    fn restore_refuses_states_the_bytes_could_not_have_made() {
        let limits = DecoderLimits { max_message_len: 100, max_buffered: 10, max_chunk_streams: 2 };
        let header = InHeader { timestamp: 0, delta: 0, length: 50, type_id: 9, stream_id: 1, extended: None };
        let stream = |csid, length, partial: usize| ChunkStreamState {
            csid,
            header: InHeader { length, ..header },
            partial: vec![0; partial],
        };
        let state = |chunk_size, streams| DecoderState { chunk_size, streams, consumed: 0 };
        let restore = |s| ChunkDecoder::restore(limits, s).map(|_| ()).unwrap_err();
        assert_eq!(restore(state(0, vec![])), ChunkError::BadChunkSize(0));
        assert_eq!(
            restore(state(128, vec![stream(1, 50, 0)])),
            ChunkError::BadState("a chunk stream id outside 2..=65599")
        );
        assert_eq!(
            restore(state(128, vec![stream(3, 50, 0), stream(3, 50, 0)])),
            ChunkError::BadState("a chunk stream id appears twice")
        );
        assert_eq!(restore(state(128, vec![stream(3, 101, 0)])), ChunkError::MessageTooLarge { len: 101, max: 100 });
        assert_eq!(
            restore(state(128, vec![stream(3, 5, 5)])),
            ChunkError::BadState("a partial payload as long as its message")
        );
        assert_eq!(restore(state(128, vec![stream(3, 50, 6), stream(4, 50, 6)])), ChunkError::BufferLimit { max: 10 });
        assert_eq!(
            restore(state(128, vec![stream(3, 5, 0), stream(4, 5, 0), stream(5, 5, 0)])),
            ChunkError::TooManyChunkStreams { max: 2 }
        );
        assert!(ChunkDecoder::restore(limits, state(128, vec![stream(3, 50, 4), stream(4, 50, 6)])).is_ok());
    }

    proptest! {
        #[test]
        fn roundtrip(chunk_size in arb_chunk_size(), messages in arb_messages()) {
            let (wire, expected) = encode_stream(chunk_size, &messages, &[]);
            prop_assert_eq!(decode_all(&wire), expected);
        }

        #[test]
        fn roundtrip_standalone(chunk_size in arb_chunk_size(), messages in arb_messages()) {
            let (wire, expected) = encode_stream(chunk_size, &messages, &[true; 16]);
            prop_assert_eq!(decode_all(&wire), expected);
        }

        #[test]
        fn roundtrip_mixed_standalone(
            chunk_size in arb_chunk_size(),
            messages in arb_messages(),
            standalone in vec(any::<bool>(), 16),
        ) {
            let (wire, expected) = encode_stream(chunk_size, &messages, &standalone);
            prop_assert_eq!(decode_all(&wire), expected);
        }

        #[test]
        fn interleaved_streams(
            chunk_size in arb_chunk_size(),
            (csid_a, csid_b) in (3..=400u32, 3..=400u32).prop_filter("distinct csids", |(a, b)| a != b),
            a in arb_messages(),
            b in arb_messages(),
            picks in vec(any::<bool>(), 0..512),
        ) {
            let (a, b) = (on_csid(csid_a, a), on_csid(csid_b, b));
            let wire = interleave(chunk_size, &a, &b, &picks);
            let decoded = decode_all(&wire);
            let of = |csid| decoded.iter().filter(|m| m.csid == csid).cloned().collect::<Vec<_>>();
            prop_assert_eq!(decoded.len(), 1 + a.len() + b.len());
            prop_assert_eq!(of(csid_a), a);
            prop_assert_eq!(of(csid_b), b);
        }

        #[test]
        fn snapshot_and_restore_continue_the_stream(
            chunk_size in arb_chunk_size(),
            a in arb_messages(),
            b in arb_messages(),
            picks in vec(any::<bool>(), 0..512),
            split in any::<Index>(),
        ) {
            // Two interleaved chunk streams, so the split often falls inside a message
            // while another chunk stream holds a partial one.
            let (a, b) = (on_csid(3, a), on_csid(9, b));
            let wire = interleave(chunk_size, &a, &b, &picks);
            let whole = decode_all(&wire);
            let at = split.index(wire.len() + 1);
            let (mut decoder, mut buf, mut got) = (ChunkDecoder::new(DecoderLimits::default()), BytesMut::new(), Vec::new());
            buf.extend_from_slice(&wire[..at]);
            while let Some(m) = decoder.decode(&mut buf).unwrap() {
                got.push(m);
            }
            let config = bincode::config::standard();
            let encoded = bincode::serde::encode_to_vec(decoder.snapshot(), config).unwrap();
            let (state, _): (DecoderState, usize) = bincode::serde::decode_from_slice(&encoded, config).unwrap();
            prop_assert_eq!(&state, &decoder.snapshot());
            let mut restored = ChunkDecoder::restore(DecoderLimits::default(), state).unwrap();
            prop_assert_eq!(restored.chunk_size(), decoder.chunk_size());
            buf.extend_from_slice(&wire[at..]);
            while let Some(m) = restored.decode(&mut buf).unwrap() {
                got.push(m);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(restored.bytes_consumed(), wire.len() as u64);
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(wire in vec(any::<u8>(), 0..4096), tight in any::<bool>()) {
            let limits = if tight {
                DecoderLimits { max_message_len: 1000, max_buffered: 2000, max_chunk_streams: 4 }
            } else {
                DecoderLimits::default()
            };
            prop_assert_eq!(run(limits, &wire, false), run(limits, &wire, true));
        }

        #[test]
        fn corrupted_streams_never_panic(
            chunk_size in arb_chunk_size(),
            messages in arb_messages(),
            flips in vec((any::<Index>(), 0..8u8), 0..8),
            cut in any::<Index>(),
        ) {
            let (mut wire, _) = encode_stream(chunk_size, &messages, &[]);
            for (at, bit) in flips {
                let at = at.index(wire.len());
                wire[at] ^= 1 << bit;
            }
            wire.truncate(cut.index(wire.len() + 1));
            let limits = DecoderLimits::default();
            prop_assert_eq!(run(limits, &wire, false), run(limits, &wire, true));
        }
    }
}
