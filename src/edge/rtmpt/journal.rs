//! The journal of an RTMPT session: what another edge needs to take the session over
//! at a request boundary, kept from the requests themselves.
//!
//! [`Journal`] holds the client's side (its chunk state, the control messages to replay,
//! a publisher's recent media); it is built by applying one [`Step`] per answered
//! request, on the holder and on its buddy alike. [`Outbound`] watches the server's side
//! on the holder only: it cuts each reply at an RTMP message boundary, so a new edge can
//! start the client's next message with a fresh header, and keeps [`Positions`], where
//! delivery to the client stands, which travels in each step.
//!
//! Sans-IO: never knows sockets, HTTP, peers or the clock.

// The session task (phase 2's integration) is what uses this; until it does, only the
// tests do. Remove with the first caller.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::media::hub::ResumePoint;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::chunk::{ChunkDecoder, ChunkError, DecoderLimits, DecoderState, RawMessage};
use crate::rtmp::flv;
use crate::rtmp::message::{self, Message, MessageError, UserControl};

/// C0 + C1 (1 + 1536 bytes) then C2 (1536): the client's handshake, before any chunk.
const CLIENT_HANDSHAKE_BYTES: usize = 1537 + 1536;
/// S0 + S1 + S2: the server's handshake, before any chunk.
const SERVER_HANDSHAKE_BYTES: usize = 1 + 1536 + 1536;
/// Messages the control log holds at most; past it the session is not resumable
/// ([`JournalError::TooLarge`]). A player sends about six (connect, createStream, play,
/// the buffer length, the window size), a publisher about eight.
pub const MAX_LOG_MESSAGES: usize = 64;
/// Payload bytes the control log holds at most (a connect with a long token is ~1 KiB).
pub const MAX_LOG_BYTES: usize = 16 * 1024;
/// Bytes of a publisher's media the journal keeps, over all its streams: about 4 s of a
/// 8 Mb/s stream. Past it the oldest frames go, up to the next keyframe.
pub const MAX_RETAINED_BYTES: usize = 4 << 20;
/// A publisher's media is kept back to a video keyframe (or, with no video, any audio
/// frame) at least this old next to the newest frame: the new server gets a decodable
/// start and covers what the dead edge may not have forwarded yet.
pub const RETAINED_HISTORY_MS: u32 = 3_000;
/// Largest encoded [`Step`]: a request body (`super::MAX_BODY`) and its positions.
#[cfg(test)]
pub const MAX_STEP_BYTES: usize = 2 * 1024 * 1024 + 64 * 1024;
/// Largest encoded [`JournalState`].
#[cfg(test)]
pub const MAX_STATE_BYTES: usize = 8 * 1024 * 1024;
/// Message streams a [`Positions`] may name: the server hands out at most 16.
pub const MAX_POSITION_STREAMS: usize = 64;
/// Largest basic + message header + extended timestamp of a chunk.
const MAX_CHUNK_HEADER: usize = 18;
/// Default RTMP chunk size, what a client knows until the server sets another.
const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size RTMP can announce.
const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;

/// The client's chunk stream as the journal accepts it: a message no larger than what
/// the journal would retain, 64 chunk streams.
pub(crate) const CLIENT_LIMITS: DecoderLimits = DecoderLimits {
    max_message_len: MAX_RETAINED_BYTES as u32,
    max_buffered: MAX_RETAINED_BYTES,
    max_chunk_streams: 64,
};

