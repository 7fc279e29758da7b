//! HLS VOD of one FLV file (`docs/vod.md`, "Edges: HTTP"): an index of the file's
//! tags cut into segments at keyframes ([`VodIndex::build`]), then the playlist, the
//! init segment and each segment (`moof` + `mdat`) on demand, read from the file with
//! positional reads.
//!
//! The media goes through the live packager ([`Packager`]): each segment is packaged
//! as one live segment of a single part, with marks made from the index, so sample
//! durations, composition offsets, the Annex-B rewrite, in-band parameter sets and
//! every box are what a live edge writes. The one thing VOD adds: a segment's audio
//! continues where the previous segment's ended ([`Packager::continue_audio_at`]),
//! so decode times run on without a gap across the whole file.
//!
//! Blocking (file reads): the caller runs it on the blocking pool. Knows no sockets,
//! no HTTP and no cache.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use bytes::Bytes;

use crate::hls::codec::{self, Audio, AudioConfig, Video};
use crate::hls::fmp4::VIDEO_TIMESCALE;
use crate::hls::mark::{Boundary, HlsMark, SegmentOpen};
use crate::hls::packager::{self, Packager, DEFAULT_VIDEO_DURATION, MAX_PART_BYTES};
use crate::hls::{playlist, Packaged};
use crate::media::Frame;
use crate::rtmp::flv;

use crate::rtmp::flv::{TagHeader, BACK_POINTER, TAG_HEADER, TAG_SCRIPT, TAG_VIDEO};

/// Bytes read from the file at once while indexing (more for a larger tag).
const READ_CHUNK: usize = 256 << 10;

/// Most audio and video frames one file may have: 16.7 million, about 63 hours at
/// 30 fps video and 44.1 kHz AAC, an index of 384 MiB. A file with more is refused
/// ([`VodHlsError::TooManyFrames`]) rather than indexed without bound.
pub(crate) const MAX_FRAMES: usize = 1 << 24;

/// [`MAX_PART_BYTES`] in MiB, for the error's text.
const MAX_SEGMENT_MIB: usize = MAX_PART_BYTES >> 20;

/// Why a file cannot be served as HLS VOD.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VodHlsError {
    /// The file does not start with an FLV header.
    #[error("not an FLV file (bad header)")]
    NotFlv,
    /// The file ends inside the tag that starts at this byte.
    #[error("truncated FLV file: the tag at byte {0} runs past the end")]
    Truncated(u64),
    /// A tag of an unknown type, or whose back pointer disagrees with its size.
    #[error("corrupt FLV file: {what} at byte {at}")]
    Corrupt { at: u64, what: &'static str },
    /// More than [`MAX_FRAMES`] audio and video frames.
    #[error("more than {MAX_FRAMES} frames")]
    TooManyFrames,
    /// Neither a video track (H.264, HEVC or AV1 with a configuration and a keyframe)
    /// nor an audio track (AAC or Opus with a configuration).
    #[error("no playable track (H.264, HEVC, AV1, AAC or Opus with its configuration)")]
    NoPlayableTrack,
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    /// A segment number past the last segment.
    #[error("no segment {0}")]
    SegmentOutOfRange(usize),
    /// The segment's media is more than the packager puts in one fragment
    /// ([`MAX_PART_BYTES`]).
    #[error("segment {0} holds more than {MAX_SEGMENT_MIB} MiB of media")]
    SegmentTooLarge(usize),
}

/// The index of one FLV file's tags, cut into segments at keyframes.
///
/// **Timeline.** Decode times are the file's timestamps, made monotonic per track (a
/// step back is held at the last value) and counted from the file's first frame (the
/// earliest of the first audio and the first video frame kept), so the first
/// segment's `tfdt` is 0 or close to it. 0-based rather than the file's own
/// timestamps because a recording's timestamps are the publisher's (hours in, or
/// rebased at a reconnect): the playlist's timeline starts at 0, and a player whose
/// media times agree with it seeks where the playlist says; [`VodIndex::segment_start`]
/// is on the same timeline.
///
/// **Cuts.** With a video track, segment 0 opens on the first keyframe and also holds
/// the audio before it in the file (video before it is dropped: it cannot be decoded);
/// each segment ends at the first keyframe at or after `target` from its start, the
/// last one at the end of the file. Without video, segments open on audio frames by
/// the same rule. Segment `n` is `{n}.m4s`, numbered from 0.
///
/// **Cost.** 24 bytes per audio or video frame (offset, size, time, audio samples,
/// kind), 40 per segment, plus the first codec headers and the init segment: at 30 fps
/// video and 44.1 kHz AAC (73 frames a second), 1.75 KB a second, about 6.3 MB an hour.
/// A hostile file of the smallest frames (17-byte AAC tags) costs at most 24/17 (1.41)
/// times its length, and at most [`MAX_FRAMES`] frames are indexed; while the file is
/// read, the growing list may hold up to twice its final size.
pub(crate) struct VodIndex {
    /// Audio and video frames (not headers, not script data) of the tracks played,
    /// segment after segment; in file order but for segment 0, whose first keyframe
    /// comes first.
    tags: Vec<Tag>,
    segments: Vec<Segment>,
    /// The first sequence headers of the tracks played (tag bodies), given to the
    /// packager of every segment: later changes are not followed (`docs/vod.md`).
    video_header: Option<Bytes>,
    audio_header: Option<Bytes>,
    init: Bytes,
    duration: Duration,
    target_ms: u32,
}

