//! FLV and Enhanced RTMP tag bodies to what fMP4 needs: each track's codec
//! configuration (avcC, hvcC, av1C, AAC AudioSpecificConfig, Opus `dOps`) with its
//! RFC 6381 `CODECS` string and picture size or sample rate, and samples (the coded
//! bytes, zero-copy, with their composition offset). H.264 and HEVC whose parameter
//! sets come in band get their `avcC`/`hvcC` built from a keyframe's
//! ([`inband_config`]), and Annex-B samples are rewritten as length-prefixed NAL units
//! ([`length_prefixed`]).
//!
//! Pure functions over bytes; every length is checked and a body that does not parse
//! is an [`CodecError`], never a panic. Knows nothing of boxes, marks or segments.

use bytes::Bytes;

use crate::rtmp::flv;

/// Why a tag body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The body ends before a field it announces.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A codec or packet type that is not packaged into fMP4 here.
    #[error("unsupported {0}")]
    Unsupported(&'static str),
    /// A configuration record or parameter set with an impossible value.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// A video codec that fMP4 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Avc,
    Hevc,
    Av1,
}

/// An audio codec that fMP4 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Opus,
}

/// A video track's configuration, from its sequence header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    pub codec: VideoCodec,
    /// The decoder configuration record, as the `avcC`/`hvcC`/`av1C` box body.
    pub record: Bytes,
    /// Picture size in pixels (0 when the record does not say).
    pub width: u16,
    pub height: u16,
}

/// An audio track's configuration, from its sequence header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    pub codec: AudioCodec,
    /// AAC: the AudioSpecificConfig. Opus: the `dOps` box body.
    pub config: Bytes,
    /// Samples per second: the track's timescale.
    pub sample_rate: u32,
    pub channels: u16,
    /// AAC audio object type (2 = LC), 0 for Opus.
    pub object_type: u8,
}

/// One coded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The frame as fMP4 stores it (length-prefixed NAL units, OBUs, raw AAC, an Opus
    /// packet): a slice of the tag body.
    pub data: Bytes,
    /// Presentation minus decode time, ms (video with B-frames; 0 otherwise).
    pub composition_ms: i32,
}

/// What a video tag body is for the packager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Video {
    Config(VideoConfig),
    /// A sequence header with an empty configuration record: the parameter sets come
    /// in band, in the keyframes ([`inband_config`]). ffmpeg's `tee` muxer sends this
    /// for libx264 without `-flags +global_header`.
    ConfigInBand(VideoCodec),
    /// A frame, and the codec its tag names (it must match the track's).
    Sample(VideoCodec, Sample),
    /// Not a picture: end of sequence, metadata, a command frame.
    Skip,
}

/// What an audio tag body is for the packager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audio {
    Config(AudioConfig),
    Sample(AudioCodec, Sample),
    Skip,
}

const AVC_ID: u8 = 7;
const AAC_ID: u8 = 10;
const EX_AUDIO: u8 = 9;
// Enhanced RTMP packet types.
const SEQUENCE_START: u8 = 0;
const CODED_FRAMES: u8 = 1;
const SEQUENCE_END: u8 = 2;
const CODED_FRAMES_X: u8 = 3;
const METADATA: u8 = 4;
const MULTITRACK: u8 = 6;
/// An AV1 temporal delimiter OBU with an empty payload.
const AV1_TEMPORAL_DELIMITER: [u8; 2] = [0x12, 0x00];

/// Parses a video tag body.
pub fn parse_video(body: &Bytes) -> Result<Video, CodecError> {
    let b0 = *body.first().ok_or(CodecError::Truncated("video tag"))?;
    if b0 & 0x80 == 0 {
        if b0 & 0x0F != AVC_ID {
            return Err(CodecError::Unsupported("legacy video codec"));
        }
        if b0 >> 4 == 5 {
            return Ok(Video::Skip);
        }
        let head = body.get(..5).ok_or(CodecError::Truncated("AVC tag header"))?;
        return match head[1] {
            0 if body.len() == 5 => Ok(Video::ConfigInBand(VideoCodec::Avc)),
            0 => avc_config(body.slice(5..)).map(Video::Config),
            1 => {
                Ok(Video::Sample(VideoCodec::Avc, Sample { data: body.slice(5..), composition_ms: si24(&head[2..5]) }))
            }
            _ => Ok(Video::Skip),
        };
    }
    if (b0 >> 4) & 0x07 == 5 {
        return Ok(Video::Skip);
    }
    let (packet_type, at) = enhanced_start(body)?;
    if packet_type == MULTITRACK {
        return Err(CodecError::Unsupported("multitrack video"));
    }
    let fourcc: [u8; 4] = body.get(at..at + 4).ok_or(CodecError::Truncated("FourCC"))?.try_into().unwrap_or_default();
    let codec = match &fourcc {
        b"avc1" => VideoCodec::Avc,
        b"hvc1" => VideoCodec::Hevc,
        b"av01" => VideoCodec::Av1,
        _ => return Err(CodecError::Unsupported("video FourCC")),
    };
    let data = at + 4;
    match packet_type {
        SEQUENCE_START => {
            let record = body.slice(data..);
            if record.is_empty() && codec != VideoCodec::Av1 {
                return Ok(Video::ConfigInBand(codec));
            }
            match codec {
                VideoCodec::Avc => avc_config(record),
                VideoCodec::Hevc => hevc_config(record),
                VideoCodec::Av1 => av1_config(record),
            }
            .map(Video::Config)
        }
        CODED_FRAMES if codec != VideoCodec::Av1 => {
            let cts = body.get(data..data + 3).ok_or(CodecError::Truncated("composition time"))?;
            Ok(Video::Sample(codec, Sample { data: body.slice(data + 3..), composition_ms: si24(cts) }))
        }
        CODED_FRAMES | CODED_FRAMES_X => {
            let mut data = body.slice(data..);
            if codec == VideoCodec::Av1 && data.starts_with(&AV1_TEMPORAL_DELIMITER) {
                // AV1 in ISOBMFF §2.4: samples carry no temporal delimiter.
                data = data.slice(AV1_TEMPORAL_DELIMITER.len()..);
            }
            Ok(Video::Sample(codec, Sample { data, composition_ms: 0 }))
        }
        SEQUENCE_END | METADATA => Ok(Video::Skip),
        _ => Err(CodecError::Unsupported("video packet type")),
    }
}