/// Why a journal, a step or the watch on the server's bytes failed. Each makes the
/// session not resumable; none affects the session itself on its holder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    /// The client's chunk stream is corrupt or past the journal's limits.
    #[error("client chunk stream: {0}")]
    Client(ChunkError),
    /// The server's chunk stream, watched by [`Outbound`], is corrupt.
    #[error("server chunk stream: {0}")]
    Server(ChunkError),
    /// A client command does not parse.
    #[error("client message: {0}")]
    Message(#[from] MessageError),
    /// The control log would pass [`MAX_LOG_MESSAGES`] or [`MAX_LOG_BYTES`].
    #[error("the control log would pass {MAX_LOG_MESSAGES} messages or {MAX_LOG_BYTES} bytes")]
    TooLarge,
    /// A step skipped one: the journal misses bytes of the client's stream.
    #[error("step {got} after step {last}: steps were lost")]
    Gap { last: u64, got: u64 },
    /// An earlier step failed; the journal no longer matches the client.
    #[error("an earlier step failed; the journal cannot be used")]
    Broken,
    /// Positions from a step or a state that no holder could have sent.
    #[error("invalid positions: {0}")]
    BadPositions(&'static str),
    /// A journal state that no journal could have made.
    #[error("invalid journal state: {0}")]
    BadState(&'static str),
    /// An encoded step or state larger than its bound.
    #[error("encoded {what} of {len} bytes is over {max}")]
    #[cfg(test)]
    Oversized { what: &'static str, len: usize, max: usize },
    /// Bytes that do not decode as a step or a state.
    #[error("{what} does not decode: {reason}")]
    #[cfg(test)]
    Decode { what: &'static str, reason: String },
}

/// Serde for `Bytes` as one byte string (bincode: a length and the bytes), without the
/// `bytes` crate's `serde` feature.
mod bytes_serde {
    use bytes::Bytes;
    use serde::{de, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// Encodes `value` for another edge.
#[cfg(test)]
fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, JournalError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| JournalError::Decode { what, reason: e.to_string() })
}

/// Decodes `bytes` from another edge, refusing more than `max` bytes before it reads
/// any, and letting no length inside claim more.
#[cfg(test)]
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str, max: usize) -> Result<T, JournalError> {
    if bytes.len() > max {
        return Err(JournalError::Oversized { what, len: bytes.len(), max });
    }
    let config = bincode::config::standard().with_limit::<MAX_STATE_BYTES>();
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| JournalError::Decode { what, reason: e.to_string() })?;
    if used != bytes.len() {
        return Err(JournalError::Decode { what, reason: "trailing bytes".into() });
    }
    Ok(value)
}

/// A short fingerprint of a payload, the same on every edge (headers and metadata are
/// compared by it, not kept).
pub(crate) fn content_hash(payload: &[u8]) -> u64 {
    let digest = Sha256::digest(payload);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaKind {
    Audio,
    Video,
}

/// What a message from the server means for a player's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// An audio or video frame (not a codec header).
    Frame { kind: MediaKind, stream_id: u32, timestamp: u32 },
    /// An audio or video codec sequence header.
    Header { kind: MediaKind, stream_id: u32, hash: u64 },
    /// An `onMetaData` data message.
    Metadata { stream_id: u32, hash: u64 },
    /// The `|RtmpSampleAccess` data message a server sends with every play start.
    SampleAccess,
    /// A Set Chunk Size the client will apply.
    ChunkSize(u32),
    /// Anything else: no position.
    Other,
}

impl Delivery {
    /// Classifies a message the server sends to a player.
    pub(crate) fn of(msg: &RawMessage) -> Delivery {
        let stream_id = msg.stream_id;
        match msg.type_id {
            message::AUDIO => {
                media(MediaKind::Audio, msg, flv::audio_facts(&msg.payload).is_some_and(|f| f.sequence_header))
            }
            message::VIDEO => {
                media(MediaKind::Video, msg, flv::video_facts(&msg.payload).is_some_and(|f| f.sequence_header))
            }
            message::DATA_AMF0 | message::DATA_AMF3 => {
                let body = if msg.type_id == message::DATA_AMF3 && msg.payload.first() == Some(&0) {
                    msg.payload.slice(1..)
                } else {
                    msg.payload.clone()
                };
                let body = message::strip_set_data_frame(&body);
                match message::data_name(&body).as_deref() {
                    Some("onMetaData") => Delivery::Metadata { stream_id, hash: content_hash(&body) },
                    Some("|RtmpSampleAccess") => Delivery::SampleAccess,
                    _ => Delivery::Other,
                }
            }
            message::SET_CHUNK_SIZE => match <[u8; 4]>::try_from(&msg.payload[..]) {
                Ok(word) => Delivery::ChunkSize(u32::from_be_bytes(word)),
                Err(_) => Delivery::Other,
            },
            _ => Delivery::Other,
        }
    }
}

fn media(kind: MediaKind, msg: &RawMessage, header: bool) -> Delivery {
    let stream_id = msg.stream_id;
    if header {
        Delivery::Header { kind, stream_id, hash: content_hash(&msg.payload) }
    } else {
        Delivery::Frame { kind, stream_id, timestamp: msg.timestamp }
    }
}

/// Where delivery to the client stands on one message stream: the timestamps of the
/// last audio and video frames it was sent (hub timestamps, which a client sees
/// unchanged), and fingerprints of the last codec headers and metadata it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub audio: Option<u32>,
    pub video: Option<u32>,
    pub audio_header: Option<u64>,
    pub video_header: Option<u64>,
    pub metadata: Option<u64>,
}

/// Where delivery to the client stands, per message stream id, and the chunk size of
/// the server's direction the client knows (what its decoder applies to the next
/// chunk, 128 until the server's Set Chunk Size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub streams: BTreeMap<u32, StreamPosition>,
    pub chunk_size: u32,
}

impl Default for Positions {
    fn default() -> Self {
        Positions { streams: BTreeMap::new(), chunk_size: DEFAULT_CHUNK_SIZE }
    }
}

impl Positions {
    /// For `rtmp_conn`'s resume: stream id -> where its hub subscription starts after.
    pub fn resume_points(&self) -> HashMap<u32, ResumePoint> {
        self.streams.iter().map(|(&id, p)| (id, ResumePoint { audio: p.audio, video: p.video })).collect()
    }

    /// Checks positions that came from another edge.
    pub fn validate(&self) -> Result<(), JournalError> {
        if !(1..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(JournalError::BadPositions("chunk size outside 1..=16777215"));
        }
        if self.streams.len() > MAX_POSITION_STREAMS {
            return Err(JournalError::BadPositions("too many streams"));
        }
        Ok(())
    }

    /// Records that the client was sent what `delivery` says.
    pub(crate) fn record(&mut self, delivery: Delivery) {
        let stream_id = match delivery {
            Delivery::ChunkSize(size) => {
                self.chunk_size = size;
                return;
            }
            Delivery::SampleAccess | Delivery::Other => return,
            Delivery::Frame { stream_id, .. }
            | Delivery::Header { stream_id, .. }
            | Delivery::Metadata { stream_id, .. } => stream_id,
        };
        // A server hands out few stream ids; past the bound a new one is not tracked
        // (its media is not filtered on resume), so the positions stay valid.
        if self.streams.len() >= MAX_POSITION_STREAMS && !self.streams.contains_key(&stream_id) {
            return;
        }
        let p = self.streams.entry(stream_id).or_default();
        match delivery {
            Delivery::Frame { kind: MediaKind::Audio, timestamp, .. } => p.audio = Some(timestamp),
            Delivery::Frame { kind: MediaKind::Video, timestamp, .. } => p.video = Some(timestamp),
            Delivery::Header { kind: MediaKind::Audio, hash, .. } => p.audio_header = Some(hash),
            Delivery::Header { kind: MediaKind::Video, hash, .. } => p.video_header = Some(hash),
            Delivery::Metadata { hash, .. } => p.metadata = Some(hash),
            Delivery::ChunkSize(_) | Delivery::SampleAccess | Delivery::Other => {}
        }
    }
}

/// One message whose end is known in [`Outbound`]'s held bytes.
#[derive(Debug)]
struct Mark {
    /// Offset just past the message in the held bytes.
    end: usize,
    /// No message is partly received at `end`: a reply may be cut there.
    boundary: bool,
    delivery: Option<Delivery>,
}

