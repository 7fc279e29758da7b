//! AMF0 values and their byte encoding, per Adobe's "Action Message Format -- AMF 0" specification:
//! a hostile-input-safe decoder and an infallible encoder, both over plain byte slices.
//!
//! Knows nothing of sockets, tokio or RTMP chunking: callers hand it whole message payloads.

/// The deepest nesting of objects, ECMA arrays, strict arrays and typed objects that [`decode`]
/// accepts; deeper input is [`Amf0Error::TooDeep`].
pub(crate) const MAX_DEPTH: usize = 64;

/// The most strict-array elements reserved up front, whatever count the input claims.
const MAX_PREALLOC: usize = 256;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const MOVIECLIP: u8 = 0x04;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const REFERENCE: u8 = 0x07;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;
const UNSUPPORTED: u8 = 0x0D;
const RECORDSET: u8 = 0x0E;
const XML_DOCUMENT: u8 = 0x0F;
const TYPED_OBJECT: u8 = 0x10;
const AVMPLUS_OBJECT: u8 = 0x11;

/// An AMF0 value. Object-like values keep their property order.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    /// An IEEE 754 double (marker 0x00).
    Number(f64),
    /// A boolean (0x01); any non-zero byte decodes as `true`.
    Boolean(bool),
    /// A UTF-8 string with a u16 length (0x02). Encoded as a long string if it does not fit.
    String(String),
    /// An anonymous object (0x03): properties until the end marker 0x00 0x00 0x09.
    Object(Vec<(String, Amf0Value)>),
    /// `null` (0x05).
    Null,
    /// `undefined` (0x06).
    Undefined,
    /// A reference (0x07) to an earlier complex value by index; it is kept, not resolved.
    Reference(u16),
    /// An associative array (0x08). Its u32 count is only a hint and is ignored on decode;
    /// properties run until the end marker.
    EcmaArray(Vec<(String, Amf0Value)>),
    /// A dense array (0x0A): a u32 count, then that many values.
    StrictArray(Vec<Amf0Value>),
    /// A date (0x0B): milliseconds since the Unix epoch and a (reserved) timezone offset.
    Date {
        /// Milliseconds since 1970-01-01T00:00:00Z.
        millis: f64,
        /// Timezone offset in minutes; the spec reserves it and says to write 0.
        timezone: i16,
    },
    /// A UTF-8 string with a u32 length (0x0C).
    LongString(String),
    /// The "unsupported" marker (0x0D).
    Unsupported,
    /// An XML document as a UTF-8 string with a u32 length (0x0F).
    XmlDocument(String),
    /// An object with a class name (0x10).
    TypedObject {
        /// The registered class name.
        class: String,
        /// The properties, in order.
        properties: Vec<(String, Amf0Value)>,
    },
}

impl Amf0Value {
    /// Builds an [`Amf0Value::Object`], e.g. the command object of an RTMP `connect`.
    pub(crate) fn object<'a>(props: impl IntoIterator<Item = (&'a str, Amf0Value)>) -> Amf0Value {
        Amf0Value::Object(props.into_iter().map(|(name, value)| (name.to_owned(), value)).collect())
    }

    /// The text of a [`String`](Amf0Value::String) or [`LongString`](Amf0Value::LongString).
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a [`Number`](Amf0Value::Number).
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The value of a [`Boolean`](Amf0Value::Boolean).
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The first property called `name` of an object, ECMA array or typed object.
    pub(crate) fn property(&self, name: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(props)
            | Amf0Value::EcmaArray(props)
            | Amf0Value::TypedObject { properties: props, .. } => {
                props.iter().find(|(key, _)| key == name).map(|(_, value)| value)
            }
            _ => None,
        }
    }
}