/// One audio or video frame of the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag {
    /// Offset of the tag's body in the file.
    pub(crate) body_at: u64,
    /// Bytes of the body (FLV: at most 2^24 - 1).
    pub(crate) size: u32,
    /// Position on the index's timeline, ms.
    pub(crate) time_ms: u32,
    /// Audio: samples of the decoded frame (the codec's frame duration).
    samples: u32,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Keyframe,
    Video,
    Audio,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Index of its first tag in [`VodIndex::tags`]; it ends where the next begins.
    first: usize,
    /// Start and length on the timeline, ms (`EXTINF`).
    start_ms: u64,
    duration_ms: u64,
    /// Where its audio continues, in audio samples (`None`: from its first frame's time).
    audio_seed: Option<u64>,
}

impl VodIndex {
    /// Reads the whole file once (blocking: the caller runs it on the blocking pool),
    /// keeping only per-tag offsets/sizes/timestamps/keyframe flags and the codec
    /// headers — never the media in memory.
    pub(crate) fn build(file: &File, len: u64, target: Duration) -> Result<VodIndex, VodHlsError> {
        let scan = Scan::read(file, len)?;
        let target_ms = u32::try_from(target.as_millis()).unwrap_or(u32::MAX);
        scan.index(file, target_ms)
    }

    /// `#EXTM3U`, `#EXT-X-VERSION` as the live playlist uses, `#EXT-X-PLAYLIST-TYPE:VOD`,
    /// `#EXT-X-TARGETDURATION` (ceil of the longest segment), `#EXT-X-MEDIA-SEQUENCE:0`,
    /// `#EXT-X-MAP:URI="init.mp4"`, one `#EXTINF` + `{n}.m4s` per segment,
    /// `#EXT-X-ENDLIST`. `query`: appended to every URI when `Some` (so a token in the
    /// playlist URL carries to segments), as the live playlist does.
    pub(crate) fn playlist(&self, query: Option<&str>) -> String {
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        let longest = self.segments.iter().map(|s| s.duration_ms).max().unwrap_or(0);
        let mut out = String::with_capacity(160 + 32 * self.segments.len());
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-TARGETDURATION:{}\n\
             #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-MAP:URI=\"init.mp4{q}\"\n",
            playlist::VERSION,
            longest.div_ceil(1000).max(1),
        );
        for (n, segment) in self.segments.iter().enumerate() {
            let _ = write!(out, "#EXTINF:{},\n{n}.m4s{q}\n", playlist::seconds(segment.duration_ms));
        }
        out.push_str("#EXT-X-ENDLIST\n");
        out
    }

    /// The init segment (`ftyp` + `moov`) for the file's tracks.
    pub(crate) fn init(&self) -> Bytes {
        self.init.clone()
    }

    /// Segment `n` (`moof` + `mdat`), reading its tags from `file` with positional
    /// reads (blocking).
    pub(crate) fn segment(&self, file: &File, n: usize) -> Result<Bytes, VodHlsError> {
        let segment = self.segments.get(n).ok_or(VodHlsError::SegmentOutOfRange(n))?;
        let next = self.segments.get(n + 1);
        let end = next.map_or(self.tags.len(), |s| s.first);
        let mut packager = self.packager();
        if let Some(seed) = segment.audio_seed {
            packager.continue_audio_at(seed);
        }
        let mut events = Vec::new();
        for (i, tag) in self.tags[segment.first..end].iter().enumerate() {
            let mut buf = vec![0; tag.size as usize];
            file.read_exact_at(&mut buf, tag.body_at)?;
            let mut frame = tag.frame(Bytes::from(buf));
            frame.hls = Some(self.mark(n, tag, i == 0));
            events.extend(packager.push(&frame));
        }
        match next {
            // Where the next segment opens is what the last video sample lasts until.
            // Only its kind and time matter: the part is complete before the packager
            // looks at its body.
            Some(next) => {
                let opener = &self.tags[next.first];
                let mut frame = opener.frame(match opener.kind {
                    Kind::Audio => Bytes::from_static(&[0xAF, 1]),
                    _ => Bytes::from_static(&[0x17, 1, 0, 0, 0]),
                });
                frame.hls = Some(self.mark(n + 1, opener, true));
                events.extend(packager.push(&frame));
            }
            None => events.extend(packager.finish()),
        }
        let part = events.into_iter().find_map(|e| match e {
            Packaged::Part(part) if part.msn == n as u64 => Some(part.bytes),
            _ => None,
        });
        part.ok_or(VodHlsError::SegmentTooLarge(n))
    }

    pub(crate) fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Total duration: to the end of the last sample of any track (for RTMP
    /// `onMetaData` later).
    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }

    /// The frames, in the order they are played (RTMP VOD reads them one by one).
    pub(crate) fn frames(&self) -> &[Tag] {
        &self.tags
    }

    /// The first video and audio sequence headers (tag bodies) of the tracks played.
    pub(crate) fn headers(&self) -> [Option<&Bytes>; 2] {
        [self.video_header.as_ref(), self.audio_header.as_ref()]
    }

    /// Where a play from `ms` on the timeline starts: the last keyframe at or before
    /// it (the first one if it is earlier; the last one if `ms` is past the end), so a
    /// seek lands within one GOP of its target; without video, the last audio frame
    /// at or before it.
    pub(crate) fn start_for(&self, ms: u64) -> usize {
        let n = self.segments.partition_point(|s| s.start_ms <= ms).saturating_sub(1);
        let Some(segment) = self.segments.get(n) else { return 0 };
        let end = self.segments.get(n + 1).map_or(self.tags.len(), |s| s.first);
        // Segments open on keyframes (audio frames without video): the segment's
        // first frame always qualifies.
        let opens = self.tags[0].kind;
        let mut start = segment.first;
        for (i, tag) in self.tags.iter().enumerate().take(end).skip(segment.first) {
            if tag.kind == opens && u64::from(tag.time_ms) <= ms {
                start = i;
            }
        }
        start
    }

    /// Where segment `n` starts on the timeline (tests).
    #[cfg(test)]
    pub(crate) fn segment_start(&self, n: usize) -> Option<Duration> {
        self.segments.get(n).map(|s| Duration::from_millis(s.start_ms))
    }

    /// A packager that has seen the headers every segment uses.
    fn packager(&self) -> Packager {
        let mut packager = Packager::new();
        if let Some(header) = &self.video_header {
            packager.push(&Frame::video(0, header.clone()));
        }
        if let Some(header) = &self.audio_header {
            packager.push(&Frame::audio(0, header.clone()));
        }
        packager
    }

    /// The mark of `tag` in segment `n`: one part per segment.
    fn mark(&self, n: usize, tag: &Tag, opens: bool) -> HlsMark {
        let open =
            SegmentOpen { discontinuity: 0, wall_ms: 0, target_ms: self.target_ms, part_target_ms: self.target_ms };
        HlsMark {
            msn: n as u64,
            part: 0,
            time_ms: u64::from(tag.time_ms),
            boundary: opens.then_some(Boundary::Segment(open)),
        }
    }
}