/// Watches the server's bytes on their way to the client (holder only; not
/// replicated): cuts replies at message boundaries and keeps [`Positions`].
#[derive(Debug)]
pub struct Outbound {
    /// Server handshake bytes still to come (they are not chunks).
    handshake_left: usize,
    decoder: ChunkDecoder,
    /// Fed bytes the decoder has not consumed: a suffix of `held`.
    undecoded: BytesMut,
    /// Fed bytes not returned yet.
    held: BytesMut,
    /// Ends of the messages in `held`: where a reply may be cut, and what the client
    /// will have been sent once it is.
    marks: VecDeque<Mark>,
    positions: Positions,
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbound {
    /// For a new session: the server's handshake, then chunks at 128 bytes.
    pub fn new() -> Self {
        Self::with(SERVER_HANDSHAKE_BYTES, ChunkDecoder::new(DecoderLimits::default()), Positions::default())
    }

    /// After a takeover: the translator's output, which starts on a message boundary
    /// with type-0 headers at the chunk size the client knows.
    pub fn resumed(positions: Positions) -> Result<Self, JournalError> {
        positions.validate()?;
        let decoder = ChunkDecoder::with_chunk_size(DecoderLimits::default(), positions.chunk_size)
            .map_err(JournalError::Server)?;
        Ok(Self::with(0, decoder, positions))
    }

    fn with(handshake_left: usize, decoder: ChunkDecoder, positions: Positions) -> Self {
        Self {
            handshake_left,
            decoder,
            undecoded: BytesMut::new(),
            held: BytesMut::new(),
            marks: VecDeque::new(),
            positions,
        }
    }

    /// Server bytes read from the pipe. Returns the longest prefix of everything fed
    /// so far (minus what was already returned) that ends at a message boundary, at
    /// most `max` bytes unless one message alone is longer (then that whole message).
    /// The rest stays inside for the next call. Malformed server bytes are an error,
    /// after which this watch is unusable.
    pub fn take_reply(&mut self, data: &[u8], max: usize) -> Result<Bytes, JournalError> {
        self.held.extend_from_slice(data);
        let in_handshake = self.handshake_left.min(data.len());
        let chunks = data.get(in_handshake..).unwrap_or_default();
        if in_handshake > 0 {
            self.handshake_left -= in_handshake;
            // Any byte of the handshake is a boundary; one mark covers what came.
            let end = self.held.len() - chunks.len();
            self.marks.push_back(Mark { end, boundary: true, delivery: None });
        }
        self.undecoded.extend_from_slice(chunks);
        while let Some(msg) = self.decoder.decode(&mut self.undecoded).map_err(JournalError::Server)? {
            let end = self.held.len() - self.undecoded.len();
            let boundary = self.decoder.buffered() == 0;
            let delivery = Some(Delivery::of(&msg)).filter(|d| *d != Delivery::Other && *d != Delivery::SampleAccess);
            if boundary || delivery.is_some() {
                self.marks.push_back(Mark { end, boundary, delivery });
            }
        }
        Ok(self.cut(max))
    }

    /// Returns the held bytes up to the chosen boundary and records what they deliver.
    fn cut(&mut self, max: usize) -> Bytes {
        let mut cut = None;
        for mark in self.marks.iter().filter(|m| m.boundary) {
            if mark.end <= max || cut.is_none() {
                cut = Some(mark.end);
            }
            if mark.end >= max {
                break;
            }
        }
        let Some(cut) = cut else { return Bytes::new() };
        while let Some(mark) = self.marks.front() {
            if mark.end > cut {
                break;
            }
            if let Some(delivery) = mark.delivery {
                self.positions.record(delivery);
            }
            self.marks.pop_front();
        }
        self.marks.iter_mut().for_each(|m| m.end -= cut);
        self.held.split_to(cut).freeze()
    }

    /// Where delivery stands after everything returned so far.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Bytes held back (bounded by the caller's gather, and by the server's messages:
    /// a reply is cut at the first boundary past `max`).
    pub fn pending(&self) -> usize {
        self.held.len()
    }
}

/// One answered request: what the holder sends its buddy before it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub seq: u64,
    /// The request's body as written to the connection (empty for `/idle`).
    #[serde(with = "bytes_serde")]
    pub body: Bytes,
    /// Positions once the client has the reply.
    pub after: Positions,
}

#[cfg(test)]
impl Step {
    /// The step on the wire between edges.
    pub fn encode(&self) -> Result<Vec<u8>, JournalError> {
        encode(self, "step")
    }

    /// A step from another edge, at most [`MAX_STEP_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Step, JournalError> {
        let step: Step = decode(bytes, "step", MAX_STEP_BYTES)?;
        step.after.validate()?;
        Ok(step)
    }
}

/// A message of the log or of the retained media, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMessage {
    csid: u32,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    #[serde(with = "bytes_serde")]
    payload: Bytes,
}

impl From<&RawMessage> for StoredMessage {
    fn from(m: &RawMessage) -> Self {
        StoredMessage {
            csid: m.csid,
            timestamp: m.timestamp,
            type_id: m.type_id,
            stream_id: m.stream_id,
            payload: m.payload.clone(),
        }
    }
}

impl StoredMessage {
    /// The message, if an encoder can send it (csid and length in range).
    fn into_raw(self) -> Result<RawMessage, JournalError> {
        if !(2..=65599).contains(&self.csid) || self.payload.len() > CLIENT_LIMITS.max_message_len as usize {
            return Err(JournalError::BadState("a message no chunk stream can carry"));
        }
        let StoredMessage { csid, timestamp, type_id, stream_id, payload } = self;
        Ok(RawMessage { csid, timestamp, type_id, stream_id, payload })
    }
}

/// Everything of a [`Journal`], for a full copy to a new buddy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    last_seq: Option<u64>,
    before: Positions,
    after: Positions,
    handshake_left: u32,
    decoder: DecoderState,
    #[serde(with = "bytes_serde")]
    input: Bytes,
    log: Vec<StoredMessage>,
    /// In [`Journal::retained`]'s order.
    retained: Vec<StoredMessage>,
}

