//! Shared-object messages (RTMP message types 19 and 16), sans-IO: bytes to a typed
//! [`SoMessage`] and back.
//!
//! The RTMP specification names the fields; the byte layout below is the one Red5's and
//! crtmpserver's encoders write, which Flash Player speaks:
//!
//! ```text
//! name          u16 length + UTF-8 (no AMF marker)
//! version       u32
//! flags         u32 (2 = persistent, 0 = temporary), then u32 reserved (0)
//! events        until the end of the message, each:
//!   type u8, length u32, then `length` bytes of data:
//!     1 use, 2 release, 8 clear, 11 use success ........ no data
//!     3 request change, 4 change ........................ key (u16 string) + one AMF0 value
//!     5 success, 9 remove, 10 request remove ............ key (u16 string)
//!     6 send message .................................... AMF0 values: handler name, then arguments
//!     7 status .......................................... code (u16 string), level (u16 string)
//! ```
//!
//! Type 16 adds one format byte in front, which `message` strips and adds back; the rest
//! is the same, with AMF0 values.
//!
//! Every length is checked against the bytes that are really there and every event's
//! data must be consumed exactly: a message that does not parse is an error for the
//! session to answer, never a panic. Knows nothing of objects' state or the cluster.

use super::amf0::{self, Amf0Error, Amf0Value};

/// Most events one message may carry; Flash sends a handful.
pub(crate) const MAX_EVENTS: usize = 1024;
/// The persistence flag of a persistent object.
const PERSISTENT_FLAG: u32 = 2;

/// Event type bytes.
mod kind {
    pub(crate) const USE: u8 = 1;
    pub(crate) const RELEASE: u8 = 2;
    pub(crate) const REQUEST_CHANGE: u8 = 3;
    pub(crate) const CHANGE: u8 = 4;
    pub(crate) const SUCCESS: u8 = 5;
    pub(crate) const SEND_MESSAGE: u8 = 6;
    pub(crate) const STATUS: u8 = 7;
    pub(crate) const CLEAR: u8 = 8;
    pub(crate) const REMOVE: u8 = 9;
    pub(crate) const REQUEST_REMOVE: u8 = 10;
    pub(crate) const USE_SUCCESS: u8 = 11;
}

/// One shared-object message: which object, its version and persistence, and events.
#[derive(Debug, Clone, PartialEq)]
pub struct SoMessage {
    pub name: String,
    /// The object's version as the sender knows it (the replicated version, truncated
    /// to 32 bits, in messages from the server).
    pub version: u32,
    pub persistent: bool,
    pub events: Vec<SoEvent>,
}

/// A shared-object event. The first five come from clients, the rest from servers;
/// `SendMessage` goes both ways.
#[derive(Debug, Clone, PartialEq)]
pub enum SoEvent {
    /// Subscribe to the object (and create it if needed).
    Use,
    /// Unsubscribe.
    Release,
    /// Set `key` to `value`.
    RequestChange { key: String, value: Amf0Value },
    /// Delete `key`.
    RequestRemove { key: String },
    /// Broadcast: the handler name and its arguments, kept as AMF0 values.
    SendMessage { handler: String, args: Vec<Amf0Value> },
    /// `key` is now `value`.
    Change { key: String, value: Amf0Value },
    /// The receiver's own change of `key` was accepted.
    Success { key: String },
    /// `key` was deleted.
    Remove { key: String },
    /// Every slot was deleted (also sent before a full resynchronization).
    Clear,
    /// The use succeeded; the object's slots follow as changes.
    UseSuccess,
    /// An error or warning about the object, e.g. `SharedObject.LimitExceeded`.
    Status { code: String, level: String },
}

