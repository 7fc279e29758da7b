//! The client side of an RTMP session, for the load generator and tests: connect, create
//! streams, publish or play, and send or receive media, acknowledging like a real client.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::super::amf0::Amf0Value;
use super::super::chunk::RawMessage;
use super::super::message::{self, Command, Message, UserControl};
use super::{
    as_u32, whole_u32, SessionError, Wire, CSID_AUDIO, CSID_COMMAND, CSID_DATA, CSID_PROTOCOL, CSID_VIDEO, NO_STREAM,
};

/// The client's side of the connection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Outgoing chunk size announced once connected, clamped to `1..=16_777_215`.
    pub chunk_size: u32,
    /// Buffer length announced before `play`, in milliseconds.
    pub buffer_ms: u32,
    /// Enhanced RTMP's `capsEx` sent in `connect` (0: none; e.g.
    /// [`super::CAPS_EX_RECONNECT`] to hear reconnect requests).
    pub caps_ex: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self { chunk_size: 4096, buffer_ms: 3000, caps_ex: 0 }
    }
}

/// What the server said or sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `connect` succeeded.
    Connected,
    /// `connect` failed with `_error`.
    ConnectRejected { code: String, description: String },
    /// `createStream` succeeded.
    StreamCreated { stream_id: u32 },
    /// `NetStream.Publish.Start` arrived for a stream we asked to publish.
    PublishStarted { stream_id: u32 },
    /// `NetStream.Play.Start` arrived for a stream we asked to play.
    PlayStarted { stream_id: u32 },
    /// Every `onStatus`, including those behind `PublishStarted` and `PlayStarted`.
    Status { stream_id: u32, level: String, code: String, description: String },
    /// A call other than `connect` (e.g. `createStream`) failed with `_error`.
    CallFailed { command: &'static str, code: String, description: String },
    /// The server says the stream's media ended (User Control StreamEOF).
    StreamEof { stream_id: u32 },
    /// Audio on a stream we play.
    Audio { stream_id: u32, timestamp: u32, payload: Bytes },
    /// Video on a stream we play.
    Video { stream_id: u32, timestamp: u32, payload: Bytes },
    /// A data message on a stream we play (`onMetaData`, `|RtmpSampleAccess`, …).
    Data { stream_id: u32, timestamp: u32, payload: Bytes },
    /// A shared-object message body (see [`crate::rtmp::shared_object`]); `amf3` when it
    /// came as type 16.
    SharedObject { payload: Bytes, amf3: bool },
}

/// The lifecycle of the NetConnection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// `connect` not sent yet.
    Idle,
    Connecting,
    Connected,
    /// The server answered `connect` with `_error`.
    Rejected,
    /// A fatal error was returned; the connection must be closed.
    Failed,
}

/// The lifecycle of one message stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Created,
    PublishRequested,
    Publishing,
    PlayRequested,
    Playing,
}

/// A call waiting for its `_result` or `_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Connect,
    CreateStream,
}

/// The client side of one RTMP connection after the handshake.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    wire: Wire,
    connection: Connection,
    streams: BTreeMap<u32, Stream>,
    calls: HashMap<u32, Call>,
    next_transaction: u32,
    /// The Window Acknowledgement Size we last announced.
    announced_window: Option<u32>,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new(ClientConfig::default())
    }
}

