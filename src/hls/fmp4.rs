//! ISO BMFF box writer for CMAF: the init segment (`ftyp` + `moov` with one `trak` per
//! track and `mvex`) and fragments (`moof` with one `traf` per track, then `mdat`).
//!
//! Bytes are a pure function of the arguments: no clock, no counters, no creation
//! times, so every edge writes the same bytes for the same media. Knows nothing of
//! FLV, marks or playlists.

use bytes::Bytes;

use super::codec::{AudioCodec, AudioConfig, VideoCodec, VideoConfig};

/// Timescale of every video track: 90 kHz, as MPEG systems use.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Track id of the video track in init segments and fragments.
pub const VIDEO_TRACK: u32 = 1;
/// Track id of the audio track.
pub const AUDIO_TRACK: u32 = 2;

/// `sample_flags` of a sync sample (depends on no other).
pub const SYNC_SAMPLE: u32 = 0x0200_0000;
/// `sample_flags` of a sample that depends on others and is not a sync sample.
pub const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

/// One track of an init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackConfig {
    Video(VideoConfig),
    Audio(AudioConfig),
}

impl TrackConfig {
    pub fn track_id(&self) -> u32 {
        match self {
            TrackConfig::Video(_) => VIDEO_TRACK,
            TrackConfig::Audio(_) => AUDIO_TRACK,
        }
    }

    /// Units per second of the track's decode times and durations.
    pub fn timescale(&self) -> u32 {
        match self {
            TrackConfig::Video(_) => VIDEO_TIMESCALE,
            TrackConfig::Audio(a) => a.sample_rate,
        }
    }
}

/// One sample of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentSample {
    /// In the track's timescale.
    pub duration: u32,
    /// [`SYNC_SAMPLE`] or [`NON_SYNC_SAMPLE`].
    pub flags: u32,
    /// Presentation minus decode time, in the track's timescale.
    pub composition_offset: i32,
    pub data: Bytes,
}

/// One track's samples in a fragment.
#[derive(Debug, Clone, Copy)]
pub struct TrackRun<'a> {
    pub track_id: u32,
    /// Decode time of the first sample, in the track's timescale (`tfdt`).
    pub base_decode_time: u64,
    pub samples: &'a [FragmentSample],
}

/// Appends boxes to a buffer; a box's size is patched when it is closed.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new() -> Self {
        Writer { buf: Vec::with_capacity(1024) }
    }

    fn open(&mut self, kind: &[u8; 4]) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.buf.extend_from_slice(kind);
        at
    }

    fn open_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> usize {
        let at = self.open(kind);
        self.u32((u32::from(version) << 24) | (flags & 0x00FF_FFFF));
        at
    }

    fn close(&mut self, at: usize) {
        let size = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    fn matrix(&mut self) {
        for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000u32] {
            self.u32(v);
        }
    }
}

/// An init segment for `tracks` (video first when present).
pub fn init_segment(tracks: &[TrackConfig]) -> Bytes {
    let mut w = Writer::new();
    let ftyp = w.open(b"ftyp");
    w.bytes(b"iso6");
    w.u32(0);
    for brand in [b"iso6", b"cmfc", b"mp41"] {
        w.bytes(brand);
    }
    w.close(ftyp);

    let moov = w.open(b"moov");
    let mvhd = w.open_full(b"mvhd", 0, 0);
    w.u32(0); // creation_time
    w.u32(0); // modification_time
    w.u32(1000); // timescale
    w.u32(0); // duration
    w.u32(0x0001_0000); // rate
    w.u16(0x0100); // volume
    w.zeros(10);
    w.matrix();
    w.zeros(24); // pre_defined
    w.u32(AUDIO_TRACK + 1); // next_track_ID
    w.close(mvhd);
    for track in tracks {
        trak(&mut w, track);
    }
    let mvex = w.open(b"mvex");
    for track in tracks {
        let trex = w.open_full(b"trex", 0, 0);
        w.u32(track.track_id());
        w.u32(1); // default_sample_description_index
        w.u32(0);
        w.u32(0);
        w.u32(0);
        w.close(trex);
    }
    w.close(mvex);
    w.close(moov);
    Bytes::from(w.buf)
}