/// Parses an audio tag body.
pub fn parse_audio(body: &Bytes) -> Result<Audio, CodecError> {
    let b0 = *body.first().ok_or(CodecError::Truncated("audio tag"))?;
    match b0 >> 4 {
        AAC_ID => {
            let kind = *body.get(1).ok_or(CodecError::Truncated("AAC packet type"))?;
            match kind {
                0 => aac_config(body.slice(2..)).map(Audio::Config),
                1 => Ok(Audio::Sample(AudioCodec::Aac, Sample { data: body.slice(2..), composition_ms: 0 })),
                _ => Err(CodecError::Malformed("AAC packet type")),
            }
        }
        EX_AUDIO => {
            let (packet_type, at) = enhanced_start(body)?;
            if packet_type == MULTITRACK {
                return Err(CodecError::Unsupported("multitrack audio"));
            }
            let fourcc = body.get(at..at + 4).ok_or(CodecError::Truncated("FourCC"))?;
            let codec = match fourcc {
                b"mp4a" => AudioCodec::Aac,
                b"Opus" => AudioCodec::Opus,
                _ => return Err(CodecError::Unsupported("audio FourCC")),
            };
            let data = at + 4;
            match packet_type {
                SEQUENCE_START => match codec {
                    AudioCodec::Aac => aac_config(body.slice(data..)),
                    AudioCodec::Opus => opus_config(&body[data..]),
                }
                .map(Audio::Config),
                CODED_FRAMES => Ok(Audio::Sample(codec, Sample { data: body.slice(data..), composition_ms: 0 })),
                SEQUENCE_END => Ok(Audio::Skip),
                _ => Err(CodecError::Unsupported("audio packet type")),
            }
        }
        _ => Err(CodecError::Unsupported("legacy audio codec")),
    }
}

/// The packet type of an Enhanced RTMP body (through ModEx wrappers) and where the
/// FourCC starts.
fn enhanced_start(body: &[u8]) -> Result<(u8, usize), CodecError> {
    let (&b0, rest) = body.split_first().ok_or(CodecError::Truncated("tag"))?;
    let (packet_type, tail) =
        flv::resolve_packet_type(b0 & 0x0F, rest).ok_or(CodecError::Truncated("ModEx wrapper"))?;
    Ok((packet_type, body.len() - tail.len()))
}

fn si24(b: &[u8]) -> i32 {
    (i32::from_be_bytes([b[0], b[1], b[2], 0])) >> 8
}

/// Samples of one decoded frame at `config`'s rate, when fixed by the codec: 1024 for
/// AAC, the TOC's duration for an Opus packet.
pub fn audio_frame_samples(config: &AudioConfig, data: &[u8]) -> Option<u32> {
    match config.codec {
        AudioCodec::Aac => Some(1024),
        AudioCodec::Opus => opus_packet_samples(data),
    }
}

/// Samples at 48 kHz in one Opus packet (RFC 6716 §3.1), from its TOC byte.
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    Some(frame * frames)
}

impl VideoConfig {
    /// Bytes of the length before each NAL unit in this track's samples (from the
    /// record's `lengthSizeMinusOne`); `None` for AV1, whose samples are OBUs.
    pub fn nal_length_size(&self) -> Option<usize> {
        let at = match self.codec {
            VideoCodec::Avc => 4,
            VideoCodec::Hevc => 21,
            VideoCodec::Av1 => return None,
        };
        Some(usize::from(self.record.get(at).map_or(3, |b| b & 3)) + 1)
    }

    /// The RFC 6381 codec string: `avc1.PPCCLL`, `hvc1.…`, `av01.…`.
    pub fn codecs(&self) -> String {
        let r = &self.record;
        match self.codec {
            VideoCodec::Avc => format!("avc1.{:02x}{:02x}{:02x}", r[1], r[2], r[3]),
            VideoCodec::Hevc => {
                let space = ["", "A", "B", "C"][usize::from(r[1] >> 6)];
                let tier = if r[1] & 0x20 != 0 { 'H' } else { 'L' };
                // The compatibility flags are written in reverse bit order.
                let compat = u32::from_be_bytes([r[2], r[3], r[4], r[5]]).reverse_bits();
                let mut s = format!("hvc1.{space}{}.{compat:X}.{tier}{}", r[1] & 0x1F, r[12]);
                let constraints = &r[6..12];
                let keep = constraints.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                for b in &constraints[..keep] {
                    s.push_str(&format!(".{b:X}"));
                }
                s
            }
            VideoCodec::Av1 => {
                let profile = r[1] >> 5;
                let level = r[1] & 0x1F;
                let tier = if r[2] & 0x80 != 0 { 'H' } else { 'M' };
                let depth = if r[2] & 0x40 == 0 {
                    8
                } else if r[2] & 0x20 != 0 {
                    12
                } else {
                    10
                };
                format!("av01.{profile}.{level:02}{tier}.{depth:02}")
            }
        }
    }
}

impl AudioConfig {
    /// The RFC 6381 codec string: `mp4a.40.N` or `opus`.
    pub fn codecs(&self) -> String {
        match self.codec {
            AudioCodec::Aac => format!("mp4a.40.{}", self.object_type),
            AudioCodec::Opus => "opus".to_string(),
        }
    }
}

/// An AVCDecoderConfigurationRecord: checked, with the first SPS read for the size.
fn avc_config(record: Bytes) -> Result<VideoConfig, CodecError> {
    let head = record.get(..6).ok_or(CodecError::Truncated("avcC"))?;
    if head[0] != 1 {
        return Err(CodecError::Malformed("avcC version"));
    }
    if head[5] & 0x1F == 0 {
        return Err(CodecError::Malformed("avcC without SPS"));
    }
    let len = usize::from(u16::from_be_bytes(
        record.get(6..8).ok_or(CodecError::Truncated("avcC"))?.try_into().unwrap_or_default(),
    ));
    let sps = record.get(8..8 + len).ok_or(CodecError::Truncated("avcC SPS"))?;
    let (width, height) = avc_sps_size(sps).ok_or(CodecError::Malformed("H.264 SPS"))?;
    Ok(VideoConfig { codec: VideoCodec::Avc, record, width, height })
}

/// An HEVCDecoderConfigurationRecord: checked, with its SPS read for the size.
fn hevc_config(record: Bytes) -> Result<VideoConfig, CodecError> {
    if record.len() < 23 {
        return Err(CodecError::Truncated("hvcC"));
    }
    if record[0] != 1 {
        return Err(CodecError::Malformed("hvcC version"));
    }
    let mut at = 23;
    let mut size = None;
    for _ in 0..record[22] {
        let head = record.get(at..at + 3).ok_or(CodecError::Truncated("hvcC array"))?;
        let kind = head[0] & 0x3F;
        let count = u16::from_be_bytes([head[1], head[2]]);
        at += 3;
        for _ in 0..count {
            let len = record.get(at..at + 2).ok_or(CodecError::Truncated("hvcC NAL unit"))?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let nal = record.get(at + 2..at + 2 + len).ok_or(CodecError::Truncated("hvcC NAL unit"))?;
            if kind == 33 && size.is_none() {
                size = Some(hevc_sps_size(nal).ok_or(CodecError::Malformed("HEVC SPS"))?);
            }
            at += 2 + len;
        }
    }
    let (width, height) = size.ok_or(CodecError::Malformed("hvcC without SPS"))?;
    Ok(VideoConfig { codec: VideoCodec::Hevc, record, width, height })
}