/// Why a shared-object message does not parse.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SoError {
    #[error("shared-object message truncated in {0}")]
    Truncated(&'static str),
    #[error("unknown shared-object event type {0}")]
    UnknownEvent(u8),
    #[error("shared-object event type {kind} announces {announced} bytes of data but holds {used}")]
    BadLength { kind: u8, announced: usize, used: usize },
    #[error("shared-object message carries more than {MAX_EVENTS} events")]
    TooManyEvents,
    #[error("a send-message event must start with its handler name")]
    NoHandler,
    #[error("invalid AMF0 in a shared-object event: {0}")]
    Amf(#[from] Amf0Error),
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], SoError> {
    let (head, rest) = buf.split_at_checked(n).ok_or(SoError::Truncated(what))?;
    *buf = rest;
    Ok(head)
}

fn read_u32(buf: &mut &[u8], what: &'static str) -> Result<u32, SoError> {
    let bytes = take(buf, 4, what)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn read_key(buf: &mut &[u8]) -> Result<String, SoError> {
    amf0::read_short_str(buf, "a slot name").map_err(|e| match e {
        Amf0Error::Truncated(what) => SoError::Truncated(what),
        other => SoError::Amf(other),
    })
}

/// Parses the body of a shared-object message (type 19, or type 16 after its format byte).
pub fn decode(body: &[u8]) -> Result<SoMessage, SoError> {
    let mut buf = body;
    let name = amf0::read_short_str(&mut buf, "the object name").map_err(|e| match e {
        Amf0Error::Truncated(what) => SoError::Truncated(what),
        other => SoError::Amf(other),
    })?;
    let version = read_u32(&mut buf, "the version")?;
    let flags = read_u32(&mut buf, "the flags")?;
    read_u32(&mut buf, "the reserved field")?;
    let mut events = Vec::new();
    while !buf.is_empty() {
        if events.len() == MAX_EVENTS {
            return Err(SoError::TooManyEvents);
        }
        let kind = take(&mut buf, 1, "an event type")?[0];
        let announced = read_u32(&mut buf, "an event length")? as usize;
        let mut data = take(&mut buf, announced, "an event's data")?;
        let event = decode_event(kind, &mut data)?;
        if !data.is_empty() {
            return Err(SoError::BadLength { kind, announced, used: announced - data.len() });
        }
        events.push(event);
    }
    Ok(SoMessage { name, version, persistent: flags == PERSISTENT_FLAG, events })
}

fn decode_event(kind: u8, data: &mut &[u8]) -> Result<SoEvent, SoError> {
    Ok(match kind {
        kind::USE => SoEvent::Use,
        kind::RELEASE => SoEvent::Release,
        kind::CLEAR => SoEvent::Clear,
        kind::USE_SUCCESS => SoEvent::UseSuccess,
        kind::REQUEST_CHANGE | kind::CHANGE => {
            let key = read_key(data)?;
            let value = amf0::decode(data)?;
            if kind == kind::CHANGE {
                SoEvent::Change { key, value }
            } else {
                SoEvent::RequestChange { key, value }
            }
        }
        kind::SUCCESS => SoEvent::Success { key: read_key(data)? },
        kind::REMOVE => SoEvent::Remove { key: read_key(data)? },
        kind::REQUEST_REMOVE => SoEvent::RequestRemove { key: read_key(data)? },
        kind::SEND_MESSAGE => {
            let mut values = amf0::decode_all(data)?.into_iter();
            *data = &[];
            let handler = match values.next() {
                Some(Amf0Value::String(s) | Amf0Value::LongString(s)) => s,
                _ => return Err(SoError::NoHandler),
            };
            SoEvent::SendMessage { handler, args: values.collect() }
        }
        kind::STATUS => {
            let code = read_key(data)?;
            let level = read_key(data)?;
            SoEvent::Status { code, level }
        }
        other => return Err(SoError::UnknownEvent(other)),
    })
}

/// Encodes `msg` as the body of a shared-object message.
pub fn encode(msg: &SoMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    amf0::write_short_str(&msg.name, &mut out);
    out.extend_from_slice(&msg.version.to_be_bytes());
    out.extend_from_slice(&(if msg.persistent { PERSISTENT_FLAG } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    for event in &msg.events {
        encode_event(event, &mut out);
    }
    out
}

fn encode_event(event: &SoEvent, out: &mut Vec<u8>) {
    let (kind, data) = match event {
        SoEvent::Use => (kind::USE, Vec::new()),
        SoEvent::Release => (kind::RELEASE, Vec::new()),
        SoEvent::Clear => (kind::CLEAR, Vec::new()),
        SoEvent::UseSuccess => (kind::USE_SUCCESS, Vec::new()),
        SoEvent::RequestChange { key, value } | SoEvent::Change { key, value } => {
            let mut data = Vec::new();
            amf0::write_short_str(key, &mut data);
            amf0::encode(value, &mut data);
            let kind = if matches!(event, SoEvent::Change { .. }) { kind::CHANGE } else { kind::REQUEST_CHANGE };
            (kind, data)
        }
        SoEvent::Success { key } | SoEvent::Remove { key } | SoEvent::RequestRemove { key } => {
            let mut data = Vec::new();
            amf0::write_short_str(key, &mut data);
            let kind = match event {
                SoEvent::Success { .. } => kind::SUCCESS,
                SoEvent::Remove { .. } => kind::REMOVE,
                _ => kind::REQUEST_REMOVE,
            };
            (kind, data)
        }
        SoEvent::SendMessage { handler, args } => {
            let mut data = Vec::new();
            amf0::encode(&Amf0Value::String(handler.clone()), &mut data);
            for arg in args {
                amf0::encode(arg, &mut data);
            }
            (kind::SEND_MESSAGE, data)
        }
        SoEvent::Status { code, level } => {
            let mut data = Vec::new();
            amf0::write_short_str(code, &mut data);
            amf0::write_short_str(level, &mut data);
            (kind::STATUS, data)
        }
    };
    out.push(kind);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_event() -> Vec<SoEvent> {
        vec![
            SoEvent::Use,
            SoEvent::Release,
            SoEvent::RequestChange { key: "x".into(), value: Amf0Value::Number(1.5) },
            SoEvent::RequestRemove { key: "x".into() },
            SoEvent::SendMessage { handler: "chat".into(), args: vec![Amf0Value::String("hi".into())] },
            SoEvent::Change {
                key: "poll".into(),
                value: Amf0Value::Object(vec![("yes".into(), Amf0Value::Number(3.0))]),
            },
            SoEvent::Success { key: "x".into() },
            SoEvent::Remove { key: "x".into() },
            SoEvent::Clear,
            SoEvent::UseSuccess,
            SoEvent::Status { code: "SharedObject.LimitExceeded".into(), level: "error".into() },
        ]
    }

    #[test]
    fn every_event_round_trips() {
        let msg = SoMessage { name: "room".into(), version: 7, persistent: true, events: every_event() };
        assert_eq!(decode(&encode(&msg)).unwrap(), msg);
    }

    #[test]
    fn byte_layout_matches_red5() {
        // A client's use of temporary "so" followed by a change request of a = 1.0,
        // written out by hand from the layout Red5's encoder produces.
        let mut bytes = vec![0, 2, b's', b'o', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&[1, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[3, 0, 0, 0, 12, 0, 1, b'a', 0]);
        bytes.extend_from_slice(&1.0f64.to_be_bytes());
        let msg = decode(&bytes).unwrap();
        assert_eq!(msg.name, "so");
        assert!(!msg.persistent);
        assert_eq!(
            msg.events,
            vec![SoEvent::Use, SoEvent::RequestChange { key: "a".into(), value: Amf0Value::Number(1.0) }]
        );
        assert_eq!(encode(&msg), bytes);
        // Persistent flag is 2; status is code then level.
        let status = SoMessage {
            name: "so".into(),
            version: 1,
            persistent: true,
            events: vec![SoEvent::Status { code: "C".into(), level: "error".into() }],
        };
        let enc = encode(&status);
        assert_eq!(&enc[4..16], &[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(&enc[16..], &[7, 0, 0, 0, 10, 0, 1, b'C', 0, 5, b'e', b'r', b'r', b'o', b'r']);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = encode(&SoMessage {
            name: "o".into(),
            version: 0,
            persistent: false,
            events: vec![SoEvent::RequestChange { key: "k".into(), value: Amf0Value::Boolean(true) }],
        });
        // Every truncation fails cleanly, except right after the header (no events).
        for cut in (0..good.len()).filter(|&cut| cut != 15) {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // An event length longer than its data is right, but shorter leaves bytes over.
        let mut long = good.clone();
        long[19] += 1; // the low byte of the first event's length (type at 15, length 16..20)
        long.push(0);
        assert!(matches!(decode(&long), Err(SoError::BadLength { .. }) | Err(SoError::Truncated(_))));
        let mut unknown = good.clone();
        unknown[15] = 42;
        assert_eq!(decode(&unknown), Err(SoError::UnknownEvent(42)));
        let mut bad_amf = good.clone();
        let last = bad_amf.len() - 2;
        bad_amf[last] = 0x42; // the value's marker
        assert!(matches!(decode(&bad_amf), Err(SoError::Amf(_))));
        let no_handler = SoMessage {
            name: "o".into(),
            version: 0,
            persistent: false,
            events: vec![SoEvent::SendMessage { handler: String::new(), args: vec![] }],
        };
        let mut bytes = encode(&no_handler);
        let n = bytes.len();
        bytes[n - 3] = 0x05; // handler replaced by null; length stays 3: null + 2 bytes over
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn too_many_events_is_an_error() {
        let msg =
            SoMessage { name: "o".into(), version: 0, persistent: false, events: vec![SoEvent::Use; MAX_EVENTS + 1] };
        assert_eq!(decode(&encode(&msg)), Err(SoError::TooManyEvents));
    }
}
