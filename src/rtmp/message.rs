//! RTMP messages: the typed view of a [`RawMessage`]'s payload, and back.
//!
//! Protocol control, user control, commands (AMF0, and AMF3's envelope of type 17),
//! data, audio, video, shared-object and aggregate messages. Media and data payloads
//! stay `Bytes` shared with the receive buffer; only commands are decoded into values.
//! Knows nothing of chunking (see `chunk`) or of what a session does with a message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::amf0::{self, Amf0Error, Amf0Value};
use super::chunk::RawMessage;

pub(crate) const SET_CHUNK_SIZE: u8 = 1;
pub(crate) const ABORT: u8 = 2;
pub(crate) const ACKNOWLEDGEMENT: u8 = 3;
pub(crate) const USER_CONTROL: u8 = 4;
pub(crate) const WINDOW_ACK_SIZE: u8 = 5;
pub(crate) const SET_PEER_BANDWIDTH: u8 = 6;
pub(crate) const AUDIO: u8 = 8;
pub(crate) const VIDEO: u8 = 9;
pub(crate) const DATA_AMF3: u8 = 15;
pub(crate) const SHARED_OBJECT_AMF3: u8 = 16;
pub(crate) const COMMAND_AMF3: u8 = 17;
pub(crate) const DATA_AMF0: u8 = 18;
pub(crate) const SHARED_OBJECT_AMF0: u8 = 19;
pub(crate) const COMMAND_AMF0: u8 = 20;
pub(crate) const AGGREGATE: u8 = 22;

/// A user control event (message type 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength {
        stream_id: u32,
        millis: u32,
    },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    /// An event type we do not interpret, kept as is.
    Other {
        event: u16,
        data: Bytes,
    },
}

/// A command: `name`, transaction id, command object, then arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub(crate) name: String,
    pub(crate) transaction_id: f64,
    /// Usually an object, or null.
    pub(crate) object: Amf0Value,
    pub(crate) args: Vec<Amf0Value>,
}

/// A typed RTMP message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    SetChunkSize(u32),
    Abort {
        csid: u32,
    },
    Acknowledgement {
        sequence: u32,
    },
    UserControl(UserControl),
    WindowAckSize(u32),
    SetPeerBandwidth {
        size: u32,
        limit_type: u8,
    },
    Audio(Bytes),
    Video(Bytes),
    /// A data message (`@setDataFrame`, `onMetaData`, `onCuePoint`, …): AMF0 bytes,
    /// relayed intact. `amf3` when it came as type 15 (an AMF3 envelope).
    Data {
        payload: Bytes,
        amf3: bool,
    },
    Command {
        command: Command,
        amf3: bool,
    },
    /// Shared-object message body, parsed by the shared-object layer.
    SharedObject {
        payload: Bytes,
        amf3: bool,
    },
    Aggregate(Bytes),
    /// A message type RTMP does not define; ignored by sessions.
    Unknown {
        type_id: u8,
        payload: Bytes,
    },
}

/// A message that does not parse. The session answers with an error status or closes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// A fixed-size control message with the wrong payload length.
    #[error("message type {type_id} needs {expected} bytes, got {got}")]
    BadLength { type_id: u8, expected: usize, got: usize },
    /// A command whose AMF does not decode.
    #[error("invalid AMF in a command: {0}")]
    Amf(#[from] Amf0Error),
    /// A command without its name or transaction id.
    #[error("a command must start with its name and transaction id")]
    BadCommand,
}

fn fixed<const N: usize>(type_id: u8, payload: &Bytes) -> Result<[u8; N], MessageError> {
    payload.as_ref().try_into().map_err(|_| MessageError::BadLength { type_id, expected: N, got: payload.len() })
}

/// Strips the single leading format byte of an AMF3 envelope (types 15 and 17), which
/// carries AMF0 values as far as RTMP servers are concerned.
fn amf3_body(payload: &Bytes) -> Bytes {
    if payload.first() == Some(&0) {
        payload.slice(1..)
    } else {
        payload.clone()
    }
}

impl Message {
    /// Parses a raw message.
    pub fn parse(raw: &RawMessage) -> Result<Message, MessageError> {
        let p = &raw.payload;
        let t = raw.type_id;
        Ok(match t {
            SET_CHUNK_SIZE => Message::SetChunkSize(u32::from_be_bytes(fixed(t, p)?) & 0x7FFF_FFFF),
            ABORT => Message::Abort { csid: u32::from_be_bytes(fixed(t, p)?) },
            ACKNOWLEDGEMENT => Message::Acknowledgement { sequence: u32::from_be_bytes(fixed(t, p)?) },
            WINDOW_ACK_SIZE => Message::WindowAckSize(u32::from_be_bytes(fixed(t, p)?)),
            SET_PEER_BANDWIDTH => {
                let b: [u8; 5] = fixed(t, p)?;
                Message::SetPeerBandwidth { size: u32::from_be_bytes([b[0], b[1], b[2], b[3]]), limit_type: b[4] }
            }
            USER_CONTROL => Message::UserControl(parse_user_control(p)?),
            AUDIO => Message::Audio(p.clone()),
            VIDEO => Message::Video(p.clone()),
            DATA_AMF0 => Message::Data { payload: p.clone(), amf3: false },
            DATA_AMF3 => Message::Data { payload: amf3_body(p), amf3: true },
            COMMAND_AMF0 => Message::Command { command: parse_command(p)?, amf3: false },
            COMMAND_AMF3 => Message::Command { command: parse_command(&amf3_body(p))?, amf3: true },
            SHARED_OBJECT_AMF0 => Message::SharedObject { payload: p.clone(), amf3: false },
            SHARED_OBJECT_AMF3 => Message::SharedObject { payload: amf3_body(p), amf3: true },
            AGGREGATE => Message::Aggregate(p.clone()),
            _ => Message::Unknown { type_id: t, payload: p.clone() },
        })
    }