fn trak(w: &mut Writer, track: &TrackConfig) {
    let (is_video, width, height) = match track {
        TrackConfig::Video(v) => (true, v.width, v.height),
        TrackConfig::Audio(_) => (false, 0, 0),
    };
    let trak = w.open(b"trak");
    let tkhd = w.open_full(b"tkhd", 0, 3); // enabled, in movie
    w.u32(0);
    w.u32(0);
    w.u32(track.track_id());
    w.u32(0);
    w.u32(0); // duration
    w.zeros(8);
    w.u16(0); // layer
    w.u16(0); // alternate_group
    w.u16(if is_video { 0 } else { 0x0100 });
    w.u16(0);
    w.matrix();
    w.u32(u32::from(width) << 16);
    w.u32(u32::from(height) << 16);
    w.close(tkhd);

    let mdia = w.open(b"mdia");
    let mdhd = w.open_full(b"mdhd", 0, 0);
    w.u32(0);
    w.u32(0);
    w.u32(track.timescale());
    w.u32(0);
    w.u16(0x55C4); // "und"
    w.u16(0);
    w.close(mdhd);
    let hdlr = w.open_full(b"hdlr", 0, 0);
    w.u32(0);
    w.bytes(if is_video { b"vide" } else { b"soun" });
    w.zeros(12);
    w.bytes(if is_video { b"VideoHandler\0" } else { b"SoundHandler\0" });
    w.close(hdlr);

    let minf = w.open(b"minf");
    if is_video {
        let vmhd = w.open_full(b"vmhd", 0, 1);
        w.zeros(8);
        w.close(vmhd);
    } else {
        let smhd = w.open_full(b"smhd", 0, 0);
        w.zeros(4);
        w.close(smhd);
    }
    let dinf = w.open(b"dinf");
    let dref = w.open_full(b"dref", 0, 0);
    w.u32(1);
    let url = w.open_full(b"url ", 0, 1); // media in the same file
    w.close(url);
    w.close(dref);
    w.close(dinf);

    let stbl = w.open(b"stbl");
    let stsd = w.open_full(b"stsd", 0, 0);
    w.u32(1);
    match track {
        TrackConfig::Video(v) => visual_entry(w, v),
        TrackConfig::Audio(a) => audio_entry(w, a),
    }
    w.close(stsd);
    for kind in [b"stts", b"stsc", b"stco"] {
        let b = w.open_full(kind, 0, 0);
        w.u32(0);
        w.close(b);
    }
    let stsz = w.open_full(b"stsz", 0, 0);
    w.u32(0);
    w.u32(0);
    w.close(stsz);
    w.close(stbl);
    w.close(minf);
    w.close(mdia);
    w.close(trak);
}

fn visual_entry(w: &mut Writer, v: &VideoConfig) {
    let (entry, config) = match v.codec {
        VideoCodec::Avc => (b"avc1", b"avcC"),
        VideoCodec::Hevc => (b"hvc1", b"hvcC"),
        VideoCodec::Av1 => (b"av01", b"av1C"),
    };
    let at = w.open(entry);
    w.zeros(6);
    w.u16(1); // data_reference_index
    w.zeros(16); // pre_defined, reserved
    w.u16(v.width);
    w.u16(v.height);
    w.u32(0x0048_0000); // 72 dpi
    w.u32(0x0048_0000);
    w.u32(0);
    w.u16(1); // frame_count
    w.zeros(32); // compressorname
    w.u16(0x0018); // depth
    w.u16(0xFFFF); // pre_defined = -1
    let c = w.open(config);
    w.bytes(&v.record);
    w.close(c);
    w.close(at);
}