impl Tag {
    pub(crate) fn is_audio(&self) -> bool {
        self.kind == Kind::Audio
    }

    #[cfg(test)]
    pub(crate) fn is_keyframe(&self) -> bool {
        self.kind == Kind::Keyframe
    }

    fn frame(&self, body: Bytes) -> Frame {
        match self.kind {
            Kind::Audio => Frame::audio(self.time_ms, body),
            Kind::Keyframe | Kind::Video => Frame::video(self.time_ms, body),
        }
    }

    /// Index into per-track state: video 0, audio 1.
    fn track(&self) -> usize {
        usize::from(self.kind == Kind::Audio)
    }
}

/// What one pass over the file found: every audio and video frame, with its FLV
/// timestamp for now, and the first sequence header of each track.
struct Scan {
    tags: Vec<Tag>,
    video_header: Option<Bytes>,
    audio_header: Option<Bytes>,
    audio: Option<AudioConfig>,
}

impl Scan {
    fn read(file: &File, len: u64) -> Result<Scan, VodHlsError> {
        let mut reader = Reader { file, len, start: 0, buf: Vec::new() };
        let start = flv::FILE_HEADER.len() as u64;
        if len < start {
            return Err(VodHlsError::NotFlv);
        }
        if !flv::is_file_header(reader.read(0, start as usize)?) {
            return Err(VodHlsError::NotFlv);
        }
        let mut scan = Scan { tags: Vec::new(), video_header: None, audio_header: None, audio: None };
        let mut at = start;
        while at < len {
            if len - at < TAG_HEADER as u64 {
                return Err(VodHlsError::Truncated(at));
            }
            let mut h = [0; TAG_HEADER];
            h.copy_from_slice(reader.read(at, TAG_HEADER)?);
            let header = TagHeader::parse(&h);
            let total = header.total();
            // Checked before anything of the size is read or allocated.
            if total > len - at {
                return Err(VodHlsError::Truncated(at));
            }
            if !header.known_type() {
                return Err(VodHlsError::Corrupt { at, what: "tag of unknown type" });
            }
            let mut back = [0; BACK_POINTER];
            back.copy_from_slice(reader.read(at + total - BACK_POINTER as u64, BACK_POINTER)?);
            if !header.back_pointer_matches(back) {
                return Err(VodHlsError::Corrupt { at, what: "wrong back pointer" });
            }
            let body_at = at + TAG_HEADER as u64;
            if header.tag_type != TAG_SCRIPT {
                let body = Bytes::copy_from_slice(reader.read(body_at, header.size as usize)?);
                scan.add(header.tag_type, header.timestamp, body_at, body)?;
            }
            at += total;
        }
        Ok(scan)
    }

    /// Keeps what the packager would use of one audio or video tag.
    fn add(&mut self, tag_type: u8, timestamp: u32, body_at: u64, body: Bytes) -> Result<(), VodHlsError> {
        let size = body.len() as u32;
        let tag = |kind, samples| Tag { body_at, size, time_ms: timestamp, samples, kind };
        let tag = if tag_type == TAG_VIDEO {
            let frame = Frame::video(timestamp, body);
            match codec::parse_video(&frame.payload) {
                Ok(Video::Config(_) | Video::ConfigInBand(_)) => {
                    self.video_header.get_or_insert(frame.payload);
                    return Ok(());
                }
                Ok(Video::Sample(..)) => tag(if frame.keyframe { Kind::Keyframe } else { Kind::Video }, 0),
                // Not a picture, or not one the packager parses: it would skip it.
                Ok(Video::Skip) | Err(_) => return Ok(()),
            }
        } else {
            match codec::parse_audio(&body) {
                Ok(Audio::Config(config)) => {
                    if self.audio_header.is_none() {
                        self.audio_header = Some(body);
                        self.audio = Some(config);
                    }
                    return Ok(());
                }
                // Audio before its configuration, of another codec or without a
                // duration: the packager would skip it.
                Ok(Audio::Sample(c, sample)) => {
                    let Some(config) = self.audio.as_ref().filter(|a| a.codec == c) else { return Ok(()) };
                    let Some(samples) = codec::audio_frame_samples(config, &sample.data) else { return Ok(()) };
                    tag(Kind::Audio, samples)
                }
                Ok(Audio::Skip) | Err(_) => return Ok(()),
            }
        };
        if self.tags.len() >= MAX_FRAMES {
            return Err(VodHlsError::TooManyFrames);
        }
        self.tags.push(tag);
        Ok(())
    }