    /// The message type id and payload this message is sent as. Commands and data are
    /// sent as AMF0 (types 20 and 18) unless they arrived as AMF3 envelopes.
    pub(crate) fn encode(&self) -> (u8, Bytes) {
        let word = |t: u8, v: u32| (t, Bytes::copy_from_slice(&v.to_be_bytes()));
        match self {
            Message::SetChunkSize(n) => word(SET_CHUNK_SIZE, *n & 0x7FFF_FFFF),
            Message::Abort { csid } => word(ABORT, *csid),
            Message::Acknowledgement { sequence } => word(ACKNOWLEDGEMENT, *sequence),
            Message::WindowAckSize(n) => word(WINDOW_ACK_SIZE, *n),
            Message::SetPeerBandwidth { size, limit_type } => {
                let mut b = BytesMut::with_capacity(5);
                b.put_u32(*size);
                b.put_u8(*limit_type);
                (SET_PEER_BANDWIDTH, b.freeze())
            }
            Message::UserControl(uc) => (USER_CONTROL, encode_user_control(uc)),
            Message::Audio(p) => (AUDIO, p.clone()),
            Message::Video(p) => (VIDEO, p.clone()),
            Message::Data { payload, amf3: false } => (DATA_AMF0, payload.clone()),
            Message::Data { payload, amf3: true } => (DATA_AMF3, envelope(payload)),
            Message::Command { command, amf3 } => {
                let mut values = vec![
                    Amf0Value::String(command.name.clone()),
                    Amf0Value::Number(command.transaction_id),
                    command.object.clone(),
                ];
                values.extend(command.args.iter().cloned());
                let body = Bytes::from(amf0::encode_all(&values));
                if *amf3 {
                    (COMMAND_AMF3, envelope(&body))
                } else {
                    (COMMAND_AMF0, body)
                }
            }
            Message::SharedObject { payload, amf3: false } => (SHARED_OBJECT_AMF0, payload.clone()),
            Message::SharedObject { payload, amf3: true } => (SHARED_OBJECT_AMF3, envelope(payload)),
            Message::Aggregate(p) => (AGGREGATE, p.clone()),
            Message::Unknown { type_id, payload } => (*type_id, payload.clone()),
        }
    }
}

fn envelope(body: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 1);
    b.put_u8(0);
    b.put_slice(body);
    b.freeze()
}

fn parse_command(payload: &Bytes) -> Result<Command, MessageError> {
    let mut values = amf0::decode_all(payload)?.into_iter();
    let name = match values.next() {
        Some(Amf0Value::String(s) | Amf0Value::LongString(s)) => s,
        _ => return Err(MessageError::BadCommand),
    };
    // Some clients omit the transaction id of notifications; treat absent as 0.
    let transaction_id = match values.next() {
        Some(Amf0Value::Number(n)) => n,
        None => 0.0,
        Some(_) => return Err(MessageError::BadCommand),
    };
    let object = values.next().unwrap_or(Amf0Value::Null);
    Ok(Command { name, transaction_id, object, args: values.collect() })
}

fn parse_user_control(payload: &Bytes) -> Result<UserControl, MessageError> {
    let short = || MessageError::BadLength { type_id: USER_CONTROL, expected: 6, got: payload.len() };
    if payload.len() < 2 {
        return Err(short());
    }
    let mut p = payload.clone();
    let event = p.get_u16();
    let word = |p: &mut Bytes| if p.len() >= 4 { Ok(p.get_u32()) } else { Err(short()) };
    Ok(match event {
        0 => UserControl::StreamBegin(word(&mut p)?),
        1 => UserControl::StreamEof(word(&mut p)?),
        2 => UserControl::StreamDry(word(&mut p)?),
        3 => {
            let stream_id = word(&mut p)?;
            let millis = word(&mut p).map_err(|_| MessageError::BadLength {
                type_id: USER_CONTROL,
                expected: 10,
                got: payload.len(),
            })?;
            UserControl::SetBufferLength { stream_id, millis }
        }
        4 => UserControl::StreamIsRecorded(word(&mut p)?),
        6 => UserControl::PingRequest(word(&mut p)?),
        7 => UserControl::PingResponse(word(&mut p)?),
        event => UserControl::Other { event, data: p },
    })
}