/// Why AMF0 bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Amf0Error {
    /// The input ended in the middle of a value; says what was being read.
    #[error("AMF0 input ended while reading {0}")]
    Truncated(&'static str),
    /// A type marker the spec does not define.
    #[error("unknown AMF0 type marker 0x{0:02x}")]
    UnknownMarker(u8),
    /// A defined marker this codec rejects: movieclip (0x04) and recordset (0x0E) are reserved,
    /// and avmplus-object (0x11) switches to AMF3, whose values are not supported.
    #[error("unsupported AMF0 type marker 0x{marker:02x}: {what}")]
    UnsupportedMarker {
        /// The marker byte.
        marker: u8,
        /// What the marker stands for and why it is rejected.
        what: &'static str,
    },
    /// A string, property name or class name is not valid UTF-8.
    #[error("AMF0 string is not valid UTF-8: {0}")]
    InvalidUtf8(#[from] std::str::Utf8Error),
    /// Containers are nested deeper than [`MAX_DEPTH`].
    #[error("AMF0 values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// An object, ECMA array or typed object ran to the end of the input without its end marker.
    #[error("AMF0 object has no end marker (0x00 0x00 0x09)")]
    MissingObjectEnd,
    /// The object-end marker (0x09) appeared where a value was expected.
    #[error("AMF0 object-end marker where a value was expected")]
    UnexpectedObjectEnd,
}

/// Decodes one value from the front of `buf` and advances `buf` past it.
///
/// Only an empty property name followed by 0x09 ends an object; an empty name followed by any
/// other marker is read as a property with an empty name. On error `buf` is left somewhere inside the bad value and should be discarded.
pub(crate) fn decode(buf: &mut &[u8]) -> Result<Amf0Value, Amf0Error> {
    decode_value(buf, 0)
}

/// Decodes values until `bytes` is used up, e.g. the arguments of an RTMP command message.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut buf = bytes;
    let mut values = Vec::new();
    while !buf.is_empty() {
        values.push(decode(&mut buf)?);
    }
    Ok(values)
}

