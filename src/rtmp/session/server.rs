//! The server side of an RTMP session: answers what a publisher (FFmpeg, OBS, librtmp) or a
//! player sends the way Flash Media Server does, and reports what the driver must decide.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::super::amf0::Amf0Value;
use super::super::chunk::RawMessage;
use super::super::message::{self, Command, Message, UserControl};
use super::{
    as_u32, split_aggregate, split_query, stream_name, MediaKind, SessionError, Status, Wire, CSID_AUDIO, CSID_COMMAND,
    CSID_DATA, CSID_PROTOCOL, CSID_STATUS, CSID_VIDEO, MAX_NAME_LEN,
};

/// The server's side of the connection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Outgoing chunk size announced after `connect` is accepted, clamped to `1..=16_777_215`.
    pub(crate) chunk_size: u32,
    /// Window Acknowledgement Size asked of the client.
    pub(crate) window_ack_size: u32,
    /// Set Peer Bandwidth sent to the client (limit type dynamic).
    pub(crate) peer_bandwidth: u32,
    /// Most message streams the client may hold at once; more `createStream` calls get `_error`.
    pub(crate) max_streams: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { chunk_size: 4096, window_ack_size: 2_500_000, peer_bandwidth: 2_500_000, max_streams: 16 }
    }
}

/// How a publisher wants its stream kept (`publish`'s second argument, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishMode {
    /// `live`, also whatever is missing or unknown.
    #[default]
    Live,
    /// `record`: replace any recording.
    Record,
    /// `append` (or `appendWithGap`): add to a recording.
    Append,
}

impl PublishMode {
    /// Parses the mode argument; anything unrecognised is [`PublishMode::Live`].
    pub(crate) fn parse(mode: &str) -> Self {
        if mode.eq_ignore_ascii_case("record") {
            PublishMode::Record
        } else if mode.eq_ignore_ascii_case("append") || mode.eq_ignore_ascii_case("appendWithGap") {
            PublishMode::Append
        } else {
            PublishMode::Live
        }
    }
}

/// Why the driver refused a publish; decides the `onStatus` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRejection {
    /// The name is taken (someone publishes it already) or invalid: `NetStream.Publish.BadName`.
    BadName,
    /// The stream key or other credentials were refused: `NetStream.Publish.Denied`.
    Denied,
    /// The server cannot take the stream now (e.g. no cluster leader): `NetStream.Publish.Failed`.
    Failed,
    /// The stream's publish token is missing, invalid or for another stream:
    /// `NetStream.Publish.Unauthorized`.
    Unauthorized,
}

impl PublishRejection {
    /// The `onStatus` code sent to the publisher.
    pub(crate) fn code(self) -> &'static str {
        match self {
            PublishRejection::BadName => "NetStream.Publish.BadName",
            PublishRejection::Denied => "NetStream.Publish.Denied",
            PublishRejection::Failed => "NetStream.Publish.Failed",
            PublishRejection::Unauthorized => "NetStream.Publish.Unauthorized",
        }
    }
}

/// What happened on the connection; the ones naming a decision wait for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// The client asked to connect: answer with `accept_connect` or `reject_connect`.
    Connect {
        /// The application, without any query.
        app: String,
        tc_url: Option<String>,
        /// What follows `?` in the app or, failing that, in the tcUrl.
        query: Option<String>,
        /// The whole command object.
        object: Amf0Value,
    },
    /// A message stream was created; no decision needed.
    CreateStream { stream_id: u32 },
    /// The client asked to publish: answer with `accept_publish` or `reject_publish`.
    Publish { stream_id: u32, name: String, query: Option<String>, mode: PublishMode },
    /// The client asked to play: answer with `accept_play`, `play_not_found` or
    /// `reject_play`. `start`: `play`'s second argument when it is a number (`-2`
    /// live or recorded, `-1` live only, `0` or more: a recorded stream from that
    /// position, in ms); `length`: the third, when it is a number (`-1` to the end,
    /// otherwise how many ms of a recorded stream to play).
    Play { stream_id: u32, name: String, query: Option<String>, start: Option<f64>, length: Option<f64> },
    /// A playing client asked to move to `ms` (`seek`): a recorded stream answers with
    /// `seek_notify`; a live one ignores it.
    Seek { stream_id: u32, ms: f64 },
    /// A playing client paused (`pause` true) or resumed (`pause` false) at `ms`: a
    /// recorded stream answers with `pause_notify`; a live one ignores it.
    Pause { stream_id: u32, pause: bool, ms: f64 },
    /// The client's buffer length for a stream (User Control `SetBufferLength`): how
    /// far ahead of real time a recorded stream may be sent.
    BufferLength { stream_id: u32, ms: u32 },
    /// The client asked for a stream's length in seconds (`getStreamLength`): answer
    /// with `answer_stream_length`.
    StreamLength { transaction_id: f64, name: String },
    /// Audio from a publisher.
    Audio { stream_id: u32, timestamp: u32, payload: Bytes },
    /// Video from a publisher.
    Video { stream_id: u32, timestamp: u32, payload: Bytes },
    /// Data from a publisher: `@setDataFrame` already stripped; `onMetaData`, `onCuePoint`, etc. intact.
    Data { stream_id: u32, timestamp: u32, payload: Bytes },
    /// Shared-object message (types 19/16), body untouched, for another layer.
    SharedObject { payload: Bytes, amf3: bool },
    /// A publish or play ended or was abandoned before the driver's decision (`FCUnpublish`,
    /// `closeStream`, `deleteStream`).
    StreamClosed { stream_id: u32 },
}