fn encode_user_control(uc: &UserControl) -> Bytes {
    let mut b = BytesMut::with_capacity(10);
    let (event, words): (u16, Vec<u32>) = match uc {
        UserControl::StreamBegin(s) => (0, vec![*s]),
        UserControl::StreamEof(s) => (1, vec![*s]),
        UserControl::StreamDry(s) => (2, vec![*s]),
        UserControl::SetBufferLength { stream_id, millis } => (3, vec![*stream_id, *millis]),
        UserControl::StreamIsRecorded(s) => (4, vec![*s]),
        UserControl::PingRequest(t) => (6, vec![*t]),
        UserControl::PingResponse(t) => (7, vec![*t]),
        UserControl::Other { event, data } => {
            b.put_u16(*event);
            b.put_slice(data);
            return b.freeze();
        }
    };
    b.put_u16(event);
    for w in words {
        b.put_u32(w);
    }
    b.freeze()
}

/// If `payload` (an AMF0 data message) starts with `@setDataFrame`, the bytes after
/// that first value: what players receive (e.g. `onMetaData`, {…}), otherwise untouched.
pub(crate) fn strip_set_data_frame(payload: &Bytes) -> Bytes {
    let mut rest: &[u8] = payload;
    match amf0::decode(&mut rest) {
        Ok(Amf0Value::String(name)) if name == "@setDataFrame" => payload.slice(payload.len() - rest.len()..),
        _ => payload.clone(),
    }
}

/// The name of a data message (`onMetaData`, `onCuePoint`, …), if its first value is a
/// string.
pub(crate) fn data_name(payload: &[u8]) -> Option<String> {
    let mut rest = payload;
    match amf0::decode(&mut rest) {
        Ok(Amf0Value::String(s)) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(type_id: u8, payload: &[u8]) -> RawMessage {
        RawMessage { csid: 3, timestamp: 0, type_id, stream_id: 0, payload: Bytes::copy_from_slice(payload) }
    }

    fn round_trip(m: Message) {
        let (type_id, payload) = m.encode();
        assert_eq!(Message::parse(&raw(type_id, &payload)).unwrap(), m);
    }

    #[test]
    fn control_messages_round_trip() {
        round_trip(Message::SetChunkSize(4096));
        round_trip(Message::Abort { csid: 4 });
        round_trip(Message::Acknowledgement { sequence: 5_000_000 });
        round_trip(Message::WindowAckSize(2_500_000));
        round_trip(Message::SetPeerBandwidth { size: 2_500_000, limit_type: 2 });
        for uc in [
            UserControl::StreamBegin(1),
            UserControl::StreamEof(1),
            UserControl::StreamDry(1),
            UserControl::SetBufferLength { stream_id: 1, millis: 3000 },
            UserControl::StreamIsRecorded(1),
            UserControl::PingRequest(77),
            UserControl::PingResponse(77),
            UserControl::Other { event: 31, data: Bytes::from_static(b"xy") },
        ] {
            round_trip(Message::UserControl(uc));
        }
    }

    #[test]
    fn commands_parse_in_amf0_and_in_the_amf3_envelope() {
        let cmd = Command {
            name: "connect".into(),
            transaction_id: 1.0,
            object: Amf0Value::object([("app", Amf0Value::String("live".into()))]),
            args: vec![Amf0Value::Null],
        };
        round_trip(Message::Command { command: cmd.clone(), amf3: false });
        round_trip(Message::Command { command: cmd.clone(), amf3: true });
        let (t, p) = Message::Command { command: cmd, amf3: true }.encode();
        assert_eq!((t, p[0]), (COMMAND_AMF3, 0));
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert!(matches!(Message::parse(&raw(SET_CHUNK_SIZE, &[0, 1])), Err(MessageError::BadLength { .. })));
        assert!(matches!(Message::parse(&raw(USER_CONTROL, &[0])), Err(MessageError::BadLength { .. })));
        assert!(matches!(Message::parse(&raw(USER_CONTROL, &[0, 3, 0, 0, 0, 1])), Err(MessageError::BadLength { .. })));
        assert_eq!(Message::parse(&raw(COMMAND_AMF0, &[0x05])), Err(MessageError::BadCommand));
        assert!(matches!(Message::parse(&raw(COMMAND_AMF0, &[0x02, 0, 9, b'x'])), Err(MessageError::Amf(_))));
        assert!(matches!(Message::parse(&raw(99, b"?")), Ok(Message::Unknown { type_id: 99, .. })));
    }

    #[test]
    fn set_data_frame_is_stripped_and_the_rest_kept_intact() {
        let meta = amf0::encode_all(&[
            Amf0Value::String("onMetaData".into()),
            Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
        ]);
        let mut with = amf0::encode_all(&[Amf0Value::String("@setDataFrame".into())]);
        with.extend_from_slice(&meta);
        assert_eq!(strip_set_data_frame(&Bytes::from(with)), Bytes::from(meta.clone()));
        assert_eq!(strip_set_data_frame(&Bytes::from(meta.clone())), Bytes::from(meta.clone()));
        assert_eq!(data_name(&meta).as_deref(), Some("onMetaData"));
    }
}