fn audio_entry(w: &mut Writer, a: &AudioConfig) {
    let at = w.open(match a.codec {
        AudioCodec::Aac => b"mp4a",
        AudioCodec::Opus => b"Opus",
    });
    w.zeros(6);
    w.u16(1); // data_reference_index
    w.zeros(8);
    w.u16(a.channels);
    w.u16(16); // samplesize
    w.u32(0);
    // 16.16 fixed point; rates above 65535 do not fit and are written as 0 (the
    // timescale and the decoder configuration carry the real one).
    w.u32(if a.sample_rate <= 0xFFFF { a.sample_rate << 16 } else { 0 });
    match a.codec {
        AudioCodec::Aac => esds(w, &a.config),
        AudioCodec::Opus => {
            let dops = w.open(b"dOps");
            w.bytes(&a.config);
            w.close(dops);
        }
    }
    w.close(at);
}

/// An `esds` box (ISO 14496-1 ES_Descriptor) around an AudioSpecificConfig.
fn esds(w: &mut Writer, asc: &[u8]) {
    fn descriptor(w: &mut Writer, tag: u8, len: usize) {
        w.u8(tag);
        // Four bytes of size, 7 bits each, as most writers do.
        for shift in [21, 14, 7] {
            w.u8(0x80 | ((len >> shift) & 0x7F) as u8);
        }
        w.u8((len & 0x7F) as u8);
    }
    let specific = 5 + asc.len();
    let decoder_config = 5 + 13 + specific;
    let sl = 5 + 1;
    let es = 3 + decoder_config + sl;
    let at = w.open_full(b"esds", 0, 0);
    descriptor(w, 0x03, es);
    w.u16(AUDIO_TRACK as u16); // ES_ID
    w.u8(0); // flags
    descriptor(w, 0x04, 13 + specific);
    w.u8(0x40); // MPEG-4 audio
    w.u8(0x15); // audio stream, upstream 0, reserved 1
    w.bytes(&[0, 0, 0]); // bufferSizeDB
    w.u32(0); // maxBitrate
    w.u32(0); // avgBitrate
    descriptor(w, 0x05, asc.len());
    w.bytes(asc);
    descriptor(w, 0x06, 1);
    w.u8(0x02);
    w.close(at);
}

/// A fragment: `moof` (`mfhd` with `sequence`, then a `traf` per run: `tfhd` with
/// default-base-is-moof, a 64-bit `tfdt`, a version 1 `trun` with every sample's
/// duration, size, flags and composition offset) and one `mdat` with the runs' samples
/// in the same order. Runs without samples are left out.
pub fn fragment(sequence: u32, runs: &[TrackRun<'_>]) -> Bytes {
    let mut w = Writer::new();
    let moof = w.open(b"moof");
    let mfhd = w.open_full(b"mfhd", 0, 0);
    w.u32(sequence);
    w.close(mfhd);
    let mut offsets = Vec::new();
    for run in runs.iter().filter(|r| !r.samples.is_empty()) {
        let traf = w.open(b"traf");
        let tfhd = w.open_full(b"tfhd", 0, 0x02_0000);
        w.u32(run.track_id);
        w.close(tfhd);
        let tfdt = w.open_full(b"tfdt", 1, 0);
        w.u64(run.base_decode_time);
        w.close(tfdt);
        // data-offset, then per sample: duration, size, flags, composition offset.
        let trun = w.open_full(b"trun", 1, 0x00_0001 | 0x00_0100 | 0x00_0200 | 0x00_0400 | 0x00_0800);
        w.u32(run.samples.len() as u32);
        offsets.push(w.buf.len());
        w.u32(0);
        for s in run.samples {
            w.u32(s.duration);
            w.u32(s.data.len() as u32);
            w.u32(s.flags);
            w.u32(s.composition_offset as u32);
        }
        w.close(trun);
        w.close(traf);
    }
    w.close(moof);
    let moof_size = w.buf.len() - moof;
    let data: usize = runs.iter().flat_map(|r| r.samples).map(|s| s.data.len()).sum();
    w.buf.reserve(8 + data);
    let mdat = w.open(b"mdat");
    let mut offset = moof_size + 8;
    for (run, at) in runs.iter().filter(|r| !r.samples.is_empty()).zip(offsets) {
        w.buf[at..at + 4].copy_from_slice(&(offset as u32).to_be_bytes());
        for s in run.samples {
            w.bytes(&s.data);
            offset += s.data.len();
        }
    }
    w.close(mdat);
    Bytes::from(w.buf)
}