/// An AV1CodecConfigurationRecord; the size comes from its sequence header OBU when
/// the record carries one.
fn av1_config(record: Bytes) -> Result<VideoConfig, CodecError> {
    let head = record.get(..4).ok_or(CodecError::Truncated("av1C"))?;
    if head[0] != 0x81 {
        return Err(CodecError::Malformed("av1C marker and version"));
    }
    let (width, height) = av1_sequence_size(&record[4..]).unwrap_or((0, 0));
    Ok(VideoConfig { codec: VideoCodec::Av1, record, width, height })
}

const AAC_RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// An AAC AudioSpecificConfig (ISO 14496-3 §1.6.2.1): object type, rate, channels.
fn aac_config(asc: Bytes) -> Result<AudioConfig, CodecError> {
    let mut bits = BitReader::new(&asc);
    let truncated = CodecError::Truncated("AudioSpecificConfig");
    let mut object_type = bits.bits(5).ok_or(truncated.clone())?;
    if object_type == 31 {
        object_type = 32 + bits.bits(6).ok_or(truncated.clone())?;
    }
    let index = bits.bits(4).ok_or(truncated.clone())?;
    let sample_rate = if index == 15 {
        bits.bits(24).ok_or(truncated.clone())?
    } else {
        *AAC_RATES.get(index as usize).ok_or(CodecError::Malformed("AAC sampling frequency index"))?
    };
    let channels = bits.bits(4).ok_or(truncated)?;
    if sample_rate == 0 || object_type == 0 {
        return Err(CodecError::Malformed("AudioSpecificConfig"));
    }
    Ok(AudioConfig {
        codec: AudioCodec::Aac,
        config: asc,
        sample_rate,
        channels: channels.max(1) as u16,
        object_type: object_type.min(255) as u8,
    })
}

/// An Opus identification header (`OpusHead`, RFC 7845 §5.1, little-endian) to the
/// `dOps` box body (big-endian, Opus in ISOBMFF §4.3.2).
fn opus_config(head: &[u8]) -> Result<AudioConfig, CodecError> {
    let fixed = head.get(..19).ok_or(CodecError::Truncated("OpusHead"))?;
    if &fixed[..8] != b"OpusHead" {
        return Err(CodecError::Malformed("OpusHead magic"));
    }
    let channels = fixed[9];
    let family = fixed[18];
    if channels == 0 {
        return Err(CodecError::Malformed("OpusHead channel count"));
    }
    let mut dops = vec![0, channels];
    dops.extend_from_slice(&u16::from_le_bytes([fixed[10], fixed[11]]).to_be_bytes());
    dops.extend_from_slice(&u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]).to_be_bytes());
    dops.extend_from_slice(&i16::from_le_bytes([fixed[16], fixed[17]]).to_be_bytes());
    dops.push(family);
    if family != 0 {
        let table =
            head.get(19..21 + usize::from(channels)).ok_or(CodecError::Truncated("OpusHead channel mapping"))?;
        dops.extend_from_slice(table);
    }
    Ok(AudioConfig {
        codec: AudioCodec::Opus,
        config: Bytes::from(dops),
        sample_rate: 48000,
        channels: u16::from(channels),
        object_type: 0,
    })
}

/// Most parameter sets of one kind an in-band configuration keeps (the first ones of
/// the keyframe, in order); `avcC` counts SPS in 5 bits. More are ignored.
const MAX_PARAMETER_SETS: usize = 31;

/// The NAL units of an H.264 or HEVC sample, in order: from an Annex-B byte stream
/// when the sample is one ([`is_annexb`]), else from its `length_size`-byte lengths.
/// `None` when it is neither. Lazy: nothing is allocated per NAL unit, so a hostile
/// sample of nothing but start codes costs no memory.
fn nal_units(data: &[u8], length_size: usize) -> Option<NalUnits<'_>> {
    if is_annexb(data, length_size) {
        Some(NalUnits::AnnexB(AnnexB::new(data)))
    } else if length_prefixed_ok(data, length_size) {
        Some(NalUnits::Lengths { data, length_size })
    } else {
        None
    }
}

/// Whether a sample is an Annex-B byte stream: it starts with a start code
/// (`00 00 01` or `00 00 00 01`) and does not read as well-formed `length_size`-byte
/// length-prefixed NAL units. The bytes alone decide, so every edge decides the same;
/// a length-prefixed sample whose first length happens to begin `00 00 01` (a NAL
/// unit of 256 to 511 bytes) stays length-prefixed.
pub fn is_annexb(data: &[u8], length_size: usize) -> bool {
    (data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1])) && !length_prefixed_ok(data, length_size)
}

/// Whether `length_size`-byte lengths cover `data` exactly, each NAL unit non-empty
/// with its forbidden zero bit clear.
fn length_prefixed_ok(data: &[u8], length_size: usize) -> bool {
    if !(1..=4).contains(&length_size) || data.is_empty() {
        return false;
    }
    let mut units = NalUnits::Lengths { data, length_size };
    let mut covered = 0;
    for nal in units.by_ref() {
        if nal[0] & 0x80 != 0 {
            return false;
        }
        covered += length_size + nal.len();
    }
    covered == data.len()
}

/// An iterator over NAL units; see [`nal_units`].
enum NalUnits<'a> {
    AnnexB(AnnexB<'a>),
    /// Stops at the first length that is zero or runs past the end.
    Lengths {
        data: &'a [u8],
        length_size: usize,
    },
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            NalUnits::AnnexB(units) => units.next(),
            NalUnits::Lengths { data, length_size } => {
                let len = data.get(..*length_size)?.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
                let nal = data.get(*length_size..*length_size + len).filter(|n| !n.is_empty())?;
                *data = &data[*length_size + len..];
                Some(nal)
            }
        }
    }
}

/// The NAL units of an Annex-B byte stream that starts with a start code: each runs
/// from after its start code to the next one, without trailing zero bytes; empty ones
/// are left out. (A NAL unit never contains `00 00 01`: emulation prevention.)
struct AnnexB<'a> {
    data: &'a [u8],
    /// Where the next NAL unit starts.
    at: usize,
}

impl<'a> AnnexB<'a> {
    fn new(data: &'a [u8]) -> Self {
        AnnexB { data, at: if data.starts_with(&[0, 0, 1]) { 3 } else { 4 } }
    }
}