/// The lifecycle of the NetConnection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Connection {
    /// Waiting for `connect`.
    AwaitingConnect,
    /// `connect` reported; waiting for the driver's decision.
    ConnectPending { transaction_id: f64, object_encoding: f64 },
    /// Streams may be created, published and played.
    Connected,
    /// The driver refused the connection: everything but protocol control is ignored until it closes.
    Rejected,
    /// A fatal error was returned; the connection must be closed.
    Failed,
}

/// The lifecycle of one message stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stream {
    /// Created, neither publishing nor playing.
    Idle,
    /// `publish` reported; waiting for the driver's decision.
    PublishPending {
        name: String,
    },
    Publishing {
        name: String,
    },
    /// `play` reported; waiting for the driver's decision.
    PlayPending {
        name: String,
    },
    Playing {
        name: String,
    },
}

/// The server side of one RTMP connection after the handshake.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    wire: Wire,
    connection: Connection,
    streams: BTreeMap<u32, Stream>,
    /// The id the next `createStream` gets; ids are never reused within a connection.
    next_stream_id: u32,
    /// Messages ignored: media on streams not publishing, unknown message types.
    ignored: u64,
    /// The client's `connect` advertised Enhanced RTMP's reconnect capability
    /// (`capsEx` bit [`CAPS_EX_RECONNECT`]).
    can_reconnect: bool,
    /// The last buffer length (ms) the client set for each of its streams (clients set
    /// it before `play`).
    buffer_lengths: BTreeMap<u32, u32>,
}

/// User Control event type `BufferEmpty` (Flash Media Server 3.5 and later).
const USER_CONTROL_BUFFER_EMPTY: u16 = 31;

/// Enhanced RTMP's `capsEx` bit for "understands `NetConnection.Connect.ReconnectRequest`".
pub const CAPS_EX_RECONNECT: u32 = 0x01;

impl ServerSession {
    /// Bytes received and held, not yet whole messages: partial payloads plus the
    /// partial chunk at the front of the input (what a byte budget counts).
    pub(crate) fn buffered_input(&self) -> usize {
        self.wire.decoder.buffered() + self.wire.input.len()
    }

    /// The most payload bytes held for partially received messages
    /// ([`crate::rtmp::chunk::DecoderLimits::max_buffered`]); over it, `handle_input`
    /// fails and the driver closes the connection.
    pub(crate) fn set_max_buffered(&mut self, max: usize) {
        self.wire.decoder.set_max_buffered(max);
    }

    /// A session for a connection whose handshake just completed.
    pub fn new(config: ServerConfig) -> Self {
        let mut wire = Wire::new();
        // Published frames are kept (GOP cache, history): each owns just its bytes.
        wire.decoder.set_compact(true);
        Self {
            config,
            wire,
            connection: Connection::AwaitingConnect,
            streams: BTreeMap::new(),
            next_stream_id: 1,
            ignored: 0,
            can_reconnect: false,
            buffer_lengths: BTreeMap::new(),
        }
    }

