//! Takes an RTMPT session over on a new RTMP connection: the edge that gets a session
//! whose holder died opens a connection of its own to the RTMP server code, speaks to it
//! as the client did, and translates between it and the client from then on.
//!
//! The [`Translator`] handshakes as a client, replays the journal's control log
//! re-chunked by its own encoder, and drops the server's answers to that replay (the
//! client had them from the dead edge). Then server messages go to the client
//! re-encoded with fresh type-0 headers at the chunk size the client knows, minus what
//! the client already has (media at or before its positions, repeated codec headers
//! and metadata, `|RtmpSampleAccess`, the connection's own protocol control), and client
//! messages, decoded with the client's chunk state, go to the connection.
//!
//! Sans-IO: never knows sockets, HTTP, peers or the clock.

// The session task (phase 2's integration) is what uses this; until it does, only the
// tests do. Remove with the first caller.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use super::journal::{command_name, Delivery, Journal, MediaKind, Positions, StreamPosition};
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, DecoderLimits, RawMessage};
use crate::rtmp::handshake::{Handshake, Progress};
use crate::rtmp::message::{self, Command, Message, MessageError, UserControl};

/// The chunk size the translator announces to the connection before the replay.
const CONN_CHUNK_SIZE: u32 = 4096;
/// Client bytes held while the replay runs; past it the takeover fails. A client sends
/// one body per request and waits for the reply, so two bodies is plenty.
pub const MAX_QUEUED_CLIENT_BYTES: usize = 2 * super::MAX_BODY;
/// A frame this far before the client's position is not a re-send: the timestamps
/// started over (as for the hub's resume).
const RESUME_SPAN_MS: u32 = 60_000;
/// Largest payload a chunk header can announce.
const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Chunk stream of protocol control messages.
const CSID_PROTOCOL: u32 = 2;

/// Why a takeover failed. Every error closes only this session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// The journal cannot be replayed (handshake not done, no `connect`, bad positions).
    #[error("the session cannot be taken over: {0}")]
    NotResumable(&'static str),
    /// The RTMP handshake with the new connection failed.
    #[error("handshake with the new connection: {0}")]
    Handshake(String),
    /// The client's chunk stream is corrupt.
    #[error("client chunk stream: {0}")]
    Client(ChunkError),
    /// The new connection's chunk stream is corrupt.
    #[error("server chunk stream: {0}")]
    Server(ChunkError),
    /// A message of the new connection does not parse.
    #[error("server message: {0}")]
    ServerMessage(MessageError),
    /// The new connection refused a replayed call (`_error`, or a failure status such as
    /// `NetStream.Play.StreamNotFound`); the code says which.
    #[error("the new connection refused the replay: {0}")]
    Refused(String),
    /// A replayed `createStream` got another id than the original.
    #[error("replayed createStream got stream {got}, the original had {expected}")]
    StreamIdMismatch { expected: u32, got: u32 },
    /// The client sent more than [`MAX_QUEUED_CLIENT_BYTES`] before the replay ended.
    #[error("more than {MAX_QUEUED_CLIENT_BYTES} client bytes queued during the replay")]
    QueueFull,
}

/// Where the takeover stands.
enum Phase {
    /// Our C0 C1 are out; waiting for S0 S1 S2.
    Handshaking(Box<Handshake>),
    /// The log is out; the server's answers are awaited and dropped.
    Replaying,
    /// Both ways translated.
    Live,
}

/// What a replayed call waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Connect,
    CreateStream,
    /// `play` or `publish` on a stream: no `_result`, but an `_error` refuses it.
    Start {
        stream_id: u32,
    },
    /// Any other call the server answers.
    Other,
}

/// The start status a replayed `play` or `publish` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Play,
    Publish,
}

impl Start {
    fn code(self) -> &'static str {
        match self {
            Start::Play => "NetStream.Play.Start",
            Start::Publish => "NetStream.Publish.Start",
        }
    }
}

/// What the replay still waits for.
#[derive(Debug, Default)]
struct Waits {
    /// By transaction id (the bits of the AMF number).
    calls: BTreeMap<u64, Call>,
    starts: BTreeMap<u32, Start>,
    /// Stream ids the replayed `createStream`s got, in order.
    created: u32,
}