impl<'a> Iterator for AnnexB<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.at < self.data.len() {
            let start = self.at;
            let code = self.data[start..].windows(3).position(|w| w == [0, 0, 1]);
            let mut end = code.map_or(self.data.len(), |i| start + i);
            self.at = code.map_or(self.data.len(), |i| start + i + 3);
            while end > start && self.data[end - 1] == 0 {
                end -= 1;
            }
            if end > start {
                return Some(&self.data[start..end]);
            }
        }
        None
    }
}

/// The NAL unit type: 5 bits of the first byte (H.264), 6 bits after the forbidden bit
/// (HEVC).
fn nal_type(codec: VideoCodec, nal: &[u8]) -> u8 {
    match codec {
        VideoCodec::Hevc => (nal[0] >> 1) & 0x3F,
        _ => nal[0] & 0x1F,
    }
}

/// Access unit delimiters: carried by some encoders, not part of an ISO BMFF sample.
fn is_access_unit_delimiter(codec: VideoCodec, nal: &[u8]) -> bool {
    match codec {
        VideoCodec::Avc => nal_type(codec, nal) == 9,
        VideoCodec::Hevc => nal_type(codec, nal) == 35,
        VideoCodec::Av1 => false,
    }
}

/// A video sample as fMP4 stores it: NAL units each behind its length in
/// `length_size` bytes. A sample already in that form comes back as it is
/// (zero-copy); an Annex-B one is rewritten: start codes become lengths, trailing
/// zeros and access unit delimiters go, parameter sets stay (ffmpeg's MP4 muxer keeps
/// them too, and decoders take them in band). AV1 samples pass through.
pub fn length_prefixed(codec: VideoCodec, data: Bytes, length_size: usize) -> Result<Bytes, CodecError> {
    if codec == VideoCodec::Av1 || !is_annexb(&data, length_size) {
        return Ok(data);
    }
    if !(1..=4).contains(&length_size) {
        return Err(CodecError::Malformed("NAL unit length size"));
    }
    // At most one more byte per NAL unit than the input (a 3-byte start code before a
    // 1-byte unit becomes a 4-byte length), and every unit takes at least 4 bytes.
    let mut out = Vec::with_capacity(data.len() + data.len() / 4 + 1);
    for nal in AnnexB::new(&data) {
        if is_access_unit_delimiter(codec, nal) {
            continue;
        }
        let len = u32::try_from(nal.len()).map_err(|_| CodecError::Malformed("NAL unit length"))?;
        if length_size < 4 && len >> (8 * length_size) != 0 {
            return Err(CodecError::Malformed("NAL unit longer than its length field"));
        }
        out.extend_from_slice(&len.to_be_bytes()[4 - length_size..]);
        out.extend_from_slice(nal);
    }
    if out.is_empty() {
        return Err(CodecError::Malformed("sample without NAL units"));
    }
    Ok(Bytes::from(out))
}

/// The track configuration a keyframe's in-band parameter sets give, for a stream
/// whose sequence header carries none ([`Video::ConfigInBand`]): H.264 SPS and PPS
/// (Annex-B or 4-byte length-prefixed) become an `avcC` with 4-byte lengths, its
/// profile, compatibility and level from the first SPS, as ffmpeg builds it from the
/// same frames; HEVC VPS, SPS and PPS become an `hvcC` ([`hevc_record`]). `None` when
/// the frame lacks one of them or its SPS does not parse.
pub fn inband_config(codec: VideoCodec, data: &[u8]) -> Option<VideoConfig> {
    let types: [u8; 3] = match codec {
        VideoCodec::Avc => [0, 7, 8],
        VideoCodec::Hevc => [32, 33, 34],
        VideoCodec::Av1 => return None,
    };
    // Parameter sets by type: VPS (HEVC only), SPS, PPS.
    let mut sets: [Vec<&[u8]>; 3] = Default::default();
    for nal in nal_units(data, 4)? {
        let kind = nal_type(codec, nal);
        let Some(set) = types.iter().position(|&t| t == kind && t != 0).map(|i| &mut sets[i]) else { continue };
        if nal.len() <= usize::from(u16::MAX) && set.len() < MAX_PARAMETER_SETS && !set.contains(&nal) {
            set.push(nal);
        }
    }
    match codec {
        VideoCodec::Avc => avc_record(&sets[1], &sets[2]),
        _ => hevc_record(&sets),
    }
}

/// An `avcC` (4-byte lengths) from in-band SPS and PPS.
fn avc_record(sps: &[&[u8]], pps: &[&[u8]]) -> Option<VideoConfig> {
    let first = *sps.first()?;
    if pps.is_empty() || first.len() < 4 {
        return None;
    }
    let info = avc_sps(first)?;
    let mut record = vec![1, first[1], first[2], first[3], 0xFF, 0xE0 | sps.len() as u8];
    for set in sps {
        record.extend_from_slice(&(set.len() as u16).to_be_bytes());
        record.extend_from_slice(set);
    }
    record.push(pps.len() as u8);
    for set in pps {
        record.extend_from_slice(&(set.len() as u16).to_be_bytes());
        record.extend_from_slice(set);
    }
    if matches!(first[1], 100 | 110 | 122 | 144) {
        // ISO/IEC 14496-15 §5.3.3.1.2: the high profiles' extension.
        record.push(0xFC | (info.chroma_format & 3) as u8);
        record.push(0xF8 | (info.bit_depth_luma_minus8 & 7) as u8);
        record.push(0xF8 | (info.bit_depth_chroma_minus8 & 7) as u8);
        record.push(0);
    }
    Some(VideoConfig { codec: VideoCodec::Avc, record: Bytes::from(record), width: info.width, height: info.height })
}

/// An `hvcC` (4-byte lengths) from in-band VPS, SPS and PPS, as ffmpeg writes it
/// except for what needs the VUI or the PPS parsed: `min_spatial_segmentation_idc`
/// and `parallelismType` are 0 (unknown), `avgFrameRate` 0 (unspecified).
fn hevc_record(sets: &[Vec<&[u8]>; 3]) -> Option<VideoConfig> {
    if sets.iter().any(Vec::is_empty) {
        return None;
    }
    let info = hevc_sps(sets[1][0])?;
    let mut record = vec![1];
    record.extend_from_slice(&info.general_profile_tier_level);
    record.extend_from_slice(&[0xF0, 0x00, 0xFC]);
    record.push(0xFC | (info.chroma_format & 3) as u8);
    record.push(0xF8 | (info.bit_depth_luma_minus8 & 7) as u8);
    record.push(0xF8 | (info.bit_depth_chroma_minus8 & 7) as u8);
    record.extend_from_slice(&[0, 0]);
    record.push((((info.sub_layers_minus1 + 1) & 7) << 3 | (info.temporal_id_nesting & 1) << 2 | 3) as u8);
    record.push(3);
    for (kind, set) in [32u8, 33, 34].into_iter().zip(sets) {
        record.push(kind);
        record.extend_from_slice(&(set.len() as u16).to_be_bytes());
        for nal in set {
            record.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            record.extend_from_slice(nal);
        }
    }
    Some(VideoConfig { codec: VideoCodec::Hevc, record: Bytes::from(record), width: info.width, height: info.height })
}