    /// Whether the video can be played: a configuration in its header, or (an empty
    /// header or none) in band in its first keyframe, as the packager finds it.
    fn video_playable(&self, file: &File) -> Result<bool, VodHlsError> {
        let Some(first) = self.tags.iter().find(|t| t.kind == Kind::Keyframe) else { return Ok(false) };
        if let Some(header) = &self.video_header {
            if matches!(codec::parse_video(header), Ok(Video::Config(_))) {
                return Ok(true);
            }
        }
        let mut body = vec![0; first.size as usize];
        file.read_exact_at(&mut body, first.body_at)?;
        Ok(match codec::parse_video(&Bytes::from(body)) {
            Ok(Video::Sample(c, sample)) => codec::inband_config(c, &sample.data).is_some(),
            _ => false,
        })
    }

    /// Cuts the frames into segments and packages the init segment.
    fn index(mut self, file: &File, target_ms: u32) -> Result<VodIndex, VodHlsError> {
        let has_video = self.video_playable(file)?;
        let has_audio = self.audio.is_some();
        self.tags.retain(|t| if t.kind == Kind::Audio { has_audio } else { has_video });
        if has_video {
            // The first keyframe opens segment 0, with the audio before it; the video
            // before it cannot be decoded.
            let k = self.tags.iter().position(|t| t.kind == Kind::Keyframe).unwrap_or(0);
            self.tags[..=k].rotate_right(1);
            let mut i = 0;
            self.tags.retain(|t| {
                i += 1;
                i == 1 || i > k + 1 || t.kind == Kind::Audio
            });
        }
        if self.tags.is_empty() {
            return Err(VodHlsError::NoPlayableTrack);
        }
        self.tags.shrink_to_fit();

        // Monotonic per track, then from the first frame.
        let mut last = [0u32; 2];
        for tag in &mut self.tags {
            let slot = &mut last[tag.track()];
            tag.time_ms = tag.time_ms.max(*slot);
            *slot = tag.time_ms;
        }
        let mut first = [None; 2];
        for tag in &self.tags {
            first[tag.track()].get_or_insert(tag.time_ms);
        }
        let zero = first.into_iter().flatten().min().unwrap_or(0);
        for tag in &mut self.tags {
            tag.time_ms -= zero;
        }

        let opens = |t: &Tag| if has_video { t.kind == Kind::Keyframe } else { t.kind == Kind::Audio };
        let mut segments = vec![Segment { first: 0, start_ms: 0, duration_ms: 0, audio_seed: None }];
        for (i, tag) in self.tags.iter().enumerate().skip(1) {
            let start = segments.last().map_or(0, |s| s.start_ms);
            if opens(tag) && u64::from(tag.time_ms) >= start + u64::from(target_ms) {
                segments.push(Segment { first: i, start_ms: u64::from(tag.time_ms), duration_ms: 0, audio_seed: None });
            }
        }

        // Where each segment's audio continues, and where the audio and video end, as
        // the packager times them.
        let rate = self.audio.as_ref().map_or(1, |a| a.sample_rate.max(1));
        let mut audio_next = None;
        let mut video = (None, None); // the last segment's last two video decode times
        for n in 0..segments.len() {
            let end = segments.get(n + 1).map_or(self.tags.len(), |s| s.first);
            segments[n].audio_seed = audio_next;
            let mut previous_audio = None;
            video = (None, None);
            for tag in &self.tags[segments[n].first..end] {
                let time = u64::from(tag.time_ms);
                if tag.kind == Kind::Audio {
                    let dts = packager::audio_dts(audio_next, previous_audio, time, rate, tag.samples);
                    previous_audio = Some(dts);
                    audio_next = Some(dts.saturating_add(u64::from(tag.samples)));
                } else {
                    let dts = video.1.map_or(packager::video_dts(time), |p: u64| packager::video_dts(time).max(p + 1));
                    video = (video.1, Some(dts));
                }
            }
        }
        let video_end = match video {
            (Some(before), Some(last)) => Some(last + (last - before)),
            (None, Some(last)) => Some(last + u64::from(DEFAULT_VIDEO_DURATION)),
            _ => None,
        };
        let duration = video_end
            .map(|t| at_rate(t, VIDEO_TIMESCALE))
            .max(audio_next.map(|s| at_rate(s, rate)))
            .unwrap_or_default();
        let end_ms = duration.as_micros().div_ceil(1000) as u64;
        for n in 0..segments.len() {
            let until = segments.get(n + 1).map_or(end_ms, |s| s.start_ms);
            segments[n].duration_ms = until.saturating_sub(segments[n].start_ms);
        }

        let mut index = VodIndex {
            tags: self.tags,
            segments,
            video_header: if has_video { self.video_header } else { None },
            audio_header: if has_audio { self.audio_header } else { None },
            init: Bytes::new(),
            duration,
            target_ms,
        };
        // The init segment is the one the packager makes for segment 0.
        let opener = index.tags[0];
        let mut body = vec![0; opener.size as usize];
        file.read_exact_at(&mut body, opener.body_at)?;
        let mut frame = opener.frame(Bytes::from(body));
        frame.hls = Some(index.mark(0, &opener, true));
        let events = index.packager().push(&frame);
        index.init = events
            .into_iter()
            .find_map(|e| if let Packaged::Init(init) = e { Some(init.bytes) } else { None })
            .ok_or(VodHlsError::NoPlayableTrack)?;
        Ok(index)
    }
}