impl Waits {
    /// Notes what the replayed `msg` will be answered with; returns whether it waits
    /// for an answer (the client waited too: a createStream sent before connect's
    /// `_result` would fail, the connect decision being the driver's).
    fn expect(&mut self, msg: &RawMessage) -> bool {
        let Ok(Message::Command { command, .. }) = Message::parse(msg) else { return false };
        let mut waits = false;
        let call = match command.name.as_str() {
            "connect" => Some(Call::Connect),
            "createStream" => Some(Call::CreateStream),
            "play" | "publish" => {
                let start = if command.name == "play" { Start::Play } else { Start::Publish };
                self.starts.insert(msg.stream_id, start);
                waits = true;
                Some(Call::Start { stream_id: msg.stream_id })
            }
            // What the server answers with nothing.
            "play2" | "deleteStream" | "closeStream" | "FCUnsubscribe" | "receiveAudio" | "receiveVideo"
            | "onStatus" | "onBWDone" => None,
            _ => Some(Call::Other),
        };
        // A call without a transaction id gets no answer.
        if let (Some(call), true) = (call, command.transaction_id != 0.0) {
            self.calls.insert(command.transaction_id.to_bits(), call);
            waits |= !matches!(call, Call::Start { .. });
        }
        waits
    }

    /// Whether every answer expected so far came.
    fn settled(&self) -> bool {
        self.calls.values().all(|c| matches!(c, Call::Start { .. })) && self.starts.is_empty()
    }
}

/// The `code` of a status or error info object (the first argument).
fn info_code(command: &Command) -> String {
    command.args.first().and_then(|i| i.property("code")).and_then(Amf0Value::as_str).unwrap_or("").to_owned()
}

fn info_level(command: &Command) -> Option<&str> {
    command.args.first()?.property("level")?.as_str()
}

/// Encodes `msg` unless an encoder would refuse it (never for decoded messages: the
/// decoders' limits are within the encoder's).
fn send(encoder: &mut ChunkEncoder, msg: &RawMessage, out: &mut BytesMut) {
    if msg.payload.len() <= MAX_PAYLOAD && (2..=65599).contains(&msg.csid) {
        encoder.encode(msg, out);
    }
}

/// Drives a new RTMP connection for a session taken over from a dead edge.
pub struct Translator {
    phase: Phase,
    conn_decoder: ChunkDecoder,
    conn_input: BytesMut,
    conn_encoder: ChunkEncoder,
    client_decoder: ChunkDecoder,
    client_input: BytesMut,
    /// Fresh: its first message on each chunk stream has a type-0 header.
    client_encoder: ChunkEncoder,
    log: Vec<RawMessage>,
    /// The log's messages sent so far.
    sent: usize,
    retained: Vec<RawMessage>,
    waits: Waits,
    /// Per stream: what the client has, updated as messages pass.
    has: BTreeMap<u32, StreamPosition>,
    /// Client bytes that came during the replay.
    queued: BytesMut,
}

impl Translator {
    /// From a journal whose handshake is done and whose log opens with `connect`.
    /// `resume`: the positions to resume from ([`Journal::resume_from`]). Returns the
    /// bytes to write to the new connection first (C0 C1).
    pub fn start(journal: &Journal, resume: &Positions) -> Result<(Translator, Bytes), TranslateError> {
        if !journal.handshake_done() {
            return Err(TranslateError::NotResumable("the client's handshake is not done"));
        }
        let log = journal.control_log().to_vec();
        if log.first().and_then(command_name).as_deref() != Some("connect") {
            return Err(TranslateError::NotResumable("the log does not open with connect"));
        }
        resume.validate().map_err(|_| TranslateError::NotResumable("invalid positions"))?;
        let (handshake, c0c1) = Handshake::client().map_err(|e| TranslateError::Handshake(e.to_string()))?;
        let mut client_encoder = ChunkEncoder::new();
        client_encoder.set_chunk_size(resume.chunk_size);
        let translator = Translator {
            phase: Phase::Handshaking(Box::new(handshake)),
            conn_decoder: ChunkDecoder::new(DecoderLimits::default()),
            conn_input: BytesMut::new(),
            conn_encoder: ChunkEncoder::new(),
            client_decoder: journal.client_decoder(),
            client_input: BytesMut::from(journal.client_input()),
            client_encoder,
            waits: Waits::default(),
            log,
            sent: 0,
            retained: journal.retained().cloned().collect(),
            has: resume.streams.clone(),
            queued: BytesMut::new(),
        };
        Ok((translator, Bytes::from(c0c1)))
    }