/// Reads bits MSB first from a NAL unit's payload with emulation prevention bytes
/// (`00 00 03`) removed.
struct BitReader {
    bytes: Vec<u8>,
    pos: usize,
}

impl BitReader {
    fn new(bytes: &[u8]) -> Self {
        BitReader { bytes: bytes.to_vec(), pos: 0 }
    }

    fn rbsp(nal: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            bytes.push(b);
        }
        BitReader { bytes, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = self.bytes.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos += n;
        (self.pos <= self.bytes.len() * 8).then_some(())
    }

    /// Unsigned Exp-Golomb.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)).min(u64::from(u32::MAX)) as u32)
    }

    /// Signed Exp-Golomb.
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 { k.div_ceil(2) as i32 } else { -((k / 2) as i32) })
    }
}

fn dimension(v: u64) -> Option<u16> {
    u16::try_from(v).ok().filter(|&v| v > 0)
}

/// Width and height of an H.264 SPS NAL unit (ITU-T H.264 §7.3.2.1.1).
fn avc_sps_size(nal: &[u8]) -> Option<(u16, u16)> {
    avc_sps(nal).map(|s| (s.width, s.height))
}

/// What an `avcC` needs from an H.264 SPS besides its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AvcSps {
    width: u16,
    height: u16,
    chroma_format: u32,
    bit_depth_luma_minus8: u32,
    bit_depth_chroma_minus8: u32,
}

/// Reads an H.264 SPS NAL unit (ITU-T H.264 §7.3.2.1.1) up to the frame cropping.
fn avc_sps(nal: &[u8]) -> Option<AvcSps> {
    let mut r = BitReader::rbsp(nal.get(1..)?);
    let profile = r.bits(8)?;
    r.skip(16)?;
    r.ue()?;
    let mut chroma = 1;
    let (mut depth_luma, mut depth_chroma) = (0, 0);
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma = r.ue()?;
        if chroma == 3 {
            r.skip(1)?;
        }
        depth_luma = r.ue()?;
        depth_chroma = r.ue()?;
        r.skip(1)?;
        if r.bit()? == 1 {
            for i in 0..if chroma == 3 { 12 } else { 8 } {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (i64::from(last) + i64::from(r.se()?)).rem_euclid(256) as i32;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?;
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.skip(1)?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?;
    r.skip(1)?;
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.skip(1)?;
    }
    r.skip(1)?;
    let (mut crop_x, mut crop_y) = (0u64, 0u64);
    if r.bit()? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (unit_x, unit_y) = match chroma {
            0 | 3 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            _ => (2, 2 - frame_mbs_only),
        };
        crop_x = unit_x * (u64::from(left) + u64::from(right));
        crop_y = unit_y * (u64::from(top) + u64::from(bottom));
    }
    let width = (width_mbs * 16).checked_sub(crop_x)?;
    let height = ((2 - frame_mbs_only) * height_units * 16).checked_sub(crop_y)?;
    Some(AvcSps {
        width: dimension(width)?,
        height: dimension(height)?,
        chroma_format: chroma,
        bit_depth_luma_minus8: depth_luma,
        bit_depth_chroma_minus8: depth_chroma,
    })
}

/// Width and height of an HEVC SPS NAL unit (ITU-T H.265 §7.3.2.2).
fn hevc_sps_size(nal: &[u8]) -> Option<(u16, u16)> {
    hevc_sps(nal).map(|s| (s.width, s.height))
}

/// What an `hvcC` needs from an HEVC SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HevcSps {
    width: u16,
    height: u16,
    /// `sps_max_sub_layers_minus1` and `sps_temporal_id_nesting_flag`.
    sub_layers_minus1: u32,
    temporal_id_nesting: u32,
    /// The general profile, tier and level: 96 bits, as `hvcC` carries them.
    general_profile_tier_level: [u8; 12],
    chroma_format: u32,
    bit_depth_luma_minus8: u32,
    bit_depth_chroma_minus8: u32,
}

/// Reads an HEVC SPS NAL unit (ITU-T H.265 §7.3.2.2) up to the bit depths.
fn hevc_sps(nal: &[u8]) -> Option<HevcSps> {
    let mut r = BitReader::rbsp(nal.get(2..)?);
    r.skip(4)?;
    let sub_layers = r.bits(3)?;
    let temporal_id_nesting = r.bit()?;
    // profile_tier_level(1, sub_layers)
    let mut general_profile_tier_level = [0u8; 12];
    for b in &mut general_profile_tier_level {
        *b = r.bits(8)? as u8;
    }
    let mut present = Vec::new();
    for _ in 0..sub_layers {
        present.push((r.bit()?, r.bit()?));
    }
    if sub_layers > 0 {
        r.skip(2 * (8 - sub_layers as usize))?;
    }
    for (profile, level) in present {
        r.skip(88 * profile as usize + 8 * level as usize)?;
    }
    r.ue()?;
    let chroma = r.ue()?;
    if chroma == 3 {
        r.skip(1)?;
    }
    let width = u64::from(r.ue()?);
    let height = u64::from(r.ue()?);
    let (mut crop_x, mut crop_y) = (0, 0);
    if r.bit()? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let unit_x = if chroma == 1 || chroma == 2 { 2 } else { 1 };
        let unit_y = if chroma == 1 { 2 } else { 1 };
        crop_x = unit_x * (u64::from(left) + u64::from(right));
        crop_y = unit_y * (u64::from(top) + u64::from(bottom));
    }
    let width = dimension(width.checked_sub(crop_x)?)?;
    let height = dimension(height.checked_sub(crop_y)?)?;
    // Bit depths are read only when the size parsed; a stream whose SPS ends early
    // still has a size.
    let bit_depth_luma_minus8 = r.ue().unwrap_or(0);
    let bit_depth_chroma_minus8 = r.ue().unwrap_or(0);
    Some(HevcSps {
        width,
        height,
        sub_layers_minus1: sub_layers,
        temporal_id_nesting,
        general_profile_tier_level,
        chroma_format: chroma,
        bit_depth_luma_minus8,
        bit_depth_chroma_minus8,
    })
}