#[cfg(test)]
impl JournalState {
    /// The state on the wire between edges.
    pub fn encode(&self) -> Result<Vec<u8>, JournalError> {
        encode(self, "journal state")
    }

    /// A state from another edge, at most [`MAX_STATE_BYTES`] (checked again by
    /// [`Journal::restore`]).
    pub fn decode(bytes: &[u8]) -> Result<JournalState, JournalError> {
        decode(bytes, "journal state", MAX_STATE_BYTES)
    }
}

/// A publisher's recent media on one message stream.
#[derive(Debug, Default)]
struct Retained {
    /// The latest metadata, video and audio sequence headers: always replayed first.
    metadata: Option<RawMessage>,
    video_header: Option<RawMessage>,
    audio_header: Option<RawMessage>,
    frames: VecDeque<RawMessage>,
    has_video: bool,
    /// Payload bytes of all the above.
    bytes: usize,
}

impl Retained {
    /// Where a decoder can start: a video keyframe, or any audio frame with no video.
    fn is_start(&self, msg: &RawMessage) -> bool {
        match msg.type_id {
            message::VIDEO => flv::video_facts(&msg.payload).is_some_and(|f| f.keyframe),
            message::AUDIO => !self.has_video,
            _ => false,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &RawMessage> {
        self.metadata.iter().chain(self.video_header.iter()).chain(self.audio_header.iter()).chain(self.frames.iter())
    }

    fn push(&mut self, msg: RawMessage) {
        self.bytes += msg.payload.len();
        let slot = match Delivery::of(&msg) {
            Delivery::Header { kind: MediaKind::Audio, .. } => &mut self.audio_header,
            Delivery::Header { kind: MediaKind::Video, .. } => &mut self.video_header,
            Delivery::Metadata { .. } => &mut self.metadata,
            _ => return self.push_frame(msg),
        };
        if let Some(old) = slot.replace(msg) {
            self.bytes -= old.payload.len();
        }
    }

    fn push_frame(&mut self, msg: RawMessage) {
        if msg.type_id == message::VIDEO && !self.has_video {
            self.has_video = true;
            // Audio frames were the start points so far; from now on keyframes are.
            self.drop_to_start();
        }
        let (newest, start) = (msg.timestamp, self.is_start(&msg));
        self.frames.push_back(msg);
        if !start {
            return;
        }
        // Trimmed once per start frame: back to the latest start at least the history
        // older than the newest frame.
        let cut = self
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| self.is_start(f) && newest.saturating_sub(f.timestamp) >= RETAINED_HISTORY_MS)
            .map(|(i, _)| i)
            .next_back();
        for _ in 0..cut.unwrap_or(0) {
            self.pop_front();
        }
    }

    /// Drops the oldest frame and those after it up to the next start point.
    fn drop_oldest(&mut self) {
        self.pop_front();
        self.drop_to_start();
    }

    fn drop_to_start(&mut self) {
        while self.frames.front().is_some_and(|f| !self.is_start(f)) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(gone) = self.frames.pop_front() {
            self.bytes -= gone.payload.len();
        }
    }
}

/// The client's side of a session, enough for another edge to take it over.
/// Exists on the holder and, as a replica, on the buddy; both apply the same steps.
#[derive(Debug)]
pub struct Journal {
    last_seq: Option<u64>,
    before: Positions,
    after: Positions,
    /// Client handshake bytes still to come (C0 C1 C2 are not chunks).
    handshake_left: usize,
    /// The client's chunk state, and the start of a chunk not complete yet.
    decoder: ChunkDecoder,
    input: BytesMut,
    log: Vec<RawMessage>,
    /// The streams a logged `publish` names: their media is retained.
    publishing: BTreeSet<u32>,
    retained: BTreeMap<u32, Retained>,
    /// A step failed: the journal no longer matches the client.
    broken: bool,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    pub fn new() -> Self {
        Self {
            last_seq: None,
            before: Positions::default(),
            after: Positions::default(),
            handshake_left: CLIENT_HANDSHAKE_BYTES,
            decoder: ChunkDecoder::new(CLIENT_LIMITS),
            input: BytesMut::new(),
            log: Vec::new(),
            publishing: BTreeSet::new(),
            retained: BTreeMap::new(),
            broken: false,
        }
    }

    /// Applies one answered request: its body decoded with the client's chunk state
    /// (once per seq: the body of a seq at or before the last applied is ignored, and
    /// a repeat of the last only replaces `after`: the reply was answered again), then
    /// `before = after; after = step.after; last_seq = seq`.
    ///
    /// Kept: the control log (commands but `_checkbw`, `_result`, `_error`,
    /// `getStreamLength`, `seek`, `pause` and `closeStream`; the last Window Ack Size;
    /// the last Set Buffer Length per stream; `closeStream` / `deleteStream` take the
    /// stream's play or publish out), and a publisher's media. An error leaves the
    /// journal broken: every later call fails and the session is not resumable.
    pub fn apply(&mut self, step: &Step) -> Result<(), JournalError> {
        if self.broken {
            return Err(JournalError::Broken);
        }
        match self.last_seq {
            // The same request answered again (a holder that took the session over
            // regenerates the reply the dead one sent): only where delivery stands moves.
            Some(last) if step.seq == last => {
                step.after.validate()?;
                self.after = step.after.clone();
                return Ok(());
            }
            Some(last) if step.seq < last => return Ok(()),
            Some(last) if step.seq != last + 1 => return Err(JournalError::Gap { last, got: step.seq }),
            _ => {}
        }
        step.after.validate()?;
        if let Err(error) = self.absorb(&step.body) {
            self.broken = true;
            return Err(error);
        }
        self.before = std::mem::replace(&mut self.after, step.after.clone());
        self.last_seq = Some(step.seq);
        Ok(())
    }