    /// Whether the replay is over: both ways are translated.
    pub fn replayed(&self) -> bool {
        matches!(self.phase, Phase::Live)
    }

    /// Bytes the new connection wrote. Returns the bytes to write to the connection (C2
    /// and the replay; once the replay is answered, a publisher's retained media and
    /// the client bytes queued meanwhile) and the bytes for the client.
    // `from_*` names the direction the bytes come from, not a constructor.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_server(&mut self, data: &[u8]) -> Result<(Bytes, Bytes), TranslateError> {
        let (mut to_conn, mut to_client) = (BytesMut::new(), BytesMut::new());
        match &mut self.phase {
            Phase::Handshaking(handshake) => {
                match handshake.feed(data).map_err(|e| TranslateError::Handshake(e.to_string()))? {
                    Progress::InProgress { send } => to_conn.extend_from_slice(&send),
                    Progress::Done { send, leftover } => {
                        to_conn.extend_from_slice(&send);
                        self.conn_input.extend_from_slice(&leftover);
                        self.replay(&mut to_conn);
                        self.phase = Phase::Replaying;
                        self.end_replay_if_done(&mut to_conn)?;
                    }
                }
            }
            Phase::Replaying | Phase::Live => self.conn_input.extend_from_slice(data),
        }
        while let Some(msg) = self.conn_decoder.decode(&mut self.conn_input).map_err(TranslateError::Server)? {
            match self.phase {
                Phase::Handshaking(_) => {}
                Phase::Replaying => {
                    self.answer(msg, &mut to_conn)?;
                    self.end_replay_if_done(&mut to_conn)?;
                }
                Phase::Live => self.for_client(msg, &mut to_client),
            }
        }
        Ok((to_conn.freeze(), to_client.freeze()))
    }

    /// Client bytes (a request body after the takeover): decoded with the client's
    /// chunk state, re-encoded for the connection. Queued until the replay is over.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_client(&mut self, data: &[u8]) -> Result<Bytes, TranslateError> {
        let mut out = BytesMut::new();
        if self.replayed() {
            self.client_bytes(data, &mut out)?;
        } else {
            if self.queued.len() + data.len() > MAX_QUEUED_CLIENT_BYTES {
                return Err(TranslateError::QueueFull);
            }
            self.queued.extend_from_slice(data);
        }
        Ok(out.freeze())
    }

    /// Our chunk size, then the log, re-chunked.
    fn replay(&mut self, out: &mut BytesMut) {
        let (type_id, payload) = Message::SetChunkSize(CONN_CHUNK_SIZE).encode();
        send(
            &mut self.conn_encoder,
            &RawMessage { csid: CSID_PROTOCOL, timestamp: 0, type_id, stream_id: 0, payload },
            out,
        );
        self.conn_encoder.set_chunk_size(CONN_CHUNK_SIZE);
        self.replay_more(out);
    }

    /// Sends the log on, up to and including the next message that waits for an answer.
    fn replay_more(&mut self, out: &mut BytesMut) {
        while let Some(msg) = self.log.get(self.sent) {
            self.sent += 1;
            send(&mut self.conn_encoder, msg, out);
            if self.waits.expect(msg) {
                return;
            }
        }
    }

    /// A server message during the replay: checked against what the replay waits for,
    /// then dropped (the client had it from the dead edge). Pings are answered here.
    fn answer(&mut self, msg: RawMessage, to_conn: &mut BytesMut) -> Result<(), TranslateError> {
        match Message::parse(&msg).map_err(TranslateError::ServerMessage)? {
            Message::UserControl(UserControl::PingRequest(time)) => {
                let (type_id, payload) = Message::UserControl(UserControl::PingResponse(time)).encode();
                let pong = RawMessage { csid: CSID_PROTOCOL, timestamp: 0, type_id, stream_id: 0, payload };
                send(&mut self.conn_encoder, &pong, to_conn);
                Ok(())
            }
            Message::Command { command, .. } => self.answer_command(msg.stream_id, &command),
            _ => Ok(()),
        }
    }

    fn answer_command(&mut self, stream_id: u32, command: &Command) -> Result<(), TranslateError> {
        let error = command.name == "_error";
        if command.name == "_result" || error {
            let Some(call) = self.waits.calls.remove(&command.transaction_id.to_bits()) else { return Ok(()) };
            if error && call != Call::Other {
                return Err(TranslateError::Refused(info_code(command)));
            }
            if call == Call::CreateStream {
                let expected = self.waits.created + 1;
                let got = command.args.first().and_then(Amf0Value::as_f64).unwrap_or(-1.0);
                if got != f64::from(expected) {
                    return Err(TranslateError::StreamIdMismatch { expected, got: got.max(0.0) as u32 });
                }
                self.waits.created = expected;
            }
            return Ok(());
        }
        if command.name != "onStatus" {
            return Ok(());
        }
        let Some(&start) = self.waits.starts.get(&stream_id) else { return Ok(()) };
        let code = info_code(command);
        if code == start.code() {
            self.waits.starts.remove(&stream_id);
        } else if info_level(command) == Some("error") || code.ends_with("Failed") || code.ends_with("StreamNotFound") {
            return Err(TranslateError::Refused(code));
        }
        Ok(())
    }

    /// Once what was replayed is answered: the rest of the log; once all of it is, a
    /// publisher's retained media, then the client bytes that came meanwhile, go to
    /// the connection.
    fn end_replay_if_done(&mut self, to_conn: &mut BytesMut) -> Result<(), TranslateError> {
        if !matches!(self.phase, Phase::Replaying) || !self.waits.settled() {
            return Ok(());
        }
        if self.sent < self.log.len() {
            self.replay_more(to_conn);
            return Ok(());
        }
        self.phase = Phase::Live;
        for msg in std::mem::take(&mut self.retained) {
            send(&mut self.conn_encoder, &msg, to_conn);
        }
        let queued = std::mem::take(&mut self.queued);
        self.client_bytes(&queued, to_conn)
    }

    /// The client's messages, for the connection: its Set Chunk Size and Abort are
    /// about its own chunking, which the decoder applied.
    fn client_bytes(&mut self, data: &[u8], to_conn: &mut BytesMut) -> Result<(), TranslateError> {
        self.client_input.extend_from_slice(data);
        while let Some(msg) = self.client_decoder.decode(&mut self.client_input).map_err(TranslateError::Client)? {
            if !matches!(msg.type_id, message::SET_CHUNK_SIZE | message::ABORT) {
                send(&mut self.conn_encoder, &msg, to_conn);
            }
        }
        Ok(())
    }

    /// A server message after the replay, for the client unless it has it already.
    fn for_client(&mut self, mut msg: RawMessage, to_client: &mut BytesMut) {
        match msg.type_id {
            // The connection's own: the client keeps the chunk size and window it has.
            message::SET_CHUNK_SIZE | message::ABORT | message::WINDOW_ACK_SIZE | message::SET_PEER_BANDWIDTH => return,
            // In the client's count of bytes, not the connection's.
            message::ACKNOWLEDGEMENT => {
                let sequence = self.client_decoder.bytes_consumed() as u32;
                msg.payload = Bytes::copy_from_slice(&sequence.to_be_bytes());
            }
            _ => {}
        }
        if self.client_has(Delivery::of(&msg), msg.stream_id) {
            return;
        }
        send(&mut self.client_encoder, &msg, to_client);
    }

    /// Whether the client already has what `delivery` says, updating what it has when
    /// not. Frames are compared by timestamp until one passes the position of its
    /// kind (or is too far before it to be a re-send); headers and metadata by hash.
    fn client_has(&mut self, delivery: Delivery, stream_id: u32) -> bool {
        let Some(has) = self.has.get_mut(&stream_id) else { return false };
        let same = |slot: &mut Option<u64>, hash: u64| slot.replace(hash) == Some(hash);
        match delivery {
            Delivery::SampleAccess => true,
            Delivery::Header { kind: MediaKind::Audio, hash, .. } => same(&mut has.audio_header, hash),
            Delivery::Header { kind: MediaKind::Video, hash, .. } => same(&mut has.video_header, hash),
            Delivery::Metadata { hash, .. } => same(&mut has.metadata, hash),
            Delivery::Frame { kind, timestamp, .. } => {
                let slot = if kind == MediaKind::Audio { &mut has.audio } else { &mut has.video };
                match *slot {
                    Some(at) if timestamp <= at && at - timestamp <= RESUME_SPAN_MS => true,
                    Some(_) => {
                        *slot = None;
                        false
                    }
                    None => false,
                }
            }
            Delivery::ChunkSize(_) | Delivery::Other => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::rtmpt::journal::{JournalState, Outbound, Step};
    use crate::rtmp::amf0;
    use crate::rtmp::session::{ClientConfig, ClientEvent, ClientSession, ServerConfig, ServerEvent, ServerSession};

    const REPLY: usize = 64 * 1024;

    fn video(ts: u32, key: bool) -> Bytes {
        let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        p.extend_from_slice(&ts.to_be_bytes());
        Bytes::from(p)
    }

    fn video_header() -> Bytes {
        Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1F])
    }

    fn audio(ts: u32) -> Bytes {
        let mut p = vec![0xAF, 1];
        p.extend_from_slice(&ts.to_be_bytes());
        Bytes::from(p)
    }

    fn audio_header() -> Bytes {
        Bytes::from_static(&[0xAF, 0, 0x12, 0x10])
    }

    fn metadata(set_data_frame: bool) -> Bytes {
        let mut values = vec![
            Amf0Value::String("onMetaData".into()),
            Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
        ];
        if set_data_frame {
            values.insert(0, Amf0Value::String("@setDataFrame".into()));
        }
        Bytes::from(amf0::encode_all(&values))
    }

    /// The RTMP server code behind a session's pipe: the handshake, then a sans-IO
    /// session whose driver accepts every connect, play and publish.
    struct Server {
        handshake: Option<Handshake>,
        session: ServerSession,
        events: Vec<ServerEvent>,
        /// Plays are answered `NetStream.Play.StreamNotFound`.
        not_found: bool,
    }

    impl Server {
        fn new() -> Self {
            Self {
                handshake: Some(Handshake::server()),
                session: ServerSession::new(ServerConfig::default()),
                events: Vec::new(),
                not_found: false,
            }
        }

        /// Bytes from the client side; returns what the server writes back.
        fn input(&mut self, bytes: &[u8]) -> Bytes {
            let mut out = BytesMut::new();
            let mut chunks = bytes.to_vec();
            if let Some(handshake) = &mut self.handshake {
                match handshake.feed(bytes).unwrap() {
                    Progress::InProgress { send } => {
                        out.extend_from_slice(&send);
                        return out.freeze();
                    }
                    Progress::Done { send, leftover } => {
                        out.extend_from_slice(&send);
                        chunks = leftover;
                        self.handshake = None;
                    }
                }
            }
            let events = self.session.handle_input(&chunks).unwrap();
            for event in &events {
                match *event {
                    ServerEvent::Connect { .. } => self.session.accept_connect(),
                    ServerEvent::Play { stream_id, .. } if self.not_found => {
                        self.session.play_not_found(stream_id, "x")
                    }
                    ServerEvent::Play { stream_id, .. } => self.session.accept_play(stream_id),
                    ServerEvent::Publish { stream_id, .. } => self.session.accept_publish(stream_id),
                    _ => {}
                }
            }
            self.events.extend(events);
            out.extend_from_slice(&self.session.take_output());
            out.freeze()
        }

        /// Media from the hub to a player of `stream_id`: metadata, headers, then video
        /// every 40 ms (a keyframe each second) and audio every 20 ms over `from..=to`.
        fn play_media(&mut self, stream_id: u32, from: u32, to: u32) {
            self.session.send_data(stream_id, from, metadata(false));
            self.session.send_video(stream_id, from, video_header());
            self.session.send_audio(stream_id, from, audio_header());
            for ts in (from..=to).step_by(20) {
                if ts.is_multiple_of(40) {
                    self.session.send_video(stream_id, ts, video(ts, ts.is_multiple_of(1000)));
                }
                self.session.send_audio(stream_id, ts, audio(ts));
            }
        }

        fn media(&self) -> Vec<(u8, u32)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    ServerEvent::Audio { timestamp, payload, .. } => {
                        Some((if payload[1] == 0 { b'A' } else { b'a' }, *timestamp))
                    }
                    ServerEvent::Video { timestamp, payload, .. } => {
                        Some((if payload[1] == 0 { b'V' } else { b'v' }, *timestamp))
                    }
                    ServerEvent::Data { timestamp, .. } => Some((b'd', *timestamp)),
                    _ => None,
                })
                .collect()
        }
    }

    /// A client of the tunnel: the handshake, then a sans-IO client session whose own
    /// chunk decoder keeps decoding whichever edge answers.
    struct Client {
        handshake: Option<Handshake>,
        session: ClientSession,
        pending: Vec<u8>,
        events: Vec<ClientEvent>,
    }

    impl Client {
        fn new() -> Self {
            let (handshake, c0c1) = Handshake::client().unwrap();
            Self {
                handshake: Some(handshake),
                session: ClientSession::new(ClientConfig::default()),
                pending: c0c1,
                events: Vec::new(),
            }
        }

        fn body(&mut self) -> Vec<u8> {
            let mut body = std::mem::take(&mut self.pending);
            body.extend_from_slice(&self.session.take_output());
            body
        }

        fn receive(&mut self, reply: &[u8]) {
            if let Some(handshake) = &mut self.handshake {
                if let Progress::Done { send, leftover } = handshake.feed(reply).unwrap() {
                    self.pending.extend_from_slice(&send);
                    self.handshake = None;
                    self.events.extend(self.session.handle_input(&leftover).unwrap());
                }
                return;
            }
            self.events.extend(self.session.handle_input(reply).expect("the client decodes every reply"));
        }

        fn media(&self) -> Vec<(u8, u32)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    ClientEvent::Audio { timestamp, payload, .. } => {
                        Some((if payload[1] == 0 { b'A' } else { b'a' }, *timestamp))
                    }
                    ClientEvent::Video { timestamp, payload, .. } => {
                        Some((if payload[1] == 0 { b'V' } else { b'v' }, *timestamp))
                    }
                    ClientEvent::Data { timestamp, .. } => Some((b'd', *timestamp)),
                    _ => None,
                })
                .collect()
        }
    }

    /// The edge holding the session: the server behind its pipe, the watch on its
    /// replies, and the buddy's journal, fed each step through the wire encoding.
    struct Holder {
        server: Server,
        outbound: Outbound,
        buddy: Journal,
        seq: u64,
    }

    impl Holder {
        fn new() -> Self {
            Self { server: Server::new(), outbound: Outbound::new(), buddy: Journal::new(), seq: 0 }
        }

        fn request(&mut self, body: &[u8]) -> Bytes {
            let written = self.server.input(body);
            let reply = self.outbound.take_reply(&written, REPLY).unwrap();
            let step =
                Step { seq: self.seq, body: Bytes::copy_from_slice(body), after: self.outbound.positions().clone() };
            let step = Step::decode(&step.encode().unwrap()).unwrap();
            self.buddy.apply(&step).unwrap();
            // A repeated step changes nothing.
            self.buddy.apply(&step).unwrap();
            self.seq += 1;
            reply
        }
    }

    fn exchange(client: &mut Client, holder: &mut Holder) {
        let body = client.body();
        let reply = holder.request(&body);
        client.receive(&reply);
    }

    /// Connects, creates a stream and plays or publishes it through the holder.
    fn open(client: &mut Client, holder: &mut Holder, publish: bool) -> u32 {
        exchange(client, holder);
        client.session.connect("live", "rtmpt://edge/live").unwrap();
        exchange(client, holder);
        exchange(client, holder);
        assert!(client.events.contains(&ClientEvent::Connected), "{:?}", client.events);
        client.session.create_stream().unwrap();
        exchange(client, holder);
        let stream_id = 1;
        assert!(client.events.contains(&ClientEvent::StreamCreated { stream_id }));
        if publish {
            client.session.publish(stream_id, "x").unwrap();
            exchange(client, holder);
            assert!(client.events.contains(&ClientEvent::PublishStarted { stream_id }));
        } else {
            client.session.play(stream_id, "x").unwrap();
            exchange(client, holder);
            assert!(client.events.contains(&ClientEvent::PlayStarted { stream_id }));
        }
        stream_id
    }

    /// The buddy's journal as a new buddy would get it: through a full copy.
    fn full_copy(journal: &Journal) -> Journal {
        let state = JournalState::decode(&journal.snapshot().encode().unwrap()).unwrap();
        Journal::restore(state).unwrap()
    }

    /// Runs the translator against a new server until neither has more to say.
    /// Returns the bytes for the client.
    fn pump(translator: &mut Translator, server: &mut Server, mut to_server: Bytes) -> BytesMut {
        let mut to_client = BytesMut::new();
        for _ in 0..32 {
            let written = server.input(&to_server);
            let (conn, client) = translator.from_server(&written).unwrap();
            to_client.extend_from_slice(&client);
            if conn.is_empty() && written.is_empty() {
                return to_client;
            }
            to_server = conn;
        }
        panic!("the translator and the server keep talking");
    }

    fn starts(events: &[ClientEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, ClientEvent::PlayStarted { .. } | ClientEvent::PublishStarted { .. }))
            .count()
    }

    /// A player taken over mid-stream: after a fresh request (it has every reply) or
    /// a repeat (its last reply was lost).
    fn player_takeover(lost_last_reply: bool) {
        let (mut client, mut holder) = (Client::new(), Holder::new());
        let stream_id = open(&mut client, &mut holder, false);
        holder.server.play_media(stream_id, 0, 1000);
        exchange(&mut client, &mut holder);
        holder.server.play_media(stream_id, 1020, 1500);
        let body = client.body();
        let reply = holder.request(&body);
        if !lost_last_reply {
            client.receive(&reply);
        }
        let had = client.media();
        let last = |kind| had.iter().filter(|(k, _)| *k == kind).map(|&(_, ts)| ts).max().unwrap();
        let (last_audio, last_video) = (last(b'a'), last(b'v'));
        assert_eq!((last_audio, last_video), if lost_last_reply { (1000, 1000) } else { (1500, 1480) });

        // The holder dies. The next request reaches its buddy: a fresh one, or the
        // repeat of the one whose reply was lost.
        let journal = full_copy(&holder.buddy);
        let seq = if lost_last_reply { holder.seq - 1 } else { holder.seq };
        let resume = journal.resume_from(seq).unwrap().clone();
        assert_eq!(resume.resume_points()[&stream_id].video, Some(last_video));
        assert_eq!(resume.chunk_size, 4096);
        let (mut translator, c0c1) = Translator::start(&journal, &resume).unwrap();
        let mut server = Server::new();
        let mut outbound = Outbound::resumed(resume).unwrap();
        let replayed = pump(&mut translator, &mut server, c0c1);
        assert!(translator.replayed());
        assert!(replayed.is_empty(), "the replay's answers are the dead edge's business");
        let before = client.events.len();

        // Its hub starts a little before where the client was (the GOP at 1000).
        server.play_media(stream_id, 1000, 2000);
        let (_, to_client) = translator.from_server(&server.session.take_output()).unwrap();
        let reply = outbound.take_reply(&to_client, REPLY).unwrap();
        assert_eq!(outbound.pending(), 0);
        client.receive(&reply);

        let after: Vec<(u8, u32)> = client.media()[had.len()..].to_vec();
        let expected: Vec<(u8, u32)> = (1000..=2000)
            .step_by(20)
            .flat_map(|ts: u32| {
                let v = (ts.is_multiple_of(40) && ts > last_video).then_some((b'v', ts));
                let a = (ts > last_audio).then_some((b'a', ts));
                v.into_iter().chain(a)
            })
            .collect();
        assert_eq!(after, expected, "media strictly after the positions, once, in order; no header nor metadata again");
        assert_eq!(starts(&client.events), 1, "no second Play.Start");
        assert!(
            !client.events[before..].iter().any(|e| matches!(e, ClientEvent::Status { .. })),
            "{:?}",
            &client.events[before..]
        );
        assert_eq!(outbound.positions().streams[&stream_id].video, Some(2000));

        // The client goes on with its own chunk state: a createStream compressed
        // against what it sent the dead edge reaches the new server and is answered.
        client.session.create_stream().unwrap();
        let to_server = translator.from_client(&client.body()).unwrap();
        let written = server.input(&to_server);
        let (_, to_client) = translator.from_server(&written).unwrap();
        client.receive(&outbound.take_reply(&to_client, REPLY).unwrap());
        assert_eq!(client.events.last(), Some(&ClientEvent::StreamCreated { stream_id: 2 }));
    }

    #[test]
    fn a_player_taken_over_after_a_fresh_request_gets_only_what_it_lacks() {
        player_takeover(false);
    }

    #[test]
    fn a_player_taken_over_after_a_lost_reply_gets_that_reply_s_media_again() {
        player_takeover(true);
    }

    #[test]
    fn a_publisher_taken_over_sends_its_retained_media_then_its_next_bytes() {
        let (mut client, mut holder) = (Client::new(), Holder::new());
        let stream_id = open(&mut client, &mut holder, true);
        let send_media = |client: &mut Client, from: u32, to: u32| {
            for ts in (from..=to).step_by(40) {
                client.session.send_video(stream_id, ts, video(ts, ts.is_multiple_of(1000))).unwrap();
                client.session.send_audio(stream_id, ts, audio(ts)).unwrap();
            }
        };
        client.session.send_data(stream_id, 0, metadata(true)).unwrap();
        client.session.send_video(stream_id, 0, video_header()).unwrap();
        client.session.send_audio(stream_id, 0, audio_header()).unwrap();
        for second in 0..4 {
            send_media(&mut client, second * 1000, second * 1000 + 960);
            exchange(&mut client, &mut holder);
        }
        send_media(&mut client, 4000, 4000);
        exchange(&mut client, &mut holder);

        let journal = full_copy(&holder.buddy);
        let resume = journal.resume_from(holder.seq).unwrap().clone();
        let (mut translator, c0c1) = Translator::start(&journal, &resume).unwrap();
        // The client's next body comes with the request that reaches the buddy.
        send_media(&mut client, 4040, 4200);
        assert!(translator.from_client(&client.body()).unwrap().is_empty(), "queued during the replay");
        let mut server = Server::new();
        let to_client = pump(&mut translator, &mut server, c0c1);
        assert!(to_client.is_empty());

        let publishes = server.events.iter().filter(|e| matches!(e, ServerEvent::Publish { .. })).count();
        assert_eq!(publishes, 1);
        // Headers and metadata first, then back to the keyframe at least 3 s old (1000),
        // then the client's next frames.
        let mut expected = vec![(b'd', 0), (b'V', 0), (b'A', 0)];
        for ts in (1000..=4200).step_by(40) {
            expected.extend([(b'v', ts), (b'a', ts)]);
        }
        assert_eq!(server.media(), expected);
        assert_eq!(starts(&client.events), 1, "no second Publish.Start");
    }

    #[test]
    fn a_refused_replay_is_an_error() {
        let (mut client, mut holder) = (Client::new(), Holder::new());
        open(&mut client, &mut holder, false);
        let journal = full_copy(&holder.buddy);
        let resume = journal.resume_from(holder.seq).unwrap().clone();
        let (mut translator, c0c1) = Translator::start(&journal, &resume).unwrap();
        // This server does not know the stream any more.
        let mut server = Server { not_found: true, ..Server::new() };
        let mut to_server = c0c1;
        let result = loop {
            let written = server.input(&to_server);
            match translator.from_server(&written) {
                Ok((conn, _)) if !conn.is_empty() || !written.is_empty() => to_server = conn,
                other => break other,
            }
        };
        assert_eq!(result, Err(TranslateError::Refused("NetStream.Play.StreamNotFound".into())));
    }

    #[test]
    fn a_journal_without_connect_or_handshake_is_not_resumable() {
        let journal = Journal::new();
        let start = Translator::start(&journal, &Positions::default()).map(|_| ());
        assert_eq!(start, Err(TranslateError::NotResumable("the client's handshake is not done")));
    }

    #[test]
    fn hostile_server_bytes_are_errors_not_panics() {
        let (mut client, mut holder) = (Client::new(), Holder::new());
        open(&mut client, &mut holder, false);
        let journal = full_copy(&holder.buddy);
        let resume = journal.resume_from(holder.seq).unwrap().clone();
        for seed in 0..50u32 {
            let (mut translator, c0c1) = Translator::start(&journal, &resume).unwrap();
            let mut server = Server::new();
            let _ = pump(&mut translator, &mut server, c0c1);
            let junk: Vec<u8> =
                (0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 13) as u8).collect();
            for piece in junk.chunks(1 + seed as usize * 13) {
                if translator.from_server(piece).is_err() || translator.from_client(piece).is_err() {
                    break;
                }
            }
        }
    }
}