/// Max frame size from the sequence header OBU among `obus` (AV1 §5.5.1).
fn av1_sequence_size(mut obus: &[u8]) -> Option<(u16, u16)> {
    while let Some((&header, rest)) = obus.split_first() {
        let kind = (header >> 3) & 0x0F;
        let rest = if header & 0x04 != 0 { rest.get(1..)? } else { rest };
        let (size, rest) = if header & 0x02 != 0 { leb128(rest)? } else { (rest.len(), rest) };
        let payload = rest.get(..size)?;
        if kind == 1 {
            return av1_sequence_header_size(payload);
        }
        obus = &rest[size..];
    }
    None
}

fn leb128(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(8) {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

fn av1_sequence_header_size(payload: &[u8]) -> Option<(u16, u16)> {
    let mut r = BitReader::new(payload);
    r.skip(4)?; // seq_profile, still_picture
    if r.bit()? == 1 {
        r.skip(5)?; // reduced_still_picture_header: seq_level_idx[0]
    } else {
        let mut buffer_delay_bits = 0;
        let timing_info = r.bit()? == 1;
        let mut decoder_model_info = false;
        if timing_info {
            r.skip(64)?;
            if r.bit()? == 1 {
                // num_ticks_per_picture_minus_1: uvlc
                let mut zeros = 0;
                while r.bit()? == 0 {
                    zeros += 1;
                    if zeros >= 32 {
                        return None;
                    }
                }
                r.skip(zeros)?;
            }
            decoder_model_info = r.bit()? == 1;
            if decoder_model_info {
                buffer_delay_bits = r.bits(5)? as usize + 1;
                r.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay = r.bit()? == 1;
        for _ in 0..=r.bits(5)? {
            r.skip(12)?;
            if r.bits(5)? > 7 {
                r.skip(1)?;
            }
            if decoder_model_info && r.bit()? == 1 {
                r.skip(2 * buffer_delay_bits + 1)?;
            }
            if initial_display_delay && r.bit()? == 1 {
                r.skip(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = u64::from(r.bits(width_bits)?) + 1;
    let height = u64::from(r.bits(height_bits)?) + 1;
    Some((dimension(width)?, dimension(height)?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sequence headers captured from ffmpeg 5.1 (`-f lavfi -i testsrc2=size=320x240`,
    /// libx264, aac, libx265, libsvtav1, libopus).
    pub(crate) const AVC_SEQUENCE_TAG: &str =
        "17000000000164000dffe100196764000dacd94141fb0110000003001000000303c0f142996001000668ebe3cb22c0fdf8f800";
    pub(crate) const AAC_SEQUENCE_TAG: &str = "af00120856e500";
    /// The same encoder through ffmpeg's `tee` muxer without `-flags +global_header`:
    /// the sequence header is empty and the first keyframe is Annex-B, SPS and PPS
    /// (4-byte start codes) first. Kept: the tag header, SPS, PPS and the first 16
    /// bytes of the IDR slice (3-byte start code); its SEI and the rest of the slice
    /// are cut.
    pub(crate) const AVC_EMPTY_SEQUENCE_TAG: &str = "1700000000";
    pub(crate) const AVC_ANNEXB_KEYFRAME_TAG: &str = "1701000043\
        000000016764000dacd94141fb0110000003001000000303c0f1429960\
        0000000168ebe3cb22c0\
        000001658884009fd9674d6278ad3ceb112683";
    pub(crate) const HVCC: &str =
        "0101600000009000000000003cf000fcfdf8f800000f03200001001840010c01ffff016000000300900000\
        03000003003c959809210001002a42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003003c\
        1022000100074401c172b46240";
    pub(crate) const AV1C: &str = "81000c000a0b000000043cffbc02f80040";
    pub(crate) const DOPS: &str = "000101380000bb80000000";

    pub(crate) fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        Bytes::from((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>())
    }

    /// An Enhanced RTMP tag: `[1 | frame type | packet type]`, FourCC, body.
    pub(crate) fn enhanced(b0: u8, fourcc: &[u8; 4], body: &[u8]) -> Bytes {
        let mut tag = vec![b0];
        tag.extend_from_slice(fourcc);
        tag.extend_from_slice(body);
        Bytes::from(tag)
    }

    fn video_config(tag: Bytes) -> VideoConfig {
        match parse_video(&tag).unwrap() {
            Video::Config(c) => c,
            other => panic!("not a config: {other:?}"),
        }
    }

    fn audio_config(tag: Bytes) -> AudioConfig {
        match parse_audio(&tag).unwrap() {
            Audio::Config(c) => c,
            other => panic!("not a config: {other:?}"),
        }
    }

    #[test]
    fn avc_sequence_header_gives_avcc_size_and_codec_string() {
        let c = video_config(hex(AVC_SEQUENCE_TAG));
        assert_eq!(c.codec, VideoCodec::Avc);
        assert_eq!((c.width, c.height), (320, 240));
        assert_eq!(c.codecs(), "avc1.64000d");
        assert_eq!(&c.record[..], &hex(AVC_SEQUENCE_TAG)[5..], "the record is the tag's body after its header");
        // The same record through Enhanced RTMP.
        let e = video_config(enhanced(0x90, b"avc1", &c.record));
        assert_eq!(e, c);
    }

    #[test]
    fn avc_frames_carry_their_composition_time() {
        let tag = Bytes::from_static(&[0x27, 0x01, 0x00, 0x00, 0x42, 0, 0, 0, 1, 0x41]);
        let Video::Sample(_, s) = parse_video(&tag).unwrap() else { panic!() };
        assert_eq!(s.composition_ms, 0x42);
        assert_eq!(&s.data[..], &[0, 0, 0, 1, 0x41]);
        let negative = Bytes::from_static(&[0x27, 0x01, 0xFF, 0xFF, 0xFE, 0x41]);
        let Video::Sample(_, s) = parse_video(&negative).unwrap() else { panic!() };
        assert_eq!(s.composition_ms, -2);
        assert_eq!(parse_video(&Bytes::from_static(&[0x17, 0x02, 0, 0, 0])), Ok(Video::Skip), "end of sequence");
    }

    fn sample(tag: &Bytes) -> Sample {
        match parse_video(tag).unwrap() {
            Video::Sample(VideoCodec::Avc, s) => s,
            other => panic!("not an AVC sample: {other:?}"),
        }
    }

    #[test]
    fn annexb_keyframe_gives_the_avcc_ffmpeg_writes_and_length_prefixed_nal_units() {
        assert_eq!(parse_video(&hex(AVC_EMPTY_SEQUENCE_TAG)), Ok(Video::ConfigInBand(VideoCodec::Avc)));
        assert_eq!(
            parse_video(&enhanced(0x90, b"avc1", &[])),
            Ok(Video::ConfigInBand(VideoCodec::Avc)),
            "the same through Enhanced RTMP"
        );
        let key = sample(&hex(AVC_ANNEXB_KEYFRAME_TAG));
        assert!(is_annexb(&key.data, 4));
        let config = inband_config(VideoCodec::Avc, &key.data).expect("SPS and PPS in band");
        // The record ffmpeg writes for the same encoder with a global header: the
        // profile, compatibility and level of the SPS, and the High profile extension.
        assert_eq!(config, video_config(hex(AVC_SEQUENCE_TAG)));
        assert_eq!(config.codecs(), "avc1.64000d");
        let sps = &hex(AVC_ANNEXB_KEYFRAME_TAG)[9..34];
        let pps = &hex(AVC_ANNEXB_KEYFRAME_TAG)[38..44];
        let idr = &hex(AVC_ANNEXB_KEYFRAME_TAG)[47..];
        let expected = [&[0, 0, 0, 25][..], sps, &[0, 0, 0, 6], pps, &[0, 0, 0, 16], idr].concat();
        assert_eq!(&length_prefixed(VideoCodec::Avc, key.data.clone(), 4).unwrap()[..], &expected[..]);
        // Already length-prefixed: the same bytes, not a copy.
        let converted = Bytes::from(expected);
        let again = length_prefixed(VideoCodec::Avc, converted.clone(), 4).unwrap();
        assert_eq!(again.as_ptr(), converted.as_ptr());
        assert_eq!(inband_config(VideoCodec::Avc, &converted), Some(config), "parameter sets behind lengths too");
        // An inter frame has none.
        let inter = hex("270100008500000001419a236c49ffb7ee3d1a1b7ebabb74");
        assert_eq!(inband_config(VideoCodec::Avc, &sample(&inter).data), None);
    }

    #[test]
    fn hevc_parameter_sets_in_band_give_the_hvcc_ffmpeg_writes() {
        assert_eq!(parse_video(&enhanced(0x90, b"hvc1", &[])), Ok(Video::ConfigInBand(VideoCodec::Hevc)));
        // The VPS, SPS and PPS of ffmpeg's record, as an Annex-B keyframe with an AUD
        // first and an IDR slice head after them.
        let record = hex(HVCC);
        let mut at = 23;
        let mut keyframe = vec![0, 0, 0, 1, 0x46, 0x01, 0x10];
        for _ in 0..record[22] {
            at += 3;
            let len = usize::from(u16::from_be_bytes([record[at], record[at + 1]]));
            keyframe.extend_from_slice(&[0, 0, 0, 1]);
            keyframe.extend_from_slice(&record[at + 2..at + 2 + len]);
            at += 2 + len;
        }
        keyframe.extend_from_slice(&[0, 0, 1, 0x26, 0x01, 0xAF, 0x12]);
        let config = inband_config(VideoCodec::Hevc, &keyframe).expect("VPS, SPS and PPS in band");
        assert_eq!(config, video_config(enhanced(0x90, b"hvc1", &hex(HVCC))));
        assert_eq!(config.codecs(), "hvc1.1.6.L60.90");
        let samples = length_prefixed(VideoCodec::Hevc, Bytes::from(keyframe), 4).unwrap();
        assert_eq!(inband_config(VideoCodec::Hevc, &samples), Some(config), "the same behind lengths");
        assert_eq!(inband_config(VideoCodec::Hevc, &[0, 0, 1, 0x26, 0x01, 0xAF]), None, "no parameter sets");
    }

    #[test]
    fn annexb_rewriting_drops_delimiters_and_trailing_zeros_and_keeps_lengths_as_the_track_says() {
        // AUD, then a slice with a trailing zero before a 4-byte start code, then a
        // slice after a 3-byte one, trailing zeros at the end.
        let data =
            Bytes::from_static(&[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x41, 0xAA, 0, 0, 0, 0, 1, 0x01, 0xBB, 0, 0]);
        let out = length_prefixed(VideoCodec::Avc, data.clone(), 4).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 2, 0x41, 0xAA, 0, 0, 0, 2, 0x01, 0xBB]);
        let out = length_prefixed(VideoCodec::Avc, data.clone(), 2).unwrap();
        assert_eq!(&out[..], &[0, 2, 0x41, 0xAA, 0, 2, 0x01, 0xBB], "2-byte lengths, as the avcC says");
        // HEVC: AUD is type 35 (0x46 0x01).
        let hevc = Bytes::from_static(&[0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 1, 0x26, 0x01, 0xAF]);
        assert_eq!(&length_prefixed(VideoCodec::Hevc, hevc, 4).unwrap()[..], &[0, 0, 0, 3, 0x26, 0x01, 0xAF]);
        // A NAL unit too long for 1-byte lengths, and a sample of delimiters only.
        let long = Bytes::from([&[0, 0, 1, 0x41][..], &[0xAA; 300]].concat());
        assert!(length_prefixed(VideoCodec::Avc, long, 1).is_err());
        assert!(length_prefixed(VideoCodec::Avc, Bytes::from_static(&[0, 0, 1, 0x09, 0xF0]), 4).is_err());
    }

    #[test]
    fn a_length_prefixed_sample_that_starts_like_a_start_code_stays_as_it_is() {
        // One NAL unit of 0x100 + 0x41 bytes: its length reads `00 00 01 41`.
        let mut data = vec![0, 0, 1, 0x41, 0x41];
        data.resize(4 + 0x141, 0x55);
        let data = Bytes::from(data);
        assert!(!is_annexb(&data, 4));
        assert_eq!(length_prefixed(VideoCodec::Avc, data.clone(), 4).unwrap(), data);
        // Cut by one byte it no longer reads as lengths: Annex-B.
        assert!(is_annexb(&data[..data.len() - 1], 4));
    }

    #[test]
    fn aac_sequence_header_gives_rate_channels_and_codec_string() {
        let c = audio_config(hex(AAC_SEQUENCE_TAG));
        assert_eq!((c.codec, c.sample_rate, c.channels, c.object_type), (AudioCodec::Aac, 44100, 1, 2));
        assert_eq!(c.codecs(), "mp4a.40.2");
        assert_eq!(&c.config[..], &hex(AAC_SEQUENCE_TAG)[2..]);
        let Audio::Sample(_, s) = parse_audio(&Bytes::from_static(&[0xAF, 0x01, 0x21, 0x10])).unwrap() else {
            panic!()
        };
        assert_eq!(&s.data[..], &[0x21, 0x10]);
        // An escaped object type (31, then 6 bits: 0 → 32) and an explicit 24-bit rate.
        let c = aac_config(Bytes::from_static(&[0xF8, 0x1F, 0xFA, 0x00, 0x01, 0x00])).unwrap();
        assert_eq!(c.object_type, 32);
        assert_eq!(c.sample_rate, 0b1111_1101_0000_0000_0000_0000);
    }

    #[test]
    fn enhanced_hevc_gives_hvcc_size_codec_string_and_samples() {
        let c = video_config(enhanced(0x90, b"hvc1", &hex(HVCC)));
        assert_eq!(c.codec, VideoCodec::Hevc);
        assert_eq!((c.width, c.height), (320, 240));
        assert_eq!(c.codecs(), "hvc1.1.6.L60.90");
        // CodedFrames: SI24 composition time, then NAL units.
        let Video::Sample(_, s) = parse_video(&enhanced(0x91, b"hvc1", &[0, 0, 33, 0, 0, 0, 1, 0x26])).unwrap() else {
            panic!()
        };
        assert_eq!((s.composition_ms, &s.data[..]), (33, &[0, 0, 0, 1, 0x26][..]));
        // CodedFramesX: no composition time.
        let Video::Sample(_, s) = parse_video(&enhanced(0xA3, b"hvc1", &[0, 0, 0, 1, 0x02])).unwrap() else { panic!() };
        assert_eq!((s.composition_ms, &s.data[..]), (0, &[0, 0, 0, 1, 0x02][..]));
        // Wrapped in a ModEx packet (size-1 = 2, then [modex type | CodedFramesX]).
        let modex = Bytes::from_static(&[0x97, 0x02, 0, 0, 0, 0x03, b'h', b'v', b'c', b'1', 0x11]);
        let Video::Sample(_, s) = parse_video(&modex).unwrap() else { panic!() };
        assert_eq!(&s.data[..], &[0x11]);
    }

    #[test]
    fn enhanced_av1_gives_av1c_size_and_codec_string() {
        let c = video_config(enhanced(0x90, b"av01", &hex(AV1C)));
        assert_eq!(c.codec, VideoCodec::Av1);
        assert_eq!((c.width, c.height), (320, 240));
        assert_eq!(c.codecs(), "av01.0.00M.08");
        let Video::Sample(codec, s) = parse_video(&enhanced(0x91, b"av01", &[0x12, 0x00, 0x32, 0x01, 0x0A])).unwrap()
        else {
            panic!()
        };
        assert_eq!(codec, VideoCodec::Av1);
        assert_eq!(
            (s.composition_ms, &s.data[..]),
            (0, &[0x32, 0x01, 0x0A][..]),
            "no composition time; the temporal delimiter is removed"
        );
    }

    #[test]
    fn enhanced_opus_head_becomes_dops() {
        // OpusHead: 1 channel, pre-skip 312, 48 kHz, gain 0, family 0 (little-endian).
        let head = [b"OpusHead".as_slice(), &[1, 1, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]].concat();
        let c = audio_config(enhanced(0x90, b"Opus", &head));
        assert_eq!((c.codec, c.sample_rate, c.channels), (AudioCodec::Opus, 48000, 1));
        assert_eq!(c.config, hex(DOPS), "the dOps ffmpeg writes for the same stream");
        assert_eq!(c.codecs(), "opus");
        // Config 31 (CELT fullband, 20 ms), one frame.
        assert_eq!(opus_packet_samples(&[0xF8]), Some(960));
        assert_eq!(opus_packet_samples(&[0xF9]), Some(1920), "code 1: two frames");
        assert_eq!(opus_packet_samples(&[0x03 << 3 | 3, 3]), Some(3 * 2880), "code 3: frame count byte");
    }

    #[test]
    fn unsupported_and_malformed_bodies_are_errors() {
        assert_eq!(parse_video(&Bytes::from_static(&[0x12, 0])), Err(CodecError::Unsupported("legacy video codec")));
        assert_eq!(parse_video(&enhanced(0x91, b"vp09", &[0])), Err(CodecError::Unsupported("video FourCC")));
        assert_eq!(parse_audio(&Bytes::from_static(&[0x2F, 0xFF])), Err(CodecError::Unsupported("legacy audio codec")));
        assert_eq!(parse_video(&Bytes::from_static(&[0x17, 0, 0, 0, 0, 2])), Err(CodecError::Truncated("avcC")));
        assert_eq!(
            parse_audio(&enhanced(0x90, b"Opus", b"OpusTail...........")),
            Err(CodecError::Malformed("OpusHead magic"))
        );
    }

    #[test]
    fn every_truncation_and_corruption_of_real_headers_is_an_error_not_a_panic() {
        let tags = [
            hex(AVC_SEQUENCE_TAG),
            hex(AAC_SEQUENCE_TAG),
            enhanced(0x90, b"hvc1", &hex(HVCC)),
            enhanced(0x90, b"av01", &hex(AV1C)),
            enhanced(
                0x90,
                b"Opus",
                &[b"OpusHead".as_slice(), &[1, 2, 0, 0, 0x80, 0xBB, 0, 0, 0, 0, 1, 1, 1, 0, 1]].concat(),
            ),
        ];
        let annexb = hex(AVC_ANNEXB_KEYFRAME_TAG);
        for len in 0..annexb.len() {
            let data = annexb.slice(5.min(len)..len);
            for size in 0..=5 {
                let _ = length_prefixed(VideoCodec::Avc, data.clone(), size);
                let _ = length_prefixed(VideoCodec::Hevc, data.clone(), size);
            }
            let _ = inband_config(VideoCodec::Avc, &data);
        }
        for i in 5..annexb.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = annexb[5..].to_vec();
                bad[i - 5] ^= flip;
                let _ = length_prefixed(VideoCodec::Avc, Bytes::from(bad.clone()), 4);
                let _ = inband_config(VideoCodec::Avc, &bad);
            }
        }
        for tag in &tags {
            for len in 0..tag.len() {
                let _ = parse_video(&tag.slice(..len));
                let _ = parse_audio(&tag.slice(..len));
            }
            for i in 0..tag.len() {
                for flip in [0x01u8, 0x80, 0xFF] {
                    let mut bad = tag.to_vec();
                    bad[i] ^= flip;
                    let bad = Bytes::from(bad);
                    let _ = parse_video(&bad);
                    let _ = parse_audio(&bad);
                }
            }
        }
        // Nothing but start codes: no NAL unit, and nothing allocated per start code.
        let codes = Bytes::from([0u8, 0, 1].repeat(1 << 20));
        assert!(length_prefixed(VideoCodec::Avc, codes.clone(), 4).is_err());
        assert_eq!(inband_config(VideoCodec::Avc, &codes), None);
        // An SPS of all ones: Exp-Golomb values that never end must not loop or panic.
        assert_eq!(avc_sps_size(&[0x67, 0x64, 0, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(hevc_sps_size(&[0x42, 0x01, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(av1_sequence_size(&[0x0A, 0x7F]), None);
    }
}