impl ClientSession {
    /// A session for a connection whose handshake just completed.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            wire: Wire::new(),
            connection: Connection::Idle,
            streams: BTreeMap::new(),
            calls: HashMap::new(),
            next_transaction: 1,
            announced_window: None,
        }
    }

    /// Bytes to write to the socket (drains the outbox).
    pub fn take_output(&mut self) -> Bytes {
        self.wire.take_output()
    }

    /// Sends `connect` (transaction id 1) for `app` at `tc_url`.
    pub fn connect(&mut self, app: &str, tc_url: &str) -> Result<(), SessionError> {
        if self.connection != Connection::Idle {
            return Err(SessionError::InvalidState("connect"));
        }
        self.connection = Connection::Connecting;
        let text = |s: &str| Amf0Value::String(s.to_owned());
        let mut props = vec![
            ("app", text(app)),
            ("type", text("nonprivate")),
            ("flashVer", text("FMLE/3.0 (compatible; raftcast)")),
            ("tcUrl", text(tc_url)),
            ("fpad", Amf0Value::Boolean(false)),
            ("capabilities", Amf0Value::Number(15.0)),
            ("audioCodecs", Amf0Value::Number(4071.0)),
            ("videoCodecs", Amf0Value::Number(252.0)),
            ("videoFunction", Amf0Value::Number(1.0)),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ];
        if self.config.caps_ex != 0 {
            props.push(("capsEx", Amf0Value::Number(f64::from(self.config.caps_ex))));
        }
        let object = Amf0Value::object(props);
        self.call(Call::Connect, "connect", 0, object, Vec::new());
        Ok(())
    }

    /// Sends `createStream`; [`ClientEvent::StreamCreated`] follows.
    pub(crate) fn create_stream(&mut self) -> Result<(), SessionError> {
        self.require_connected("createStream")?;
        self.call(Call::CreateStream, "createStream", 0, Amf0Value::Null, Vec::new());
        Ok(())
    }

    /// Sends `publish` (`name`, "live") on a created stream; [`ClientEvent::PublishStarted`] follows
    /// once the server accepts.
    pub(crate) fn publish(&mut self, stream_id: u32, name: &str) -> Result<(), SessionError> {
        self.stream_command(
            stream_id,
            Stream::PublishRequested,
            "publish",
            vec![Amf0Value::String(name.to_owned()), Amf0Value::String("live".to_owned())],
        )
    }

    /// Announces a buffer length and sends `play` (`name`, start -2: live or recorded) on a
    /// created stream; [`ClientEvent::PlayStarted`] follows once the server accepts.
    pub(crate) fn play(&mut self, stream_id: u32, name: &str) -> Result<(), SessionError> {
        self.require_idle_stream(stream_id)?;
        self.wire.send_user_control(UserControl::SetBufferLength { stream_id, millis: self.config.buffer_ms });
        self.stream_command(
            stream_id,
            Stream::PlayRequested,
            "play",
            vec![Amf0Value::String(name.to_owned()), Amf0Value::Number(-2.0)],
        )
    }

    /// Sends `closeStream` on a stream; it can be published or played again.
    #[cfg(test)]
    pub(crate) fn close_stream(&mut self, stream_id: u32) -> Result<(), SessionError> {
        self.require_connected("closeStream")?;
        let stream = self.streams.get_mut(&stream_id).ok_or(SessionError::UnknownStream(stream_id))?;
        *stream = Stream::Created;
        self.wire.send_command(CSID_COMMAND, stream_id, "closeStream", 0.0, Vec::new());
        Ok(())
    }

    /// Sends audio on a stream we publish.
    pub(crate) fn send_audio(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> Result<(), SessionError> {
        self.send_media(CSID_AUDIO, message::AUDIO, stream_id, timestamp, payload)
    }

    /// Sends video on a stream we publish.
    pub(crate) fn send_video(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> Result<(), SessionError> {
        self.send_media(CSID_VIDEO, message::VIDEO, stream_id, timestamp, payload)
    }

    /// Sends an AMF0 data message as-is (e.g. `@setDataFrame`, `onMetaData`, {…}) on a stream we publish.
    pub(crate) fn send_data(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> Result<(), SessionError> {
        self.send_media(CSID_DATA, message::DATA_AMF0, stream_id, timestamp, payload)
    }

    /// Sends a shared-object message body (see [`crate::rtmp::shared_object`]) as type 19,
    /// or type 16 when `amf3`.
    pub(crate) fn send_shared_object(&mut self, body: Bytes, amf3: bool) -> Result<(), SessionError> {
        self.require_connected("a shared-object message")?;
        self.wire.send(CSID_COMMAND, 0, 0, &Message::SharedObject { payload: body, amf3 });
        Ok(())
    }

    /// Feed bytes read from the socket. Returns what the server said or sent; replies (acks,
    /// pings) accumulate in the outbox. An error is fatal.
    pub(crate) fn handle_input(&mut self, bytes: &[u8]) -> Result<Vec<ClientEvent>, SessionError> {
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

    fn require_connected(&self, what: &'static str) -> Result<(), SessionError> {
        if self.connection == Connection::Connected {
            Ok(())
        } else {
            Err(SessionError::InvalidState(what))
        }
    }

    fn require_idle_stream(&self, stream_id: u32) -> Result<(), SessionError> {
        self.require_connected("a stream command")?;
        match self.streams.get(&stream_id) {
            Some(Stream::Created) => Ok(()),
            Some(_) => Err(SessionError::InvalidState("publish or play on a busy stream")),
            None => Err(SessionError::UnknownStream(stream_id)),
        }
    }

    fn stream_command(
        &mut self,
        stream_id: u32,
        next: Stream,
        name: &str,
        args: Vec<Amf0Value>,
    ) -> Result<(), SessionError> {
        self.require_idle_stream(stream_id)?;
        self.streams.insert(stream_id, next);
        let transaction_id = self.next_transaction();
        self.wire.send_command(CSID_COMMAND, stream_id, name, f64::from(transaction_id), args);
        Ok(())
    }

    fn send_media(
        &mut self,
        csid: u32,
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), SessionError> {
        match self.streams.get(&stream_id) {
            Some(Stream::Publishing) => {
                self.wire.send_raw(RawMessage { csid, timestamp, type_id, stream_id, payload });
                Ok(())
            }
            Some(_) => Err(SessionError::InvalidState("media on a stream that is not publishing")),
            None => Err(SessionError::UnknownStream(stream_id)),
        }
    }

    fn next_transaction(&mut self) -> u32 {
        let id = self.next_transaction;
        // Wraps long before f64 precision matters; 0 means "no reply wanted", so skip it.
        self.next_transaction = self.next_transaction.checked_add(1).unwrap_or(1);
        id
    }

    fn call(&mut self, call: Call, name: &str, stream_id: u32, object: Amf0Value, args: Vec<Amf0Value>) {
        let transaction_id = self.next_transaction();
        self.calls.insert(transaction_id, call);
        let command = Command { name: name.to_owned(), transaction_id: f64::from(transaction_id), object, args };
        self.wire.send(CSID_COMMAND, 0, stream_id, &Message::Command { command, amf3: false });
    }

    fn process(&mut self, events: &mut Vec<ClientEvent>) -> Result<(), SessionError> {
        while let Some(raw) = self.wire.next_message()? {
            let (stream_id, timestamp) = (raw.stream_id, raw.timestamp);
            match Message::parse(&raw)? {
                Message::WindowAckSize(size) => self.wire.set_ack_window(size),
                // Answer with our window when it differs from the last one we announced.
                Message::SetPeerBandwidth { size, .. } if self.announced_window != Some(size) => {
                    self.announced_window = Some(size);
                    self.wire.send(CSID_PROTOCOL, 0, 0, &Message::WindowAckSize(size));
                }
                Message::UserControl(UserControl::PingRequest(time)) => {
                    self.wire.send_user_control(UserControl::PingResponse(time));
                }
                Message::UserControl(UserControl::StreamEof(stream_id)) if self.streams.contains_key(&stream_id) => {
                    events.push(ClientEvent::StreamEof { stream_id });
                }
                Message::Audio(payload) if self.is_playing(stream_id) => {
                    events.push(ClientEvent::Audio { stream_id, timestamp, payload });
                }
                Message::Video(payload) if self.is_playing(stream_id) => {
                    events.push(ClientEvent::Video { stream_id, timestamp, payload });
                }
                Message::Data { payload, .. } if self.is_playing(stream_id) => {
                    events.push(ClientEvent::Data { stream_id, timestamp, payload });
                }
                Message::Command { command, .. } => self.command(stream_id, command, events),
                Message::SharedObject { payload, amf3 } => events.push(ClientEvent::SharedObject { payload, amf3 }),
                _ => {}
            }
        }
        Ok(())
    }

    fn is_playing(&self, stream_id: u32) -> bool {
        matches!(self.streams.get(&stream_id), Some(Stream::PlayRequested | Stream::Playing))
    }

    fn command(&mut self, stream_id: u32, cmd: Command, events: &mut Vec<ClientEvent>) {
        let call = whole_u32(cmd.transaction_id)
            .filter(|_| matches!(cmd.name.as_str(), "_result" | "_error"))
            .and_then(|txn| self.calls.remove(&txn));
        let info = |key: &str| {
            cmd.args.first().and_then(|info| info.property(key)).and_then(Amf0Value::as_str).unwrap_or("").to_owned()
        };
        match (cmd.name.as_str(), call) {
            ("_result", Some(Call::Connect)) => {
                self.connection = Connection::Connected;
                self.wire.set_chunk_size(self.config.chunk_size);
                events.push(ClientEvent::Connected);
            }
            ("_error", Some(Call::Connect)) => {
                self.connection = Connection::Rejected;
                events.push(ClientEvent::ConnectRejected { code: info("code"), description: info("description") });
            }
            ("_result", Some(Call::CreateStream)) => {
                // Ids we could not send on (0, or the placeholder id) are refused.
                match as_u32(cmd.args.first()).filter(|&id| id != 0 && id != NO_STREAM) {
                    Some(stream_id) if !self.streams.contains_key(&stream_id) => {
                        self.streams.insert(stream_id, Stream::Created);
                        events.push(ClientEvent::StreamCreated { stream_id });
                    }
                    _ => events.push(ClientEvent::CallFailed {
                        command: "createStream",
                        code: String::new(),
                        description: "invalid stream id in the reply".to_owned(),
                    }),
                }
            }
            ("_error", Some(Call::CreateStream)) => events.push(ClientEvent::CallFailed {
                command: "createStream",
                code: info("code"),
                description: info("description"),
            }),
            ("onStatus", _) => {
                let (level, code) = (info("level"), info("code"));
                let stream = self.streams.get_mut(&stream_id);
                let started = match (stream, code.as_str()) {
                    (Some(s @ Stream::PublishRequested), "NetStream.Publish.Start") => {
                        *s = Stream::Publishing;
                        Some(ClientEvent::PublishStarted { stream_id })
                    }
                    (Some(s @ Stream::PlayRequested), "NetStream.Play.Start") => {
                        *s = Stream::Playing;
                        Some(ClientEvent::PlayStarted { stream_id })
                    }
                    (Some(s @ (Stream::PublishRequested | Stream::PlayRequested)), _) if level == "error" => {
                        *s = Stream::Created;
                        None
                    }
                    _ => None,
                };
                events.push(ClientEvent::Status { stream_id, level, code, description: info("description") });
                events.extend(started);
            }
            _ => {}
        }
    }
}