    /// Takes the client's bytes: the handshake is counted, chunks are decoded.
    fn absorb(&mut self, body: &[u8]) -> Result<(), JournalError> {
        let in_handshake = self.handshake_left.min(body.len());
        self.handshake_left -= in_handshake;
        let chunks = body.get(in_handshake..).unwrap_or_default();
        self.input.extend_from_slice(chunks);
        while let Some(msg) = self.decoder.decode(&mut self.input).map_err(JournalError::Client)? {
            self.keep(msg)?;
        }
        Ok(())
    }

    /// Files one message from the client.
    fn keep(&mut self, msg: RawMessage) -> Result<(), JournalError> {
        match msg.type_id {
            message::WINDOW_ACK_SIZE => self.replace(msg, |m| m.type_id == message::WINDOW_ACK_SIZE),
            message::USER_CONTROL => match Message::parse(&msg) {
                Ok(Message::UserControl(UserControl::SetBufferLength { stream_id, .. })) => {
                    self.replace(msg, |m| buffer_length_stream(m) == Some(stream_id))
                }
                _ => Ok(()),
            },
            message::AUDIO | message::VIDEO | message::DATA_AMF0 | message::DATA_AMF3 | message::AGGREGATE => {
                self.retain(msg);
                Ok(())
            }
            message::COMMAND_AMF0 | message::COMMAND_AMF3 => self.command(msg),
            // Chunk size and abort are the decoder's; acknowledgements and bandwidth
            // are about this connection's byte counts; shared objects are not resumed.
            _ => Ok(()),
        }
    }

    fn command(&mut self, msg: RawMessage) -> Result<(), JournalError> {
        let Message::Command { command, .. } = Message::parse(&msg)? else { return Ok(()) };
        let first_id = command.args.first().and_then(Amf0Value::as_f64).filter(|n| n.fract() == 0.0 && *n >= 0.0);
        match command.name.as_str() {
            "_checkbw" | "_result" | "_error" | "getStreamLength" | "seek" | "pause" => Ok(()),
            "closeStream" => {
                let id = if msg.stream_id == 0 { first_id.map_or(0, |n| n as u32) } else { msg.stream_id };
                self.forget_stream(id, false);
                Ok(())
            }
            "deleteStream" => {
                if let Some(id) = first_id {
                    self.forget_stream(id as u32, true);
                }
                self.push_log(msg)
            }
            _ => self.push_log(msg),
        }
    }

    /// A stream's play or publish ended: it is not replayed, nor its media.
    fn forget_stream(&mut self, stream_id: u32, deleted: bool) {
        self.log.retain(|m| {
            let starts =
                m.stream_id == stream_id && matches!(command_name(m).as_deref(), Some("play" | "play2" | "publish"));
            !(starts || (deleted && buffer_length_stream(m) == Some(stream_id)))
        });
        self.publishing.remove(&stream_id);
        self.retained.remove(&stream_id);
    }

    /// Logs `msg` in place of the earlier message `same` matches.
    fn replace(&mut self, msg: RawMessage, same: impl Fn(&RawMessage) -> bool) -> Result<(), JournalError> {
        self.log.retain(|m| !same(m));
        self.push_log(msg)
    }

    fn push_log(&mut self, msg: RawMessage) -> Result<(), JournalError> {
        let bytes = self.log.iter().map(|m| m.payload.len()).sum::<usize>() + msg.payload.len();
        if self.log.len() >= MAX_LOG_MESSAGES || bytes > MAX_LOG_BYTES {
            return Err(JournalError::TooLarge);
        }
        if command_name(&msg).as_deref() == Some("publish") {
            self.publishing.insert(msg.stream_id);
        }
        self.log.push(msg);
        Ok(())
    }

    /// Keeps media of a stream the client publishes, within [`MAX_RETAINED_BYTES`]
    /// over all streams (the fullest stream gives up its oldest frames first).
    fn retain(&mut self, msg: RawMessage) {
        if !self.publishing.contains(&msg.stream_id) {
            return;
        }
        self.retained.entry(msg.stream_id).or_default().push(msg);
        while self.retained.values().map(|r| r.bytes).sum::<usize>() > MAX_RETAINED_BYTES {
            let fullest = self.retained.values_mut().filter(|r| !r.frames.is_empty()).max_by_key(|r| r.bytes);
            match fullest {
                Some(stream) => stream.drop_oldest(),
                // Only headers left, and too large: keep none rather than pass the bound.
                None => self.retained.clear(),
            }
        }
    }