/// Appends the encoding of `value` to `out`.
///
/// A [`String`](Amf0Value::String) longer than `u16::MAX` bytes is written as a long string
/// (marker 0x0C). Whatever else the wire format cannot express is truncated, so the output is
/// always well-formed: property and class names beyond `u16::MAX` bytes and long strings beyond
/// `u32::MAX` bytes are cut at a UTF-8 character boundary, and strict arrays beyond `u32::MAX`
/// elements are cut short. None of these occur in RTMP. An empty property name is written as-is;
/// [`decode`] reads it back, but strict decoders may take it for the end of the object.
pub(crate) fn encode(value: &Amf0Value, out: &mut Vec<u8>) {
    match value {
        Amf0Value::Number(n) => {
            out.push(NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0Value::Boolean(b) => out.extend_from_slice(&[BOOLEAN, u8::from(*b)]),
        Amf0Value::String(s) if s.len() <= usize::from(u16::MAX) => {
            out.push(STRING);
            write_short_str(s, out);
        }
        Amf0Value::String(s) | Amf0Value::LongString(s) => write_long_str(LONG_STRING, s, out),
        Amf0Value::Object(props) => {
            out.push(OBJECT);
            write_properties(props, out);
        }
        Amf0Value::Null => out.push(NULL),
        Amf0Value::Undefined => out.push(UNDEFINED),
        Amf0Value::Reference(index) => {
            out.push(REFERENCE);
            out.extend_from_slice(&index.to_be_bytes());
        }
        Amf0Value::EcmaArray(props) => {
            out.push(ECMA_ARRAY);
            out.extend_from_slice(&saturating_u32(props.len()).to_be_bytes());
            write_properties(props, out);
        }
        Amf0Value::StrictArray(items) => {
            let count = saturating_u32(items.len());
            out.push(STRICT_ARRAY);
            out.extend_from_slice(&count.to_be_bytes());
            for item in items.iter().take(count as usize) {
                encode(item, out);
            }
        }
        Amf0Value::Date { millis, timezone } => {
            out.push(DATE);
            out.extend_from_slice(&millis.to_be_bytes());
            out.extend_from_slice(&timezone.to_be_bytes());
        }
        Amf0Value::Unsupported => out.push(UNSUPPORTED),
        Amf0Value::XmlDocument(s) => write_long_str(XML_DOCUMENT, s, out),
        Amf0Value::TypedObject { class, properties } => {
            out.push(TYPED_OBJECT);
            write_short_str(class, out);
            write_properties(properties, out);
        }
    }
}

/// Encodes `values` one after another, e.g. the arguments of an RTMP command message.
pub fn encode_all(values: &[Amf0Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        encode(value, &mut out);
    }
    out
}

fn decode_value(buf: &mut &[u8], depth: usize) -> Result<Amf0Value, Amf0Error> {
    let [marker] = take::<1>(buf, "a type marker")?;
    Ok(match marker {
        NUMBER => Amf0Value::Number(f64::from_be_bytes(take(buf, "a number")?)),
        BOOLEAN => Amf0Value::Boolean(take::<1>(buf, "a boolean")? != [0]),
        STRING => Amf0Value::String(read_short_str(buf, "a string")?),
        OBJECT => Amf0Value::Object(read_properties(buf, nested(depth)?)?),
        MOVIECLIP => return Err(unsupported(marker, "movieclip is reserved by the spec")),
        NULL => Amf0Value::Null,
        UNDEFINED => Amf0Value::Undefined,
        REFERENCE => Amf0Value::Reference(u16::from_be_bytes(take(buf, "a reference index")?)),
        ECMA_ARRAY => {
            let depth = nested(depth)?;
            // The count is a hint that encoders get wrong; the end marker is what counts.
            take::<4>(buf, "an ECMA array count")?;
            Amf0Value::EcmaArray(read_properties(buf, depth)?)
        }
        OBJECT_END => return Err(Amf0Error::UnexpectedObjectEnd),
        STRICT_ARRAY => {
            let depth = nested(depth)?;
            let count = read_u32_len(buf, "a strict array count")?;
            // Every element takes at least one byte: refuse a count the input cannot hold
            // before reserving anything for it.
            if count > buf.len() {
                return Err(Amf0Error::Truncated("a strict array element"));
            }
            let mut items = Vec::with_capacity(count.min(MAX_PREALLOC));
            for _ in 0..count {
                items.push(decode_value(buf, depth)?);
            }
            Amf0Value::StrictArray(items)
        }
        DATE => Amf0Value::Date {
            millis: f64::from_be_bytes(take(buf, "a date")?),
            timezone: i16::from_be_bytes(take(buf, "a date timezone")?),
        },
        LONG_STRING => Amf0Value::LongString(read_long_str(buf, "a long string")?),
        UNSUPPORTED => Amf0Value::Unsupported,
        RECORDSET => return Err(unsupported(marker, "recordset is reserved by the spec")),
        XML_DOCUMENT => Amf0Value::XmlDocument(read_long_str(buf, "an XML document")?),
        TYPED_OBJECT => {
            let depth = nested(depth)?;
            let class = read_short_str(buf, "a typed object class name")?;
            Amf0Value::TypedObject { class, properties: read_properties(buf, depth)? }
        }
        AVMPLUS_OBJECT => return Err(unsupported(marker, "avmplus-object switches to AMF3, which is not supported")),
        _ => return Err(Amf0Error::UnknownMarker(marker)),
    })
}

/// The depth of the values inside a container found at `depth`.
fn nested(depth: usize) -> Result<usize, Amf0Error> {
    if depth < MAX_DEPTH {
        Ok(depth + 1)
    } else {
        Err(Amf0Error::TooDeep)
    }
}

fn unsupported(marker: u8, what: &'static str) -> Amf0Error {
    Amf0Error::UnsupportedMarker { marker, what }
}

/// Reads properties up to and including the end marker: an empty name followed by 0x09.
/// An empty name followed by anything else is an ordinary property with an empty name.
fn read_properties(buf: &mut &[u8], depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
    let mut props = Vec::new();
    loop {
        if buf.is_empty() {
            return Err(Amf0Error::MissingObjectEnd);
        }
        let name = read_short_str(buf, "a property name")?;
        if name.is_empty() {
            if let Some((&OBJECT_END, rest)) = buf.split_first() {
                *buf = rest;
                return Ok(props);
            }
        }
        props.push((name, decode_value(buf, depth)?));
    }
}

fn take<const N: usize>(buf: &mut &[u8], what: &'static str) -> Result<[u8; N], Amf0Error> {
    let (head, rest) = buf.split_first_chunk::<N>().ok_or(Amf0Error::Truncated(what))?;
    *buf = rest;
    Ok(*head)
}

fn read_u32_len(buf: &mut &[u8], what: &'static str) -> Result<usize, Amf0Error> {
    // A length that does not fit in usize cannot fit in the input either.
    Ok(usize::try_from(u32::from_be_bytes(take(buf, what)?)).unwrap_or(usize::MAX))
}

pub(crate) fn read_short_str(buf: &mut &[u8], what: &'static str) -> Result<String, Amf0Error> {
    let len = u16::from_be_bytes(take(buf, what)?);
    read_str(buf, usize::from(len), what)
}

fn read_long_str(buf: &mut &[u8], what: &'static str) -> Result<String, Amf0Error> {
    let len = read_u32_len(buf, what)?;
    read_str(buf, len, what)
}

/// Reads `len` bytes of UTF-8, allocating only once they are known to be there.
fn read_str(buf: &mut &[u8], len: usize, what: &'static str) -> Result<String, Amf0Error> {
    let (bytes, rest) = buf.split_at_checked(len).ok_or(Amf0Error::Truncated(what))?;
    *buf = rest;
    Ok(std::str::from_utf8(bytes)?.to_owned())
}

fn write_properties(props: &[(String, Amf0Value)], out: &mut Vec<u8>) {
    for (name, value) in props {
        write_short_str(name, out);
        encode(value, out);
    }
    out.extend_from_slice(&[0x00, 0x00, OBJECT_END]);
}

/// Writes a u16 length and the text, cut to fit (see [`encode`]).
pub(crate) fn write_short_str(s: &str, out: &mut Vec<u8>) {
    let s = truncate_utf8(s, usize::from(u16::MAX));
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes `marker`, a u32 length and the text, cut to fit (see [`encode`]).
fn write_long_str(marker: u8, s: &str, out: &mut Vec<u8>) {
    let s = truncate_utf8(s, u32::MAX as usize);
    out.push(marker);
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Concatenates hand-written pieces of a fixture.
    fn bytes(pieces: &[&[u8]]) -> Vec<u8> {
        pieces.concat()
    }

    const ONE: [u8; 8] = [0x3F, 0xF0, 0, 0, 0, 0, 0, 0];

    /// What an encoder like FMLE sends as the arguments of `connect`.
    fn connect_fixture() -> (Vec<u8>, Vec<Amf0Value>) {
        let wire = bytes(&[
            &[0x02, 0x00, 0x07],
            b"connect",
            &[0x00],
            &ONE,
            &[0x03],
            &[0x00, 0x03],
            b"app",
            &[0x02, 0x00, 0x04],
            b"live",
            &[0x00, 0x04],
            b"type",
            &[0x02, 0x00, 0x0A],
            b"nonprivate",
            &[0x00, 0x08],
            b"flashVer",
            &[0x02, 0x00, 0x1F],
            b"FMLE/3.0 (compatible; FMSc/1.0)",
            &[0x00, 0x05],
            b"tcUrl",
            &[0x02, 0x00, 0x1A],
            b"rtmp://127.0.0.1:1935/live",
            &[0x00, 0x00, 0x09],
        ]);
        let values = vec![
            Amf0Value::String("connect".into()),
            Amf0Value::Number(1.0),
            Amf0Value::object([
                ("app", Amf0Value::String("live".into())),
                ("type", Amf0Value::String("nonprivate".into())),
                ("flashVer", Amf0Value::String("FMLE/3.0 (compatible; FMSc/1.0)".into())),
                ("tcUrl", Amf0Value::String("rtmp://127.0.0.1:1935/live".into())),
            ]),
        ];
        (wire, values)
    }

    /// One hand-written encoding per marker, each with the value it stands for.
    fn marker_fixtures() -> Vec<(Vec<u8>, Amf0Value)> {
        vec![
            (bytes(&[&[0x00], &[0x40, 0x25, 0, 0, 0, 0, 0, 0]]), Amf0Value::Number(10.5)),
            (vec![0x01, 0x00], Amf0Value::Boolean(false)),
            (vec![0x01, 0x01], Amf0Value::Boolean(true)),
            (bytes(&[&[0x02, 0x00, 0x02], "é".as_bytes()]), Amf0Value::String("é".into())),
            (vec![0x03, 0x00, 0x00, 0x09], Amf0Value::Object(vec![])),
            (vec![0x05], Amf0Value::Null),
            (vec![0x06], Amf0Value::Undefined),
            (vec![0x07, 0x01, 0x02], Amf0Value::Reference(0x0102)),
            (
                // The count says 5 but there are 2 properties: the end marker decides.
                bytes(&[
                    &[0x08, 0x00, 0x00, 0x00, 0x05],
                    &[0x00, 0x08],
                    b"duration",
                    &[0x00, 0x40, 0x25, 0, 0, 0, 0, 0, 0],
                    &[0x00, 0x05],
                    b"width",
                    &[0x00, 0x40, 0x94, 0, 0, 0, 0, 0, 0],
                    &[0x00, 0x00, 0x09],
                ]),
                Amf0Value::EcmaArray(vec![
                    ("duration".into(), Amf0Value::Number(10.5)),
                    ("width".into(), Amf0Value::Number(1280.0)),
                ]),
            ),
            (
                bytes(&[&[0x0A, 0x00, 0x00, 0x00, 0x03, 0x00], &ONE, &[0x01, 0x01, 0x05]]),
                Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::Boolean(true), Amf0Value::Null]),
            ),
            (
                vec![0x0B, 0x42, 0x6D, 0x1A, 0x94, 0xA2, 0x00, 0x00, 0x00, 0xFF, 0xC4],
                Amf0Value::Date { millis: 1e12, timezone: -60 },
            ),
            (bytes(&[&[0x0C, 0x00, 0x00, 0x00, 0x05], b"hello"]), Amf0Value::LongString("hello".into())),
            (vec![0x0D], Amf0Value::Unsupported),
            (bytes(&[&[0x0F, 0x00, 0x00, 0x00, 0x08], b"<a>b</a>"]), Amf0Value::XmlDocument("<a>b</a>".into())),
            (
                bytes(&[&[0x10, 0x00, 0x05], b"Point", &[0x00, 0x01], b"x", &[0x00], &ONE, &[0x00, 0x00, 0x09]]),
                Amf0Value::TypedObject {
                    class: "Point".into(),
                    properties: vec![("x".into(), Amf0Value::Number(1.0))],
                },
            ),
        ]
    }

    #[test]
    fn connect_command_matches_the_wire_bytes() {
        let (wire, values) = connect_fixture();
        assert_eq!(decode_all(&wire).unwrap(), values);
        assert_eq!(encode_all(&values), wire);
        assert_eq!(values[2].property("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(values[1].as_f64(), Some(1.0));
    }

    #[test]
    fn each_marker_matches_its_wire_bytes() {
        for (wire, value) in marker_fixtures() {
            let mut buf = wire.as_slice();
            assert_eq!(decode(&mut buf).unwrap(), value, "decoding {wire:02x?}");
            assert!(buf.is_empty(), "decoding {wire:02x?} left {buf:02x?}");
            let mut out = Vec::new();
            encode(&value, &mut out);
            // Our encoder writes the true property count, so the lying ECMA count differs.
            if !matches!(value, Amf0Value::EcmaArray(_)) {
                assert_eq!(out, wire, "encoding {value:?}");
            }
            assert_eq!(decode_all(&out).unwrap(), [value]);
        }
    }

    #[test]
    fn ecma_array_encodes_its_true_count() {
        let value = Amf0Value::EcmaArray(vec![("a".into(), Amf0Value::Null)]);
        assert_eq!(encode_all(&[value]), [0x08, 0, 0, 0, 1, 0x00, 0x01, b'a', 0x05, 0x00, 0x00, 0x09]);
    }

    #[test]
    fn decode_advances_past_exactly_one_value() {
        let mut buf: &[u8] = &[0x05, 0x01, 0x01];
        assert_eq!(decode(&mut buf), Ok(Amf0Value::Null));
        assert_eq!(buf, [0x01, 0x01]);
    }

    #[test]
    fn accessors() {
        let obj =
            Amf0Value::TypedObject { class: "C".into(), properties: vec![("k".into(), Amf0Value::Boolean(true))] };
        assert_eq!(obj.property("k").and_then(Amf0Value::as_bool), Some(true));
        assert_eq!(obj.property("missing"), None);
        assert_eq!(Amf0Value::LongString("x".into()).as_str(), Some("x"));
        assert_eq!(Amf0Value::Null.as_str(), None);
        assert_eq!(Amf0Value::Null.as_f64(), None);
        assert_eq!(Amf0Value::Null.property("k"), None);
    }

    #[test]
    fn empty_property_name_round_trips() {
        let wire = [0x03, 0x00, 0x00, 0x05, 0x00, 0x00, 0x09];
        let values = [Amf0Value::object([("", Amf0Value::Null)])];
        assert_eq!(decode_all(&wire).unwrap(), values);
        assert_eq!(encode_all(&values), wire);
    }

    #[test]
    fn oversized_string_is_written_as_long_string() {
        let text = "a".repeat(70_000);
        let wire = encode_all(&[Amf0Value::String(text.clone())]);
        assert_eq!(wire[..5], [0x0C, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(decode_all(&wire).unwrap(), [Amf0Value::LongString(text)]);
    }

    #[test]
    fn oversized_property_name_is_cut_at_a_char_boundary() {
        // 65534 ASCII bytes then a 2-byte character straddling the u16 limit.
        let name = format!("{}é", "a".repeat(65_534));
        let wire = encode_all(&[Amf0Value::object([(name.as_str(), Amf0Value::Null)])]);
        assert_eq!(wire[1..3], 65_534u16.to_be_bytes());
        assert_eq!(decode_all(&wire).unwrap(), [Amf0Value::object([(&name[..65_534], Amf0Value::Null)])]);
    }

    #[test]
    fn every_truncation_fails_except_at_value_boundaries() {
        let (mut wire, mut values) = connect_fixture();
        for (fixture, value) in marker_fixtures() {
            wire.extend(fixture);
            values.push(value);
        }
        let boundaries: Vec<usize> = values.iter().map(|v| encode_all(std::slice::from_ref(v)).len()).collect();
        let mut ends = vec![0];
        for len in boundaries {
            ends.push(ends.last().unwrap() + len);
        }
        for cut in 0..=wire.len() {
            let result = decode_all(&wire[..cut]);
            match ends.iter().position(|&end| end == cut) {
                Some(count) => assert_eq!(result.as_deref(), Ok(&values[..count]), "cut at {cut}"),
                None => assert!(result.is_err(), "cut at {cut} decoded to {result:?}"),
            }
        }
    }

    #[test]
    fn unknown_and_unsupported_markers() {
        assert_eq!(decode_all(&[0x12]), Err(Amf0Error::UnknownMarker(0x12)));
        assert_eq!(decode_all(&[0xFF]), Err(Amf0Error::UnknownMarker(0xFF)));
        for marker in [0x04, 0x0E, 0x11] {
            assert!(
                matches!(decode_all(&[marker, 0x00]), Err(Amf0Error::UnsupportedMarker { marker: m, .. }) if m == marker)
            );
        }
        assert!(decode_all(&[0x11, 0x02]).unwrap_err().to_string().contains("AMF3"));
    }

    #[test]
    fn malformed_input_errors() {
        assert_eq!(decode_all(&[0x09]), Err(Amf0Error::UnexpectedObjectEnd));
        assert_eq!(decode_all(&[0x03, 0x00, 0x01, b'a', 0x09]), Err(Amf0Error::UnexpectedObjectEnd));
        assert_eq!(decode_all(&[0x03, 0x00, 0x01, b'a', 0x05]), Err(Amf0Error::MissingObjectEnd));
        assert!(matches!(decode_all(&[0x02, 0x00, 0x01, 0xFF]), Err(Amf0Error::InvalidUtf8(_))));
        assert!(matches!(decode_all(&[0x10, 0x00, 0x01, 0xC3, 0x00, 0x00, 0x09]), Err(Amf0Error::InvalidUtf8(_))));
        assert_eq!(decode_all(&[0x0C, 0xFF, 0xFF, 0xFF, 0xFF, b'a']), Err(Amf0Error::Truncated("a long string")));
        assert_eq!(decode_all(&[0x00, 0x01]), Err(Amf0Error::Truncated("a number")));
    }

    #[test]
    fn huge_strict_array_count_fails_without_allocating() {
        let wire = [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x05, 0x05, 0x05, 0x05, 0x05];
        assert_eq!(decode_all(&wire), Err(Amf0Error::Truncated("a strict array element")));
    }

    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut wire = [0x0A, 0x00, 0x00, 0x00, 0x01].repeat(depth);
        wire.push(0x05);
        wire
    }

    #[test]
    fn nesting_is_limited_to_max_depth() {
        assert!(decode_all(&nested_arrays(MAX_DEPTH)).is_ok());
        assert_eq!(decode_all(&nested_arrays(MAX_DEPTH + 1)), Err(Amf0Error::TooDeep));
        assert_eq!(decode_all(&nested_arrays(100)), Err(Amf0Error::TooDeep));
        let objects = [0x03, 0x00, 0x01, b'a'].repeat(100_000);
        assert_eq!(decode_all(&objects), Err(Amf0Error::TooDeep));
    }

    fn text() -> impl Strategy<Value = String> + Clone {
        "\\PC{0,8}"
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => any::<f64>(),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(-0.0),
        ]
    }

    fn value() -> impl Strategy<Value = Amf0Value> {
        let leaf = prop_oneof![
            number().prop_map(Amf0Value::Number),
            any::<bool>().prop_map(Amf0Value::Boolean),
            text().prop_map(Amf0Value::String),
            Just(Amf0Value::Null),
            Just(Amf0Value::Undefined),
            any::<u16>().prop_map(Amf0Value::Reference),
            (number(), any::<i16>()).prop_map(|(millis, timezone)| Amf0Value::Date { millis, timezone }),
            text().prop_map(Amf0Value::LongString),
            Just(Amf0Value::Unsupported),
            text().prop_map(Amf0Value::XmlDocument),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let props = vec((text(), inner.clone()), 0..6);
            prop_oneof![
                props.clone().prop_map(Amf0Value::Object),
                props.clone().prop_map(Amf0Value::EcmaArray),
                vec(inner, 0..6).prop_map(Amf0Value::StrictArray),
                (text(), props).prop_map(|(class, properties)| Amf0Value::TypedObject { class, properties }),
            ]
        })
    }

    proptest! {
        #[test]
        fn values_round_trip(values in vec(value(), 0..4)) {
            let wire = encode_all(&values);
            let decoded = decode_all(&wire).unwrap();
            // Debug output treats NaN as equal to itself; the bytes check NaN payloads too.
            prop_assert_eq!(format!("{decoded:?}"), format!("{values:?}"));
            prop_assert_eq!(encode_all(&decoded), wire);
        }

        #[test]
        fn arbitrary_bytes_never_panic(wire in vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&wire);
        }

        #[test]
        fn bit_flipped_encodings_never_panic(
            values in vec(value(), 1..4),
            flips in vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
        ) {
            let mut wire = encode_all(&values);
            for (index, bit) in flips {
                let at = index.index(wire.len());
                wire[at] ^= 1 << bit;
            }
            let _ = decode_all(&wire);
        }
    }
}