    /// Feed bytes read from the socket. Returns events for the driver; bytes to send accumulate
    /// in an outbox. An error is fatal: the driver sends what is in the outbox and closes.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<Vec<ServerEvent>, SessionError> {
        if self.connection == Connection::Failed {
            return Err(SessionError::Failed);
        }
        self.wire.feed(bytes);
        let mut events = Vec::new();
        let result = self.process(&mut events);
        match result {
            Ok(()) => Ok(events),
            Err(error) => {
                self.connection = Connection::Failed;
                Err(error)
            }
        }
    }

    /// Bytes to write to the socket (drains the outbox); empty when there is nothing to send.
    pub fn take_output(&mut self) -> Bytes {
        self.wire.take_output()
    }

    /// The chunk size of outgoing chunks: 128 until `accept_connect`, the configured one after.
    pub(crate) fn outgoing_chunk_size(&self) -> u32 {
        self.wire.encoder.chunk_size()
    }

    /// The buffer length (ms) the client last set for `stream_id`.
    pub(crate) fn buffer_length(&self, stream_id: u32) -> Option<u32> {
        self.buffer_lengths.get(&stream_id).copied()
    }

    /// Whether `connect` has been accepted.
    pub(crate) fn is_connected(&self) -> bool {
        self.connection == Connection::Connected
    }

    /// Messages ignored so far: media on streams that are not publishing, unknown message types.
    #[cfg(test)]
    pub(crate) fn ignored_messages(&self) -> u64 {
        self.ignored
    }

    /// Outgoing messages dropped because their payload exceeds 16 777 215 bytes.
    #[cfg(test)]
    pub(crate) fn dropped_messages(&self) -> u64 {
        self.wire.dropped
    }

    /// Accepts the pending `connect`: window, bandwidth and chunk size, then `_result`.
    pub fn accept_connect(&mut self) {
        let Connection::ConnectPending { transaction_id, object_encoding } = self.connection else { return };
        self.connection = Connection::Connected;
        let ServerConfig { chunk_size, window_ack_size, peer_bandwidth, .. } = self.config;
        self.wire.send(CSID_PROTOCOL, 0, 0, &Message::WindowAckSize(window_ack_size));
        self.wire.send(CSID_PROTOCOL, 0, 0, &Message::SetPeerBandwidth { size: peer_bandwidth, limit_type: 2 });
        self.wire.set_chunk_size(chunk_size);
        let properties = Amf0Value::object([
            ("fmsVer", Amf0Value::String("FMS/3,5,7,7009".into())),
            ("capabilities", Amf0Value::Number(31.0)),
            ("mode", Amf0Value::Number(1.0)),
        ]);
        let mut info = Status::new("NetConnection.Connect.Success", "Connection succeeded.").properties();
        info.push(("objectEncoding".into(), Amf0Value::Number(object_encoding)));
        let args = vec![Amf0Value::Object(info)];
        let command = Command { name: "_result".into(), transaction_id, object: properties, args };
        self.wire.send(CSID_COMMAND, 0, 0, &Message::Command { command, amf3: false });
    }

    /// Whether the client advertised Enhanced RTMP's reconnect capability in its `connect`.
    #[cfg(test)]
    pub(crate) fn can_reconnect(&self) -> bool {
        self.can_reconnect
    }

    /// Asks a connected client that advertised the capability to reconnect (Enhanced
    /// RTMP): `onStatus` `NetConnection.Connect.ReconnectRequest` on stream 0, with
    /// `tc_url` when it should go elsewhere (none: the same URL, e.g. through a load
    /// balancer). Returns whether it was sent.
    pub(crate) fn request_reconnect(&mut self, description: &str, tc_url: Option<&str>) -> bool {
        if self.connection != Connection::Connected || !self.can_reconnect {
            return false;
        }
        let mut info = Status::new("NetConnection.Connect.ReconnectRequest", description).properties();
        if let Some(url) = tc_url {
            info.push(("tcUrl".into(), Amf0Value::String(url.to_owned())));
        }
        self.wire.send_command(CSID_STATUS, 0, "onStatus", 0.0, vec![Amf0Value::Object(info)]);
        true
    }

    /// Refuses the pending `connect` with `_error` `NetConnection.Connect.Rejected`. The driver
    /// closes the connection once the output is sent.
    pub(crate) fn reject_connect(&mut self, description: &str) {
        let Connection::ConnectPending { transaction_id, .. } = self.connection else { return };
        self.connection = Connection::Rejected;
        let info = Status::error("NetConnection.Connect.Rejected", description).info();
        self.wire.send_command(CSID_COMMAND, 0, "_error", transaction_id, vec![info]);
    }

    /// Accepts a pending publish: StreamBegin, then `NetStream.Publish.Start`. Media from the
    /// stream is reported from now on.
    pub fn accept_publish(&mut self, stream_id: u32) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let Stream::PublishPending { name } = stream else { return };
        let name = std::mem::take(name);
        self.wire.send_user_control(UserControl::StreamBegin(stream_id));
        let description = format!("{name} is now published.");
        self.wire.send_status(stream_id, Status::new("NetStream.Publish.Start", &description).details(&name));
        *stream = Stream::Publishing { name };
    }

    /// Refuses a pending publish, or ends an accepted one, with an `onStatus` error; the stream
    /// returns to idle and the client may try again.
    pub(crate) fn reject_publish(&mut self, stream_id: u32, code: PublishRejection, description: &str) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let (Stream::PublishPending { name } | Stream::Publishing { name }) = stream else { return };
        let name = std::mem::take(name);
        *stream = Stream::Idle;
        self.wire.send_status(stream_id, Status::error(code.code(), description).details(&name));
    }

    /// Accepts a pending play: StreamBegin, `NetStream.Play.Reset`, `NetStream.Play.Start`, then
    /// the data message `|RtmpSampleAccess`, as nginx-rtmp does. No `onStatus
    /// NetStream.Data.Start` data message (FMS sends one): ffmpeg and VLC take a data
    /// message they do not know for a third stream of codec "none", and `ffmpeg -map 0
    /// -c copy out.mp4` then fails ("Could not find tag for codec none").
    pub fn accept_play(&mut self, stream_id: u32) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let Stream::PlayPending { name } = stream else { return };
        let name = std::mem::take(name);
        self.wire.send_user_control(UserControl::StreamBegin(stream_id));
        let reset = format!("Playing and resetting {name}.");
        self.wire.send_status(stream_id, Status::new("NetStream.Play.Reset", &reset).details(&name));
        let start = format!("Started playing {name}.");
        self.wire.send_status(stream_id, Status::new("NetStream.Play.Start", &start).details(&name));
        let sample_access =
            [Amf0Value::String("|RtmpSampleAccess".into()), Amf0Value::Boolean(true), Amf0Value::Boolean(true)];
        self.wire.send_data(stream_id, &sample_access);
        *stream = Stream::Playing { name };
    }

    /// Refuses a pending play: `onStatus` error `NetStream.Play.StreamNotFound`; the stream
    /// returns to idle.
    pub(crate) fn play_not_found(&mut self, stream_id: u32, name: &str) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        if !matches!(stream, Stream::PlayPending { .. } | Stream::Playing { .. }) {
            return;
        }
        *stream = Stream::Idle;
        let name = truncate(name, MAX_NAME_LEN);
        let description = format!("Failed to play {name}; stream not found.");
        self.wire.send_status(stream_id, Status::error("NetStream.Play.StreamNotFound", &description).details(name));
    }

    /// Refuses a pending play for another reason than a missing stream (e.g. its play
    /// token does not allow it): `onStatus` error `NetStream.Play.Failed` with
    /// `description`; the stream returns to idle and the client may try again.
    pub(crate) fn reject_play(&mut self, stream_id: u32, description: &str) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let Stream::PlayPending { name } = stream else { return };
        let name = std::mem::take(name);
        *stream = Stream::Idle;
        self.wire.send_status(stream_id, Status::error("NetStream.Play.Failed", description).details(&name));
    }

    /// The publisher of a playing stream went away: `NetStream.Play.UnpublishNotify`, then
    /// StreamEOF. The stream stays playing (see [`publish_notify`](Self::publish_notify)).
    pub(crate) fn end_of_stream(&mut self, stream_id: u32) {
        let Some(Stream::Playing { name }) = self.streams.get(&stream_id) else { return };
        let description = format!("{name} is now unpublished.");
        let status = Status::new("NetStream.Play.UnpublishNotify", &description).details(name);
        self.wire.send_status(stream_id, status);
        self.wire.send_user_control(UserControl::StreamEof(stream_id));
    }

    /// A publisher (re)appeared for a playing stream: StreamBegin, then `NetStream.Play.PublishNotify`.
    pub(crate) fn publish_notify(&mut self, stream_id: u32) {
        let Some(Stream::Playing { name }) = self.streams.get(&stream_id) else { return };
        let description = format!("{name} is now published.");
        let status = Status::new("NetStream.Play.PublishNotify", &description).details(name);
        self.wire.send_user_control(UserControl::StreamBegin(stream_id));
        self.wire.send_status(stream_id, status);
    }

    /// A recorded stream's `onMetaData` data message, with its `duration` in seconds
    /// (what players show as the stream's length; rtmpdump reads it too).
    pub fn send_metadata(&mut self, stream_id: u32, duration_secs: f64) {
        if !self.is_playing(stream_id) {
            return;
        }
        let metadata = Amf0Value::EcmaArray(vec![("duration".into(), Amf0Value::Number(duration_secs))]);
        self.wire.send_data(stream_id, &[Amf0Value::String("onMetaData".into()), metadata]);
    }

    /// The answer to `seek` on a recorded stream, before its media from the new
    /// position: StreamBegin, `NetStream.Seek.Notify` and `NetStream.Play.Start`
    /// (ffmpeg drops what arrives between its `seek` and one of those two).
    pub fn seek_notify(&mut self, stream_id: u32, at_ms: u64) {
        let Some(Stream::Playing { name }) = self.streams.get(&stream_id) else { return };
        let name = name.clone();
        self.wire.send_user_control(UserControl::StreamBegin(stream_id));
        let description = format!("Seeking {at_ms} (stream ID: {stream_id}).");
        self.wire.send_status(stream_id, Status::new("NetStream.Seek.Notify", &description).details(&name));
        let start = format!("Started playing {name}.");
        self.wire.send_status(stream_id, Status::new("NetStream.Play.Start", &start).details(&name));
    }

    /// The answer to `pause` on a recorded stream: `NetStream.Pause.Notify` after
    /// StreamEOF, or StreamBegin and `NetStream.Unpause.Notify`. (librtmp, pausing to
    /// refill its buffer, answers the first with its unpause.)
    pub fn pause_notify(&mut self, stream_id: u32, paused: bool, at_ms: u64) {
        let Some(Stream::Playing { name }) = self.streams.get(&stream_id) else { return };
        let name = name.clone();
        let (code, what) = if paused {
            self.wire.send_user_control(UserControl::StreamEof(stream_id));
            ("NetStream.Pause.Notify", "Pausing")
        } else {
            self.wire.send_user_control(UserControl::StreamBegin(stream_id));
            ("NetStream.Unpause.Notify", "Unpausing")
        };
        let description = format!("{what} {name} at {at_ms}.");
        self.wire.send_status(stream_id, Status::new(code, &description).details(&name));
    }

    /// A recorded stream was sent to its end: the data message `onPlayStatus`
    /// `NetStream.Play.Complete`, `onStatus` `NetStream.Play.Stop` and StreamEOF. The
    /// stream stays playing: a `seek` plays it again.
    pub fn play_complete(&mut self, stream_id: u32, duration_secs: f64) {
        let Some(Stream::Playing { name }) = self.streams.get(&stream_id) else { return };
        let name = name.clone();
        let complete = Amf0Value::object([
            ("code", Amf0Value::String("NetStream.Play.Complete".into())),
            ("level", Amf0Value::String("status".into())),
            ("duration", Amf0Value::Number(duration_secs)),
        ]);
        self.wire.send_data(stream_id, &[Amf0Value::String("onPlayStatus".into()), complete]);
        let description = format!("Stopped playing {name}.");
        self.wire.send_status(stream_id, Status::new("NetStream.Play.Stop", &description).details(&name));
        self.wire.send_user_control(UserControl::StreamEof(stream_id));
    }

    /// User Control `BufferEmpty` (31), as Flash Media Server sends it when it has sent
    /// a buffer's worth of a recorded stream ahead of real time and waits: librtmp
    /// (rtmpdump) then pauses and resumes to have the next buffer's worth at once.
    pub fn buffer_empty(&mut self, stream_id: u32) {
        if self.is_playing(stream_id) {
            let data = Bytes::copy_from_slice(&stream_id.to_be_bytes());
            self.wire.send_user_control(UserControl::Other { event: USER_CONTROL_BUFFER_EMPTY, data });
        }
    }

    /// Answers a `getStreamLength` with the length in seconds (0 for a live stream).
    pub fn answer_stream_length(&mut self, transaction_id: f64, secs: f64) {
        if self.connection == Connection::Connected {
            self.result(transaction_id, Amf0Value::Number(secs));
        }
    }

    /// Sends a shared-object message body (see [`crate::rtmp::shared_object`]) on message
    /// stream 0, as type 19 or, when `amf3`, type 16. Ignored unless connected.
    pub(crate) fn send_shared_object(&mut self, body: Bytes, amf3: bool) {
        if self.connection == Connection::Connected {
            self.wire.send(CSID_COMMAND, 0, 0, &Message::SharedObject { payload: body, amf3 });
        }
    }

    /// Sends audio to a playing stream (ignored on any other stream).
    #[cfg(test)]
    pub(crate) fn send_audio(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) {
        self.send_media(CSID_AUDIO, message::AUDIO, stream_id, timestamp, payload);
    }

    /// Sends video to a playing stream (ignored on any other stream).
    pub fn send_video(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) {
        self.send_media(CSID_VIDEO, message::VIDEO, stream_id, timestamp, payload);
    }

    /// Sends an AMF0 data message (e.g. `onMetaData`) to a playing stream (ignored on any other).
    #[cfg(test)]
    pub(crate) fn send_data(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) {
        self.send_media(CSID_DATA, message::DATA_AMF0, stream_id, timestamp, payload);
    }

    /// Pre-chunked media bytes produced once per stream with `chunk::encode_standalone` (or
    /// [`prechunk`](super::prechunk)) at this session's [`outgoing_chunk_size`](Self::outgoing_chunk_size)
    /// and the player's message stream id, on [`CSID_AUDIO`], [`CSID_VIDEO`] or [`CSID_DATA`];
    /// appended to the outbox as-is (fan-out path). Ignored unless connected.
    #[cfg(test)]
    pub(crate) fn send_prechunked(&mut self, bytes: Bytes) {
        if self.connection == Connection::Connected {
            self.wire.send_foreign(&bytes, &[CSID_AUDIO, CSID_VIDEO, CSID_DATA]);
        }
    }

    /// The zero-copy form of [`send_prechunked`](Self::send_prechunked): the driver writes
    /// the shared bytes itself, right after everything [`take_output`](Self::take_output)
    /// returned before this call. Returns whether to send them (only when connected);
    /// the session makes its encoder forget the media chunk streams either way.
    pub(crate) fn prechunked_by_driver(&mut self) -> bool {
        self.wire.forget(&[CSID_AUDIO, CSID_VIDEO, CSID_DATA]);
        self.connection == Connection::Connected
    }

    fn send_media(&mut self, csid: u32, type_id: u8, stream_id: u32, timestamp: u32, payload: Bytes) {
        if matches!(self.streams.get(&stream_id), Some(Stream::Playing { .. })) {
            self.wire.send_raw(RawMessage { csid, timestamp, type_id, stream_id, payload });
        }
    }

    fn process(&mut self, events: &mut Vec<ServerEvent>) -> Result<(), SessionError> {
        while let Some(raw) = self.wire.next_message()? {
            let (stream_id, timestamp) = (raw.stream_id, raw.timestamp);
            match Message::parse(&raw)? {
                // Applied by the chunk decoder.
                Message::SetChunkSize(_) | Message::Abort { .. } => {}
                Message::Acknowledgement { .. } | Message::SetPeerBandwidth { .. } => {}
                Message::WindowAckSize(size) => self.wire.set_ack_window(size),
                Message::UserControl(UserControl::PingRequest(time)) => {
                    self.wire.send_user_control(UserControl::PingResponse(time));
                }
                Message::UserControl(UserControl::SetBufferLength { stream_id, millis }) => {
                    if self.streams.contains_key(&stream_id) {
                        self.buffer_lengths.insert(stream_id, millis);
                        events.push(ServerEvent::BufferLength { stream_id, ms: millis });
                    }
                }
                Message::UserControl(_) => {}
                Message::Audio(payload) => self.media(MediaKind::Audio, stream_id, timestamp, payload, events),
                Message::Video(payload) => self.media(MediaKind::Video, stream_id, timestamp, payload, events),
                Message::Data { payload, .. } => self.media(MediaKind::Data, stream_id, timestamp, payload, events),
                Message::Aggregate(body) => {
                    if self.is_publishing(stream_id) {
                        for (kind, timestamp, payload) in split_aggregate(timestamp, body) {
                            self.media(kind, stream_id, timestamp, payload, events);
                        }
                    } else {
                        self.ignored += 1;
                    }
                }
                Message::SharedObject { payload, amf3 } if self.is_connected() => {
                    events.push(ServerEvent::SharedObject { payload, amf3 });
                }
                Message::Command { command, .. } => self.command(stream_id, command, events),
                Message::SharedObject { .. } | Message::Unknown { .. } => self.ignored += 1,
            }
        }
        Ok(())
    }

    fn is_playing(&self, stream_id: u32) -> bool {
        matches!(self.streams.get(&stream_id), Some(Stream::Playing { .. }))
    }

    fn is_publishing(&self, stream_id: u32) -> bool {
        matches!(self.streams.get(&stream_id), Some(Stream::Publishing { .. }))
    }

    fn media(&mut self, kind: MediaKind, stream_id: u32, timestamp: u32, payload: Bytes, out: &mut Vec<ServerEvent>) {
        if !self.is_publishing(stream_id) {
            self.ignored += 1;
            return;
        }
        out.push(match kind {
            MediaKind::Audio => ServerEvent::Audio { stream_id, timestamp, payload },
            MediaKind::Video => ServerEvent::Video { stream_id, timestamp, payload },
            MediaKind::Data => {
                ServerEvent::Data { stream_id, timestamp, payload: message::strip_set_data_frame(&payload) }
            }
        });
    }

    fn command(&mut self, stream_id: u32, cmd: Command, events: &mut Vec<ServerEvent>) {
        let txn = cmd.transaction_id;
        match (self.connection, cmd.name.as_str()) {
            (Connection::AwaitingConnect, "connect") => self.connect(cmd, events),
            (Connection::Connected, _) => self.connected_command(stream_id, cmd, events),
            (Connection::Rejected | Connection::Failed, _) => {}
            (_, "connect") => self.call_failed(txn, "Already connected."),
            _ => self.call_failed(txn, "Not connected."),
        }
    }

    fn connect(&mut self, cmd: Command, events: &mut Vec<ServerEvent>) {
        let text = |key| cmd.object.property(key).and_then(Amf0Value::as_str);
        let (raw_app, tc_url) = (text("app").unwrap_or(""), text("tcUrl"));
        if raw_app.len() > MAX_NAME_LEN || tc_url.is_some_and(|url| url.len() > MAX_NAME_LEN) {
            self.connection = Connection::Rejected;
            let info = Status::error("NetConnection.Connect.Rejected", "Invalid app or tcUrl.").info();
            self.wire.send_command(CSID_COMMAND, 0, "_error", cmd.transaction_id, vec![info]);
            return;
        }
        let (app, app_query) = split_query(raw_app);
        let query = app_query.or_else(|| tc_url.and_then(|url| split_query(url).1));
        let object_encoding =
            cmd.object.property("objectEncoding").and_then(Amf0Value::as_f64).filter(|n| n.is_finite()).unwrap_or(0.0);
        let caps_ex = cmd.object.property("capsEx").and_then(Amf0Value::as_f64).filter(|n| n.is_finite() && *n >= 0.0);
        self.can_reconnect = caps_ex.is_some_and(|caps| (caps as u64) & u64::from(CAPS_EX_RECONNECT) != 0);
        events.push(ServerEvent::Connect {
            app: app.to_owned(),
            tc_url: tc_url.map(str::to_owned),
            query: query.map(str::to_owned),
            object: cmd.object.clone(),
        });
        self.connection = Connection::ConnectPending { transaction_id: cmd.transaction_id, object_encoding };
    }

    fn connected_command(&mut self, stream_id: u32, cmd: Command, events: &mut Vec<ServerEvent>) {
        let txn = cmd.transaction_id;
        let name_arg = || cmd.args.first().and_then(Amf0Value::as_str).map(|name| split_query(name).0);
        match cmd.name.as_str() {
            "connect" => self.call_failed(txn, "Already connected."),
            "createStream" => self.create_stream(txn, events),
            "publish" => self.publish(stream_id, txn, &cmd.args, events),
            "play" => self.play(stream_id, txn, &cmd.args, events),
            "closeStream" => {
                // On the stream's own message stream; some clients name it in an argument on stream 0.
                let id = if stream_id == 0 { as_u32(cmd.args.first()).unwrap_or(0) } else { stream_id };
                self.close_stream(id, false, events);
            }
            "deleteStream" => {
                if let Some(id) = as_u32(cmd.args.first()) {
                    self.close_stream(id, true, events);
                }
            }
            "releaseStream" | "_checkbw" => self.result(txn, Amf0Value::Null),
            "getStreamLength" => match (txn != 0.0, name_arg()) {
                (true, Some(name)) => {
                    let name = truncate(name, MAX_NAME_LEN).to_owned();
                    events.push(ServerEvent::StreamLength { transaction_id: txn, name });
                }
                _ => self.result(txn, Amf0Value::Number(0.0)),
            },
            "seek" => {
                if let Some(ms) = cmd.args.first().and_then(Amf0Value::as_f64).filter(|ms| ms.is_finite()) {
                    if self.is_playing(stream_id) {
                        events.push(ServerEvent::Seek { stream_id, ms });
                    }
                }
            }
            "pause" => {
                let pause = cmd.args.first().and_then(Amf0Value::as_bool);
                let ms = cmd.args.get(1).and_then(Amf0Value::as_f64).filter(|ms| ms.is_finite()).unwrap_or(0.0);
                if let (Some(pause), true) = (pause, self.is_playing(stream_id)) {
                    events.push(ServerEvent::Pause { stream_id, pause, ms });
                }
            }
            "FCPublish" => {
                self.result(txn, Amf0Value::Null);
                let name = truncate(name_arg().unwrap_or(""), MAX_NAME_LEN).to_owned();
                self.notify("onFCPublish", "NetStream.Publish.Start", &name);
            }
            "FCUnpublish" => {
                self.result(txn, Amf0Value::Null);
                let name = truncate(name_arg().unwrap_or(""), MAX_NAME_LEN).to_owned();
                self.notify("onFCUnpublish", "NetStream.Unpublish.Success", &name);
                let publishing = self.streams.iter().find_map(|(&id, stream)| match stream {
                    Stream::PublishPending { name: n } | Stream::Publishing { name: n } if *n == name => Some(id),
                    _ => None,
                });
                if let Some(id) = publishing {
                    self.close_stream(id, false, events);
                }
            }
            "FCSubscribe" => {
                self.result(txn, Amf0Value::Null);
                let name = truncate(name_arg().unwrap_or(""), MAX_NAME_LEN).to_owned();
                self.notify("onFCSubscribe", "NetStream.Play.Start", &name);
            }
            // Replies and notifications to us, and what a server need not act on.
            "_result" | "_error" | "onStatus" | "onBWDone" | "FCUnsubscribe" | "receiveAudio" | "receiveVideo" => {}
            _ => self.call_failed(txn, "Method not found."),
        }
    }

    fn create_stream(&mut self, txn: f64, events: &mut Vec<ServerEvent>) {
        // Ids stay below `NO_STREAM`; 2^31 creations per connection will not happen in practice.
        if self.streams.len() >= self.config.max_streams || self.next_stream_id >= i32::MAX as u32 {
            let info = Status::error("NetConnection.Call.Failed", "Too many streams.").info();
            self.wire.send_command(CSID_COMMAND, 0, "_error", txn, vec![info]);
            return;
        }
        let stream_id = self.next_stream_id;
        self.next_stream_id += 1;
        self.streams.insert(stream_id, Stream::Idle);
        self.wire.send_command(CSID_COMMAND, 0, "_result", txn, vec![Amf0Value::Number(f64::from(stream_id))]);
        events.push(ServerEvent::CreateStream { stream_id });
    }

    fn publish(&mut self, stream_id: u32, txn: f64, args: &[Amf0Value], events: &mut Vec<ServerEvent>) {
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            self.call_failed(txn, "Unknown stream.");
            return;
        };
        if *stream != Stream::Idle {
            let status = Status::error("NetStream.Publish.BadConnection", "The stream is busy.");
            self.wire.send_status(stream_id, status);
            return;
        }
        let Some((name, query)) = stream_name(args.first()) else {
            self.wire.send_status(stream_id, Status::error("NetStream.Publish.BadName", "Invalid stream name."));
            return;
        };
        let mode = args.get(1).and_then(Amf0Value::as_str).map(PublishMode::parse).unwrap_or_default();
        *stream = Stream::PublishPending { name: name.clone() };
        events.push(ServerEvent::Publish { stream_id, name, query, mode });
    }

    fn play(&mut self, stream_id: u32, txn: f64, args: &[Amf0Value], events: &mut Vec<ServerEvent>) {
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            self.call_failed(txn, "Unknown stream.");
            return;
        };
        if *stream != Stream::Idle {
            let status = Status::error("NetStream.Play.Failed", "The stream is busy.");
            self.wire.send_status(stream_id, status);
            return;
        }
        let Some((name, query)) = stream_name(args.first()) else {
            self.wire.send_status(stream_id, Status::error("NetStream.Play.StreamNotFound", "Invalid stream name."));
            return;
        };
        let number = |at: usize| args.get(at).and_then(Amf0Value::as_f64).filter(|n| n.is_finite());
        let (start, length) = (number(1), number(2));
        *stream = Stream::PlayPending { name: name.clone() };
        events.push(ServerEvent::Play { stream_id, name, query, start, length });
    }

    /// Returns a stream to idle (or removes it), reporting the end of a publish or play.
    fn close_stream(&mut self, stream_id: u32, remove: bool, events: &mut Vec<ServerEvent>) {
        let previous = if remove {
            self.buffer_lengths.remove(&stream_id);
            self.streams.remove(&stream_id)
        } else {
            self.streams.get_mut(&stream_id).map(|stream| std::mem::replace(stream, Stream::Idle))
        };
        match previous {
            Some(Stream::Publishing { name }) => {
                let description = format!("{name} is now unpublished.");
                let status = Status::new("NetStream.Unpublish.Success", &description).details(&name);
                self.wire.send_status(stream_id, status);
                events.push(ServerEvent::StreamClosed { stream_id });
            }
            Some(Stream::PublishPending { .. } | Stream::PlayPending { .. } | Stream::Playing { .. }) => {
                events.push(ServerEvent::StreamClosed { stream_id });
            }
            Some(Stream::Idle) | None => {}
        }
    }

    /// `_result` (txn, null, value) when the client asked for an answer (non-zero transaction id).
    fn result(&mut self, txn: f64, value: Amf0Value) {
        if txn != 0.0 {
            self.wire.send_command(CSID_COMMAND, 0, "_result", txn, vec![value]);
        }
    }

    /// `_error` `NetConnection.Call.Failed` when the client asked for an answer.
    fn call_failed(&mut self, txn: f64, description: &str) {
        if txn != 0.0 {
            let info = Status::error("NetConnection.Call.Failed", description).info();
            self.wire.send_command(CSID_COMMAND, 0, "_error", txn, vec![info]);
        }
    }

    /// `onFCPublish` and friends: (0, null, {code, description: name}).
    fn notify(&mut self, command: &str, code: &str, name: &str) {
        let info = Amf0Value::object([
            ("code", Amf0Value::String(code.into())),
            ("description", Amf0Value::String(name.into())),
        ]);
        self.wire.send_command(CSID_COMMAND, 0, command, 0.0, vec![info]);
    }
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