    /// About the memory the journal holds (payloads and buffered input): what a
    /// buddy counts against its budget for replicas.
    pub fn bytes(&self) -> usize {
        let log: usize = self.log.iter().map(|m| m.payload.len()).sum();
        let retained: usize = self.retained.values().map(|r| r.bytes).sum();
        log + retained + self.input.len() + self.decoder.buffered()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Positions to resume from for a request `seq`: `after` when seq == last_seq + 1
    /// (fresh: the client has every reply), `before` when seq == last_seq (a repeat:
    /// its reply may be lost). None otherwise (out of order: 400). Before any step, the
    /// start.
    pub fn resume_from(&self, seq: u64) -> Option<&Positions> {
        match self.last_seq {
            None => Some(&self.after),
            Some(last) if seq == last => Some(&self.before),
            Some(last) if Some(seq) == last.checked_add(1) => Some(&self.after),
            Some(_) => None,
        }
    }

    pub fn snapshot(&self) -> JournalState {
        JournalState {
            last_seq: self.last_seq,
            before: self.before.clone(),
            after: self.after.clone(),
            handshake_left: self.handshake_left as u32,
            decoder: self.decoder.snapshot(),
            input: Bytes::copy_from_slice(&self.input),
            log: self.log.iter().map(StoredMessage::from).collect(),
            retained: self.retained().map(StoredMessage::from).collect(),
        }
    }

    /// A journal from a full copy, checked against every bound the journal keeps.
    pub fn restore(state: JournalState) -> Result<Journal, JournalError> {
        state.before.validate()?;
        state.after.validate()?;
        if state.handshake_left as usize > CLIENT_HANDSHAKE_BYTES {
            return Err(JournalError::BadState("handshake longer than RTMP's"));
        }
        let decoder = ChunkDecoder::restore(CLIENT_LIMITS, state.decoder).map_err(JournalError::Client)?;
        if state.input.len() > CLIENT_LIMITS.max_message_len as usize + MAX_CHUNK_HEADER {
            return Err(JournalError::BadState("partial chunk longer than a chunk"));
        }
        let mut journal = Journal {
            last_seq: state.last_seq,
            before: state.before,
            after: state.after,
            handshake_left: state.handshake_left as usize,
            decoder,
            input: BytesMut::from(&state.input[..]),
            ..Journal::new()
        };
        for msg in state.log {
            journal.push_log(msg.into_raw()?)?;
        }
        // Kept again as they came: the same bounds apply.
        for msg in state.retained {
            journal.retain(msg.into_raw()?);
        }
        Ok(journal)
    }

    /// Whether the client's handshake (C0 C1 C2) is behind: chunks follow.
    pub fn handshake_done(&self) -> bool {
        self.handshake_left == 0
    }

    /// What the translator replays, in the order the client sent it.
    pub fn control_log(&self) -> &[RawMessage] {
        &self.log
    }

    /// A publisher's kept media, by stream id: metadata, video and audio headers, then
    /// frames from a start point.
    pub fn retained(&self) -> impl Iterator<Item = &RawMessage> {
        self.retained.values().flat_map(Retained::iter)
    }

    /// The client's decoder state (for the translator to continue decoding the client).
    pub fn client_decoder(&self) -> ChunkDecoder {
        self.decoder.clone()
    }

    /// The client's bytes of a chunk not complete yet: what the client decoder must be
    /// fed before the next body.
    pub fn client_input(&self) -> &[u8] {
        &self.input
    }
}

/// The name of a command message, if it is one that parses.
pub(crate) fn command_name(msg: &RawMessage) -> Option<String> {
    match Message::parse(msg) {
        Ok(Message::Command { command, .. }) => Some(command.name),
        _ => None,
    }
}

/// The stream of a Set Buffer Length user control message.
fn buffer_length_stream(msg: &RawMessage) -> Option<u32> {
    match Message::parse(msg) {
        Ok(Message::UserControl(UserControl::SetBufferLength { stream_id, .. }))
            if msg.type_id == message::USER_CONTROL =>
        {
            Some(stream_id)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0;
    use crate::rtmp::chunk::ChunkEncoder;
    use crate::rtmp::message::Command;

    fn command(stream_id: u32, name: &str, txn: f64, args: Vec<Amf0Value>) -> RawMessage {
        let command = Command { name: name.into(), transaction_id: txn, object: Amf0Value::Null, args };
        let (type_id, payload) = Message::Command { command, amf3: false }.encode();
        RawMessage { csid: 3, timestamp: 0, type_id, stream_id, payload }
    }

    fn raw(csid: u32, type_id: u8, stream_id: u32, timestamp: u32, payload: &[u8]) -> RawMessage {
        RawMessage { csid, timestamp, type_id, stream_id, payload: Bytes::copy_from_slice(payload) }
    }

    fn chunks(encoder: &mut ChunkEncoder, messages: &[RawMessage]) -> Bytes {
        let mut out = BytesMut::new();
        messages.iter().for_each(|m| encoder.encode(m, &mut out));
        out.freeze()
    }

    fn step(seq: u64, body: &[u8]) -> Step {
        Step { seq, body: Bytes::copy_from_slice(body), after: Positions::default() }
    }

    fn names(journal: &Journal) -> Vec<String> {
        journal.control_log().iter().map(|m| command_name(m).unwrap_or_else(|| format!("type {}", m.type_id))).collect()
    }

    /// A journal past the handshake.
    fn shaken() -> Journal {
        let mut journal = Journal::new();
        journal.apply(&step(0, &[3; 1537])).unwrap();
        journal.apply(&step(1, &[0; 1536])).unwrap();
        assert!(journal.handshake_done());
        journal
    }

    #[test]
    fn outbound_cuts_replies_at_message_boundaries_and_counts_only_what_it_returned() {
        let mut outbound = Outbound::new();
        let mut encoder = ChunkEncoder::new();
        let frame = |ts| raw(7, message::VIDEO, 1, ts, &[0x27, 1, 0, 0, 0, 9, 9, 9, 9, 9]);
        // The handshake comes through whole, with no position.
        let reply = outbound.take_reply(&[1; SERVER_HANDSHAKE_BYTES], 10).unwrap();
        assert_eq!(reply.len(), SERVER_HANDSHAKE_BYTES);
        let wire = chunks(&mut encoder, &[frame(0), frame(40), frame(80)]);
        let first_len = 12 + 10;
        // Half a message: nothing to return yet.
        assert!(outbound.take_reply(&wire[..first_len - 1], 100).unwrap().is_empty());
        assert_eq!(outbound.pending(), first_len - 1);
        // Room for one and a half messages: one is returned.
        let reply = outbound.take_reply(&wire[first_len - 1..], first_len + 5).unwrap();
        assert_eq!(reply, wire[..first_len]);
        assert_eq!(outbound.positions().streams[&1].video, Some(0));
        // Less room than one message: that message alone (a type-2 header, then a type-3 one).
        let reply = outbound.take_reply(&[], 1).unwrap();
        assert_eq!(reply.len(), 4 + 10);
        assert_eq!(outbound.positions().streams[&1].video, Some(40));
        let reply = outbound.take_reply(&[], 1000).unwrap();
        assert_eq!((reply.len(), outbound.pending()), (1 + 10, 0));
        assert_eq!(outbound.positions().streams[&1].video, Some(80));
    }

    #[test]
    fn outbound_never_cuts_inside_a_message_while_another_is_interleaved() {
        let mut outbound = Outbound::resumed(Positions::default()).unwrap();
        let big = raw(7, message::VIDEO, 1, 0, &[0x17; 300]);
        let small = raw(6, message::AUDIO, 1, 5, &[0xAF, 1, 2]);
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        crate::rtmp::chunk::encode_standalone(&big, 128, &mut a);
        crate::rtmp::chunk::encode_standalone(&small, 128, &mut b);
        // The audio message completes between the video's first and second chunks.
        let wire = [&a[..140], &b[..], &a[140..]].concat();
        let reply = outbound.take_reply(&wire[..140 + b.len()], 1000).unwrap();
        assert!(reply.is_empty(), "the video message is partial: no boundary yet");
        let reply = outbound.take_reply(&wire[140 + b.len()..], 1000).unwrap();
        assert_eq!(reply, wire);
        let at = outbound.positions().streams[&1];
        assert_eq!((at.audio, at.video), (Some(5), Some(0)));
    }

    #[test]
    fn outbound_keeps_headers_metadata_and_the_chunk_size_the_client_knows() {
        let mut outbound = Outbound::resumed(Positions::default()).unwrap();
        let mut encoder = ChunkEncoder::new();
        let meta = amf0::encode_all(&[Amf0Value::String("onMetaData".into()), Amf0Value::Null]);
        let access = amf0::encode_all(&[Amf0Value::String("|RtmpSampleAccess".into()), Amf0Value::Boolean(true)]);
        let wire = chunks(
            &mut encoder,
            &[
                raw(2, message::SET_CHUNK_SIZE, 0, 0, &4096u32.to_be_bytes()),
                raw(4, message::DATA_AMF0, 1, 0, &access),
                raw(4, message::DATA_AMF0, 1, 0, &meta),
                raw(7, message::VIDEO, 1, 0, &[0x17, 0, 0, 0, 0, 1]),
                raw(6, message::AUDIO, 1, 0, &[0xAF, 0, 0x12, 0x10]),
            ],
        );
        outbound.take_reply(&wire, 1 << 20).unwrap();
        let p = outbound.positions();
        assert_eq!(p.chunk_size, 4096);
        let s = p.streams[&1];
        assert_eq!(s.metadata, Some(content_hash(&meta)));
        assert_eq!(s.video_header, Some(content_hash(&[0x17, 0, 0, 0, 0, 1])));
        assert_eq!(s.audio_header, Some(content_hash(&[0xAF, 0, 0x12, 0x10])));
        assert_eq!((s.audio, s.video), (None, None), "headers are not frames");
    }

    #[test]
    fn steps_apply_once_in_order_and_resume_from_before_or_after() {
        let mut journal = Journal::new();
        assert_eq!(journal.resume_from(0), Some(&Positions::default()));
        let at = |chunk_size| Positions { chunk_size, ..Positions::default() };
        journal.apply(&Step { after: at(100), ..step(0, &[3; 1537]) }).unwrap();
        journal.apply(&Step { after: at(200), ..step(1, &[0; 1536]) }).unwrap();
        // A repeat of the last is the same request answered again (by a holder that
        // took the session over): its body is not applied again, where delivery stands
        // after it moves, where it stood before it does not.
        journal.apply(&Step { after: at(999), ..step(1, &[0; 1536]) }).unwrap();
        assert_eq!(journal.last_seq(), Some(1));
        assert_eq!(journal.resume_from(2), Some(&at(999)));
        journal.apply(&Step { after: at(200), ..step(1, &[0; 1536]) }).unwrap();
        assert_eq!(journal.resume_from(2), Some(&at(200)));
        // An older one changes nothing.
        journal.apply(&Step { after: at(300), ..step(0, &[3; 1537]) }).unwrap();
        assert_eq!(journal.resume_from(2), Some(&at(200)));
        assert_eq!(journal.resume_from(1), Some(&at(100)));
        assert_eq!(journal.resume_from(0), None);
        assert_eq!(journal.resume_from(3), None);
        assert_eq!(journal.apply(&step(3, &[])), Err(JournalError::Gap { last: 1, got: 3 }));
        let bad = Step { after: at(0), ..step(2, &[]) };
        assert!(matches!(journal.apply(&bad), Err(JournalError::BadPositions(_))));
    }

    #[test]
    fn the_log_keeps_what_a_replay_needs() {
        let mut journal = shaken();
        let mut encoder = ChunkEncoder::new();
        let buffer = |stream_id, millis| {
            let (type_id, payload) = Message::UserControl(UserControl::SetBufferLength { stream_id, millis }).encode();
            RawMessage { csid: 2, timestamp: 0, type_id, stream_id: 0, payload }
        };
        let body = chunks(
            &mut encoder,
            &[
                command(0, "connect", 1.0, vec![]),
                raw(2, message::WINDOW_ACK_SIZE, 0, 0, &[0, 0, 1, 0]),
                raw(2, message::SET_CHUNK_SIZE, 0, 0, &[0, 0, 16, 0]),
                command(0, "_checkbw", 2.0, vec![]),
                command(0, "_result", 3.0, vec![]),
                command(0, "createStream", 4.0, vec![]),
                buffer(1, 100),
                command(1, "play", 5.0, vec![Amf0Value::String("a".into())]),
                raw(2, message::WINDOW_ACK_SIZE, 0, 0, &[0, 0, 2, 0]),
                buffer(1, 3000),
                raw(2, message::ACKNOWLEDGEMENT, 0, 0, &[0, 0, 0, 9]),
            ],
        );
        journal.apply(&step(2, &body)).unwrap();
        assert_eq!(journal.client_decoder().chunk_size(), 4096);
        assert_eq!(names(&journal), ["connect", "createStream", "play", "type 5", "type 4"]);
        assert_eq!(journal.control_log()[3].payload[..], [0, 0, 2, 0]);
        assert_eq!(buffer_length_stream(&journal.control_log()[4]), Some(1));
        // closeStream takes the play out and is not logged itself.
        let body = chunks(&mut encoder, &[command(1, "closeStream", 0.0, vec![])]);
        journal.apply(&step(3, &body)).unwrap();
        assert_eq!(names(&journal), ["connect", "createStream", "type 5", "type 4"]);
        // deleteStream also takes its buffer length, and is kept (the server counts streams).
        let body = chunks(&mut encoder, &[command(0, "deleteStream", 6.0, vec![Amf0Value::Number(1.0)])]);
        journal.apply(&step(4, &body)).unwrap();
        assert_eq!(names(&journal), ["connect", "createStream", "type 5", "deleteStream"]);
    }

    #[test]
    fn the_log_is_bounded() {
        let mut journal = shaken();
        let mut encoder = ChunkEncoder::new();
        let calls: Vec<RawMessage> =
            (0..=MAX_LOG_MESSAGES).map(|i| command(0, "releaseStream", i as f64, vec![])).collect();
        assert_eq!(journal.apply(&step(2, &chunks(&mut encoder, &calls))), Err(JournalError::TooLarge));
        assert_eq!(journal.apply(&step(3, &[])), Err(JournalError::Broken));
        let mut journal = shaken();
        let long = command(0, "connect", 1.0, vec![Amf0Value::String("x".repeat(MAX_LOG_BYTES))]);
        assert_eq!(journal.apply(&step(2, &chunks(&mut ChunkEncoder::new(), &[long]))), Err(JournalError::TooLarge));
    }

    #[test]
    fn a_publisher_s_media_is_kept_back_to_a_keyframe_3_s_old_within_the_byte_bound() {
        let mut journal = shaken();
        let mut encoder = ChunkEncoder::new();
        let publish = command(1, "publish", 5.0, vec![Amf0Value::String("a".into())]);
        let header = raw(7, message::VIDEO, 1, 0, &[0x17, 0, 0, 0, 0, 1]);
        let frame = |ts: u32, len: usize| {
            let mut p = vec![if ts.is_multiple_of(1000) { 0x17 } else { 0x27 }, 1, 0, 0, 0];
            p.resize(len, 0);
            raw(7, message::VIDEO, 1, ts, &p)
        };
        let mut messages = vec![publish, header];
        messages.extend((0..=5000).step_by(100).map(|ts| frame(ts, 100)));
        journal.apply(&step(2, &chunks(&mut encoder, &messages))).unwrap();
        let kept: Vec<u32> = journal.retained().skip(1).map(|m| m.timestamp).collect();
        assert_eq!(kept, (2000..=5000).step_by(100).collect::<Vec<_>>());
        assert_eq!(journal.retained().next().map(|m| m.payload[1]), Some(0), "the header first");
        // Large frames: the byte bound drops the oldest GOPs.
        let big: Vec<RawMessage> = (6000..=8000).step_by(500).map(|ts| frame(ts, 1 << 20)).collect();
        encoder.set_chunk_size(1 << 16);
        let size = chunks(&mut encoder, &[raw(2, message::SET_CHUNK_SIZE, 0, 0, &(1u32 << 16).to_be_bytes())]);
        let mut body = size.to_vec();
        body.extend_from_slice(&chunks(&mut encoder, &big));
        journal.apply(&step(3, &body)).unwrap();
        let bytes: usize = journal.retained().map(|m| m.payload.len()).sum();
        assert!(bytes <= MAX_RETAINED_BYTES, "{bytes}");
        assert_eq!(journal.retained().nth(1).map(|m| m.timestamp), Some(7000), "from a keyframe");
    }

    #[test]
    fn snapshot_and_restore_through_the_wire() {
        let mut journal = shaken();
        let mut encoder = ChunkEncoder::new();
        let body = chunks(
            &mut encoder,
            &[
                command(0, "connect", 1.0, vec![]),
                command(1, "publish", 5.0, vec![Amf0Value::String("a".into())]),
                raw(7, message::VIDEO, 1, 0, &[0x17, 1, 0, 0, 0]),
                raw(7, message::VIDEO, 1, 40, &[0x17; 300]),
            ],
        );
        // Stop inside the last message: a partial payload and a partial chunk.
        journal.apply(&step(2, &body[..body.len() - 10])).unwrap();
        let state = journal.snapshot();
        let copy = Journal::restore(JournalState::decode(&state.encode().unwrap()).unwrap()).unwrap();
        assert_eq!(copy.snapshot(), state);
        assert_eq!(copy.client_input(), journal.client_input());
        let mut copy = copy;
        copy.apply(&step(3, &body[body.len() - 10..])).unwrap();
        journal.apply(&step(3, &body[body.len() - 10..])).unwrap();
        assert_eq!(copy.snapshot(), journal.snapshot());
        assert_eq!(copy.retained().count(), 2);
    }

    #[test]
    fn hostile_wire_bytes_are_errors_not_panics() {
        assert!(matches!(Step::decode(&vec![0; MAX_STEP_BYTES + 1]), Err(JournalError::Oversized { .. })));
        assert!(matches!(JournalState::decode(&[0xFF; 64]), Err(JournalError::Decode { .. })));
        let huge_claim = [0u8, 0xFC, 0xFF, 0xFF, 0xFF, 0x7F];
        assert!(Step::decode(&huge_claim).is_err());
        let bad = Step { seq: 1, body: Bytes::new(), after: Positions { chunk_size: 0, ..Positions::default() } };
        assert!(matches!(Step::decode(&bad.encode().unwrap()), Err(JournalError::BadPositions(_))));
        for seed in 0..200u32 {
            let junk: Vec<u8> =
                (0..600u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 7919) >> 9) as u8).collect();
            let _ = Step::decode(&junk);
            let _ = JournalState::decode(&junk);
            let mut journal = shaken();
            let _ = journal.apply(&step(2, &junk));
            let _ = Outbound::new().take_reply(&[&[0u8; SERVER_HANDSHAKE_BYTES][..], &junk].concat(), 100);
        }
    }
}