/// `units` of a timescale of `rate` per second, as a duration.
fn at_rate(units: u64, rate: u32) -> Duration {
    let nanos = u128::from(units) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
}

/// Positional reads of the file through one window, so indexing reads it in large
/// pieces whatever the tags' sizes. Never reads past `len`.
struct Reader<'a> {
    file: &'a File,
    len: u64,
    /// Offset of `buf`'s first byte.
    start: u64,
    buf: Vec<u8>,
}

impl Reader<'_> {
    /// `n` bytes at `at`; the caller has checked that they are within `len`.
    fn read(&mut self, at: u64, n: usize) -> Result<&[u8], VodHlsError> {
        let end = at + n as u64;
        if at < self.start || end > self.start + self.buf.len() as u64 {
            let want = (n.max(READ_CHUNK) as u64).min(self.len - at) as usize;
            self.buf.resize(want, 0);
            self.start = at;
            if let Err(e) = self.file.read_exact_at(&mut self.buf, at) {
                self.buf.clear();
                return Err(match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => VodHlsError::Truncated(at),
                    _ => VodHlsError::Io(e),
                });
            }
        }
        let from = (at - self.start) as usize;
        Ok(&self.buf[from..from + n])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use super::*;
    use crate::bench::synth::{self, StreamShape, Synth, SynthFrame};
    use crate::hls::codec::tests::{hex, AVC_SEQUENCE_TAG};
    use crate::hls::fmp4::{AUDIO_TRACK, SYNC_SAMPLE, VIDEO_TRACK};
    use crate::hls::packager::tests::{boxes, child};
    use crate::media::FrameKind;
    use crate::origin::recording::flv_file;

    /// The FLV file of `frames`.
    pub(crate) fn flv(frames: &[Frame]) -> Vec<u8> {
        let mut out = flv::FILE_HEADER.to_vec();
        for frame in frames {
            out.extend_from_slice(&flv_file::tag(frame));
        }
        out
    }

    pub(crate) fn temp_file(bytes: &[u8]) -> (File, u64) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        (file, bytes.len() as u64)
    }

    /// The synthetic stream's metadata and AAC header, and libx264's AVC header (the
    /// synthetic one's SPS is too short for the packager to read a picture size).
    fn headers() -> [Frame; 3] {
        let (meta, _, aac) = synth::headers();
        [Frame::metadata(0, meta), Frame::video(0, hex(AVC_SEQUENCE_TAG)), Frame::audio(0, aac)]
    }

    /// `seconds` of the synthetic H.264 + AAC stream (a keyframe every `gop` frames at
    /// `fps`), headers and metadata first.
    pub(crate) fn synthetic(seconds: u64, fps: u32, gop: u32) -> Vec<Frame> {
        let mut frames = headers().to_vec();
        let shape = StreamShape { video_kbps: 300, fps, gop, keyframe_ratio: 4, audio: true };
        let mut synth = Synth::new(shape, Instant::now());
        loop {
            let (due, frame) = synth.next_frame();
            if due >= Duration::from_secs(seconds) {
                return frames;
            }
            frames.push(match frame {
                SynthFrame::Video { timestamp, payload, .. } => Frame::video(timestamp, payload),
                SynthFrame::Audio { timestamp, payload } => Frame::audio(timestamp, payload),
            });
        }
    }

    fn count(frames: &[Frame], kind: FrameKind) -> usize {
        frames.iter().filter(|f| f.kind == kind && !f.header).count()
    }

    /// One track's run in a segment: track id, `tfdt`, each sample's duration and flags.
    struct Run {
        track: u32,
        tfdt: u64,
        samples: Vec<(u32, u32)>,
    }

    /// The runs of a segment, which must be exactly `moof` + `mdat`.
    fn runs(segment: &[u8]) -> Vec<Run> {
        let top = boxes(segment);
        assert_eq!(top.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [*b"moof", *b"mdat"]);
        let u32_at = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        boxes(top[0].1)
            .into_iter()
            .filter(|(kind, _)| kind == b"traf")
            .map(|(_, traf)| {
                let trun = child(traf, b"trun");
                let samples = (0..u32_at(trun, 4) as usize)
                    .map(|i| (u32_at(trun, 12 + 16 * i), u32_at(trun, 20 + 16 * i)))
                    .collect();
                let tfdt = u64::from_be_bytes(child(traf, b"tfdt")[4..12].try_into().unwrap());
                Run { track: u32_at(child(traf, b"tfhd"), 4), tfdt, samples }
            })
            .collect()
    }

    fn starts_ms(index: &VodIndex) -> Vec<u128> {
        (0..index.segments()).map(|n| index.segment_start(n).unwrap().as_millis()).collect()
    }

    #[test]
    fn segments_open_on_the_first_keyframe_at_or_after_the_target() {
        // A keyframe every 1.2 s: the 2 s target cuts at 2.4, 4.8, 7.2 and 9.6 s.
        let frames = synthetic(10, 25, 30);
        let (file, len) = temp_file(&flv(&frames));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        assert_eq!(starts_ms(&index), [0, 2400, 4800, 7200, 9600]);
        assert_eq!(index.segment_start(5), None);
        // A keyframe every second: every other one.
        let (file, len) = temp_file(&flv(&synthetic(10, 25, 25)));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        assert_eq!(starts_ms(&index), [0, 2000, 4000, 6000, 8000]);
        for n in 0..index.segments() {
            let runs = runs(&index.segment(&file, n).unwrap());
            let video = runs.iter().find(|r| r.track == VIDEO_TRACK).unwrap();
            assert_eq!(video.samples[0].1, SYNC_SAMPLE, "segment {n} opens on a keyframe");
            assert_eq!(video.samples.iter().filter(|s| s.1 == SYNC_SAMPLE).count(), 2, "two GOPs in segment {n}");
        }
    }

    #[test]
    fn a_play_starts_on_the_last_keyframe_at_or_before_its_position() {
        // A keyframe every 1.2 s, segments of 2.4 s: keyframes inside segments count.
        let (file, len) = temp_file(&flv(&synthetic(10, 25, 30)));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        let at = |ms| {
            let tag = index.frames()[index.start_for(ms)];
            assert!(tag.is_keyframe(), "{ms} ms starts on a keyframe");
            tag.time_ms
        };
        for (ms, keyframe) in [(0, 0), (1199, 0), (1200, 1200), (3599, 2400), (5000, 4800), (9700, 9600)] {
            assert_eq!(at(ms), keyframe, "from {ms} ms");
        }
        assert_eq!(at(3_600_000), 9600, "past the end: the last keyframe");
        // Audio only: the last audio frame at or before.
        let frames: Vec<Frame> = synthetic(3, 25, 25).into_iter().filter(|f| f.kind != FrameKind::Video).collect();
        let (file, len) = temp_file(&flv(&frames));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        let tag = index.frames()[index.start_for(1000)];
        assert!(tag.is_audio() && tag.time_ms <= 1000 && tag.time_ms > 970, "{tag:?}");
    }

    /// `(EXTINF in ms, URI)` of each segment of a playlist.
    fn listed(playlist: &str) -> Vec<(u64, String)> {
        let lines: Vec<&str> = playlist.lines().collect();
        lines
            .windows(2)
            .filter_map(|w| {
                let secs = w[0].strip_prefix("#EXTINF:")?.strip_suffix(',')?;
                let (s, ms) = secs.split_once('.').unwrap();
                Some((s.parse::<u64>().unwrap() * 1000 + ms.parse::<u64>().unwrap(), w[1].to_string()))
            })
            .collect()
    }

    #[test]
    fn the_playlist_lists_every_segment_of_a_finished_stream() {
        let (file, len) = temp_file(&flv(&synthetic(10, 25, 30)));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        let text = index.playlist(Some("st=1.2.abc"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..6],
            [
                "#EXTM3U",
                "#EXT-X-VERSION:6",
                "#EXT-X-PLAYLIST-TYPE:VOD",
                "#EXT-X-TARGETDURATION:3",
                "#EXT-X-MEDIA-SEQUENCE:0",
                "#EXT-X-MAP:URI=\"init.mp4?st=1.2.abc\"",
            ]
        );
        assert_eq!(lines.last(), Some(&"#EXT-X-ENDLIST"));
        let segments = listed(&text);
        let uris: Vec<&str> = segments.iter().map(|(_, uri)| uri.as_str()).collect();
        assert_eq!(
            uris,
            ["0.m4s?st=1.2.abc", "1.m4s?st=1.2.abc", "2.m4s?st=1.2.abc", "3.m4s?st=1.2.abc", "4.m4s?st=1.2.abc"]
        );
        let durations: Vec<u64> = segments.iter().map(|(ms, _)| *ms).collect();
        assert_eq!(durations[..4], [2400, 2400, 2400, 2400]);
        // The file's last audio frame (#430, at 9 984.7 ms) ends at 10 007.8 ms.
        assert_eq!(index.duration().as_micros(), 441_344 * 1_000_000 / 44_100);
        let sum: u64 = durations.iter().sum();
        assert!(sum.abs_diff(index.duration().as_millis() as u64) <= 1, "{sum} ms listed, {:?}", index.duration());
        assert_eq!(lines.len(), 6 + 2 * 5 + 1, "nothing else");
        assert!(index.playlist(None).contains("\n0.m4s\n"));
    }

    /// Checks that the segments hold `video` and `audio` samples in all and that each
    /// track's decode times run on across segments without a gap; returns where each
    /// track ends, in its timescale.
    fn check_segments(index: &VodIndex, file: &File, video: usize, audio: usize) -> BTreeMap<u32, u64> {
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for n in 0..index.segments() {
            for run in runs(&index.segment(file, n).unwrap()) {
                let end = ends.entry(run.track).or_insert(run.tfdt);
                assert_eq!(
                    run.tfdt,
                    *end,
                    "track {} of segment {n} starts where segment {} ended",
                    run.track,
                    n.max(1) - 1
                );
                *end += run.samples.iter().map(|s| u64::from(s.0)).sum::<u64>();
                *counts.entry(run.track).or_default() += run.samples.len();
            }
        }
        let expected: BTreeMap<u32, usize> =
            [(VIDEO_TRACK, video), (AUDIO_TRACK, audio)].into_iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counts, expected, "every frame of the file, once");
        ends
    }

    #[test]
    fn init_and_segments_are_well_formed_and_hold_every_frame_once() {
        let frames = synthetic(10, 25, 30);
        let (file, len) = temp_file(&flv(&frames));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        let init = index.init();
        let top = boxes(&init);
        assert_eq!(top.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [*b"ftyp", *b"moov"]);
        assert_eq!(boxes(top[1].1).iter().filter(|(k, _)| k == b"trak").count(), 2);
        let ends = check_segments(&index, &file, count(&frames, FrameKind::Video), count(&frames, FrameKind::Audio));
        // Both start at 0 and end where the index says the file does.
        let first = runs(&index.segment(&file, 0).unwrap());
        assert!(first.iter().all(|r| r.tfdt == 0), "0-based decode times");
        assert_eq!(at_rate(ends[&AUDIO_TRACK], 44_100), index.duration());
        assert_eq!(at_rate(ends[&VIDEO_TRACK], VIDEO_TIMESCALE), Duration::from_millis(10_000));
        assert!(matches!(index.segment(&file, 5), Err(VodHlsError::SegmentOutOfRange(5))));
    }

    #[test]
    fn audio_before_the_first_keyframe_is_kept_and_video_before_it_dropped() {
        let mut frames = synthetic(4, 25, 25);
        for f in frames.iter_mut().filter(|f| !f.header) {
            f.timestamp += 100;
        }
        let aac = |ts: u32| Frame::audio(ts, Bytes::from_static(&[0xAF, 1, 0x21, 0x10, 0x04]));
        let inter = Frame::video(40, Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]));
        frames.splice(3..3, [aac(0), inter, aac(23), aac(46)]);
        let (file, len) = temp_file(&flv(&frames));
        let index = VodIndex::build(&file, len, Duration::from_secs(2)).unwrap();
        assert_eq!(starts_ms(&index), [0, 2100]);
        check_segments(&index, &file, count(&frames, FrameKind::Video) - 1, count(&frames, FrameKind::Audio));
        let first = runs(&index.segment(&file, 0).unwrap());
        let tfdt: BTreeMap<u32, u64> = first.iter().map(|r| (r.track, r.tfdt)).collect();
        assert_eq!(tfdt, BTreeMap::from([(VIDEO_TRACK, 100 * 90), (AUDIO_TRACK, 0)]), "from the first frame, audio");
    }

    #[test]
    fn audio_only_files_are_cut_on_audio_frames() {
        let (_, _, aac) = synth::headers();
        let mut frames = vec![Frame::audio(0, aac)];
        for n in 0..300u64 {
            let ts = (n * 1024 * 1000 / 44_100) as u32;
            frames.push(Frame::audio(ts, Bytes::from(vec![0xAF, 1, 0x21, n as u8])));
        }
        let (file, len) = temp_file(&flv(&frames));
        let index = VodIndex::build(&file, len, Duration::from_secs(1)).unwrap();
        let starts = starts_ms(&index);
        assert_eq!(starts.len(), 7, "{starts:?}");
        for pair in starts.windows(2) {
            assert!((1000..1024).contains(&(pair[1] - pair[0])), "the first audio frame 1 s on: {starts:?}");
        }
        let ends = check_segments(&index, &file, 0, 300);
        assert_eq!(ends[&AUDIO_TRACK], 300 * 1024, "sample-exact across segments");
        assert!(!index.playlist(None).is_empty());
    }

    #[test]
    fn the_index_costs_24_bytes_a_frame() {
        assert_eq!(std::mem::size_of::<Tag>(), 24, "docs/vod.md and VodIndex say so");
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_errors() {
        let build = |bytes: &[u8]| {
            let (file, len) = temp_file(bytes);
            VodIndex::build(&file, len, Duration::from_secs(2)).map(|_| ())
        };
        assert!(matches!(build(b"GIF89a, not a video at all"), Err(VodHlsError::NotFlv)));
        assert!(matches!(build(b"FLV"), Err(VodHlsError::NotFlv)));
        let good = flv(&synthetic(3, 25, 25));
        build(&good).unwrap();
        for cut in [good.len() - 1, good.len() - 7, 13 + 5, 13 + 30] {
            assert!(matches!(build(&good[..cut]), Err(VodHlsError::Truncated(_))), "cut at {cut}");
        }
        // A tag claiming 16 MiB in a file of 40 bytes: refused before it is read.
        let mut huge = flv::FILE_HEADER.to_vec();
        huge.extend_from_slice(&[TAG_VIDEO, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x17, 1, 0, 0, 0]);
        assert!(matches!(build(&huge), Err(VodHlsError::Truncated(13))));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0xFF;
        assert!(matches!(build(&flipped), Err(VodHlsError::Corrupt { what: "wrong back pointer", .. })));
        let mut unknown = good.clone();
        unknown[13] = 7;
        assert!(matches!(build(&unknown), Err(VodHlsError::Corrupt { at: 13, .. })));
        // Headers alone, and codecs fMP4 does not carry here (Sorenson H.263, MP3).
        assert!(matches!(build(&flv(&headers())), Err(VodHlsError::NoPlayableTrack)));
        let foreign =
            [Frame::video(0, Bytes::from_static(&[0x12, 0, 0, 0])), Frame::audio(0, Bytes::from_static(&[0x2F, 0xFF]))];
        assert!(matches!(build(&flv(&foreign)), Err(VodHlsError::NoPlayableTrack)));
        // Bytes of noise after a valid header never panic.
        let mut noise = flv::FILE_HEADER.to_vec();
        let mut x = 0x1234_5678u32;
        for _ in 0..64 {
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                noise.push(x as u8);
            }
            assert!(build(&noise).is_err());
        }
    }

    #[test]
    fn flipped_bytes_anywhere_never_panic() {
        let good = flv(&synthetic(3, 25, 25));
        let mut x = 0x9E37_79B9u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut built = 0;
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % bytes.len();
                bytes[at] ^= 1 << (next() % 8);
            }
            let (file, len) = temp_file(&bytes);
            if let Ok(index) = VodIndex::build(&file, len, Duration::from_secs(1)) {
                built += 1;
                let _ = index.playlist(None);
                for n in 0..index.segments() {
                    let _ = index.segment(&file, n);
                }
            }
        }
        assert!(built > 0, "some flips only touch media bytes, and those files still package");
    }

    /// Runs ffmpeg with `args`; fails loudly when it is not installed.
    fn ffmpeg(args: &[&std::ffi::OsStr]) -> Vec<u8> {
        let out = match Command::new("ffmpeg").args(["-nostdin", "-v", "error"]).args(args).output() {
            Ok(out) => out,
            Err(e) => panic!("ffmpeg is needed for this test and did not run ({e}): run scripts/install-deps.sh"),
        };
        assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// `ffmpeg -f framemd5` of `input`: per stream, each decoded frame's presentation
    /// time (ms) and hash.
    fn decoded(input: &Path) -> BTreeMap<String, Vec<(f64, String)>> {
        let text = String::from_utf8(ffmpeg(&[
            "-i".as_ref(),
            input.as_os_str(),
            "-f".as_ref(),
            "framemd5".as_ref(),
            "-".as_ref(),
        ]))
        .unwrap();
        let mut time_bases: BTreeMap<String, f64> = BTreeMap::new();
        let mut streams: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(tb) = line.strip_prefix("#tb ") {
                let (stream, ratio) = tb.split_once(": ").unwrap();
                let (num, den) = ratio.split_once('/').unwrap();
                time_bases.insert(stream.into(), num.parse::<f64>().unwrap() / den.parse::<f64>().unwrap());
            } else if !line.starts_with('#') {
                let fields: Vec<&str> = line.split(',').map(str::trim).collect();
                let pts = fields[2].parse::<f64>().unwrap() * time_bases[fields[0]] * 1000.0;
                streams.entry(fields[0].into()).or_default().push((pts, fields[5].into()));
            }
        }
        streams
    }

    /// The source of the ffmpeg tests: 6 s of H.264 (a keyframe a second) and AAC,
    /// written by ffmpeg as `{dir}/src.flv` with `output` (`-f flv SRC` or a tee).
    fn encode(dir: &Path, output: &[&str]) -> std::path::PathBuf {
        let source = dir.join("src.flv");
        let args = "-f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=frequency=440 -t 6 \
                    -map 0:v -map 1:a -c:v libx264 -g 25 -c:a aac";
        let mut args: Vec<&std::ffi::OsStr> = args.split_whitespace().map(|a| a.as_ref()).collect();
        let output = output.iter().map(|o| o.replace("SRC", source.to_str().unwrap())).collect::<Vec<_>>();
        args.extend(output.iter().map(std::ffi::OsStr::new));
        ffmpeg(&args);
        source
    }

    #[test]
    fn ffmpeg_decodes_the_vod_stream_as_it_decodes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = encode(dir.path(), &["-f", "flv", "SRC"]);
        assert_vod_decodes_like(&source);
    }

    /// ffmpeg's `tee` muxer gives libx264 no global header: an empty AVC sequence
    /// header and SPS and PPS in band, behind start codes, in every keyframe.
    #[test]
    fn ffmpeg_decodes_a_vod_stream_with_parameter_sets_in_band() {
        let dir = tempfile::tempdir().unwrap();
        let source = encode(dir.path(), &["-f", "tee", "[f=flv]SRC"]);
        let bytes = std::fs::read(&source).unwrap();
        assert!(bytes.windows(5).any(|w| w == [0x17, 0, 0, 0, 0]), "an empty AVC sequence header");
        assert_vod_decodes_like(&source);
    }

    /// Packages `source` as HLS VOD in its folder and checks that ffmpeg decodes the
    /// same frames at the same times from the playlist as from the file.
    fn assert_vod_decodes_like(source: &Path) {
        let dir = source.parent().unwrap();
        let file = File::open(source).unwrap();
        let index = VodIndex::build(&file, file.metadata().unwrap().len(), Duration::from_secs(2)).unwrap();
        assert_eq!(index.segments(), 3);
        std::fs::write(dir.join("index.m3u8"), index.playlist(None)).unwrap();
        std::fs::write(dir.join("init.mp4"), index.init()).unwrap();
        for n in 0..index.segments() {
            std::fs::write(dir.join(format!("{n}.m4s")), index.segment(&file, n).unwrap()).unwrap();
        }
        let expected = decoded(source);
        let got = decoded(&dir.join("index.m3u8"));
        assert_eq!(got.keys().collect::<Vec<_>>(), ["0", "1"], "video and audio");
        assert_eq!(expected.keys().collect::<Vec<_>>(), ["0", "1"]);
        assert_eq!(expected["0"].len(), 150, "6 s at 25 fps");
        for (stream, frames) in &expected {
            let got = &got[stream];
            assert_eq!(got.len(), frames.len(), "stream {stream}: every frame");
            for (i, (want, have)) in frames.iter().zip(got).enumerate() {
                assert_eq!(want.1, have.1, "stream {stream} frame {i}: the same picture or sound");
                // FLV rounds times to ms; the segments keep audio sample-exact.
                assert!(
                    (want.0 - have.0).abs() <= 1.0,
                    "stream {stream} frame {i}: at {} ms, not {} ms",
                    want.0,
                    have.0
                );
            }
        }
    }
}
