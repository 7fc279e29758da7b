//! A recording piece's bytes: an FLV file, written tag by tag and read back tag by tag,
//! including a file whose writer was killed mid-tag (the torn tail is detected by its
//! sizes and left out).
//!
//! Sans-IO: bytes in, frames or bytes out. Knows no files, no sockets, no clock.

use bytes::{Buf, Bytes, BytesMut};

use crate::media::{Frame, FrameKind};
use crate::rtmp::flv;
use crate::rtmp::message;

use crate::rtmp::flv::{
    TagHeader, BACK_POINTER, TAG_AUDIO as AUDIO, TAG_HEADER, TAG_SCRIPT as SCRIPT, TAG_VIDEO as VIDEO,
};

/// Why bytes are not an FLV piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// The file does not start with an FLV header.
    #[error("not an FLV file (bad header)")]
    NotFlv,
    /// A tag's type is not audio, video or script data.
    #[error("tag of unknown type {0} at byte {1}")]
    UnknownTagType(u8, u64),
    /// A tag's back pointer disagrees with its size: the bytes are corrupt.
    #[error("tag at byte {0} has a wrong back pointer")]
    WrongBackPointer(u64),
}

/// The FLV tag of `frame` (empty for a body FLV cannot describe).
pub fn tag(frame: &Frame) -> Bytes {
    let tag_type = match frame.kind {
        FrameKind::Audio => AUDIO,
        FrameKind::Video => VIDEO,
        FrameKind::Data => SCRIPT,
    };
    let mut out = BytesMut::new();
    flv::write_tag(tag_type, frame.timestamp, &frame.payload, &mut out);
    out.freeze()
}

/// The frame an FLV tag holds, classified as the edge classifies what publishers send.
fn frame(tag_type: u8, timestamp: u32, body: Bytes) -> Frame {
    match tag_type {
        AUDIO => Frame::audio(timestamp, body),
        VIDEO => Frame::video(timestamp, body),
        _ if message::data_name(&body).as_deref() == Some("onMetaData") => Frame::metadata(timestamp, body),
        _ => Frame::data(timestamp, body),
    }
}

/// Reads the frames of an FLV file from its bytes, given in pieces of any size.
#[derive(Debug, Default)]
pub struct TagReader {
    buf: BytesMut,
    /// Whether the file header was read.
    started: bool,
    /// Offset in the file of `buf`'s first byte.
    offset: u64,
}

impl TagReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes of the file.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FlvError> {
        if !self.started {
            if self.buf.len() < flv::FILE_HEADER.len() {
                return Ok(None);
            }
            let header = self.buf.split_to(flv::FILE_HEADER.len());
            if !flv::is_file_header(&header) {
                return Err(FlvError::NotFlv);
            }
            self.started = true;
            self.offset += flv::FILE_HEADER.len() as u64;
        }
        if self.buf.len() < TAG_HEADER {
            return Ok(None);
        }
        let mut h = [0; TAG_HEADER];
        h.copy_from_slice(&self.buf[..TAG_HEADER]);
        let header = TagHeader::parse(&h);
        if !header.known_type() {
            return Err(FlvError::UnknownTagType(header.tag_type, self.offset));
        }
        let total = header.total() as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut back = [0; BACK_POINTER];
        back.copy_from_slice(&self.buf[total - BACK_POINTER..total]);
        if !header.back_pointer_matches(back) {
            return Err(FlvError::WrongBackPointer(self.offset));
        }
        self.buf.advance(TAG_HEADER);
        let body = self.buf.split_to(header.size as usize).freeze();
        self.buf.advance(BACK_POINTER);
        self.offset += total as u64;
        Ok(Some(frame(header.tag_type, header.timestamp, body)))
    }

    /// Bytes of the file read so far that end with a complete tag (or the header):
    /// where a torn file is cut.
    pub fn complete_len(&self) -> u64 {
        self.offset
    }

    /// Bytes pushed that do not make a complete tag yet (a torn tail once the file
    /// has ended).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// What a piece holds, counted while it is read or written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub bytes: u64,
    pub frames: u64,
    /// Timestamps of the first and last media frame (codec headers and metadata, which
    /// a new owner is re-sent first with their original timestamps, do not count).
    pub first_ts: Option<u32>,
    pub last_ts: u32,
}

impl Tally {
    /// A file that holds only its header.
    pub fn header() -> Tally {
        Tally { bytes: flv::FILE_HEADER.len() as u64, ..Tally::default() }
    }

    /// Counts one more tag of `len` bytes holding `frame`.
    pub fn add(&mut self, frame: &Frame, len: usize) {
        self.bytes += len as u64;
        self.frames += 1;
        if !frame.header {
            self.first_ts.get_or_insert(frame.timestamp);
            self.last_ts = self.last_ts.max(frame.timestamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(frames: &[Frame]) -> Vec<u8> {
        let mut out = flv::FILE_HEADER.to_vec();
        for f in frames {
            out.extend_from_slice(&tag(f));
        }
        out
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1])),
            Frame::video(0, Bytes::from_static(&[0x17, 1, 0, 0, 0, 2])),
            Frame::audio(10, Bytes::from_static(&[0xAF, 1, 3])),
            Frame::video(0x0100_0021, Bytes::from_static(&[0x27, 1, 0, 0, 0, 4])),
        ]
    }

    fn read_all(reader: &mut TagReader) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = reader.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn frames_round_trip_in_any_slicing() {
        let bytes = file(&frames());
        for step in [1, 7, 4096] {
            let mut reader = TagReader::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                reader.push(chunk);
                got.extend(read_all(&mut reader));
            }
            assert_eq!(got, frames(), "step {step}");
            assert_eq!(reader.complete_len(), bytes.len() as u64);
            assert_eq!(reader.pending(), 0);
        }
        let got = frames();
        assert!(got[0].header && got[1].keyframe && !got[3].keyframe);
    }

    #[test]
    fn a_torn_tail_is_left_out_and_measured() {
        let bytes = file(&frames());
        let whole = file(&frames()[..3]).len();
        // Killed in the middle of the last tag: three frames, cut where they end.
        let torn = &bytes[..bytes.len() - 3];
        let mut reader = TagReader::new();
        reader.push(torn);
        assert_eq!(read_all(&mut reader).len(), 3);
        assert_eq!(reader.complete_len(), whole as u64);
        assert_eq!(reader.pending(), torn.len() - whole);
    }

    #[test]
    fn garbage_is_refused() {
        let mut reader = TagReader::new();
        reader.push(b"GIF89a-not-an-flv-file");
        assert_eq!(reader.next_frame(), Err(FlvError::NotFlv));
        let mut bytes = file(&frames());
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        let mut reader = TagReader::new();
        reader.push(&bytes);
        let mut result = Ok(None);
        for _ in 0..5 {
            result = reader.next_frame();
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(FlvError::WrongBackPointer(_))), "{result:?}");
    }
}
