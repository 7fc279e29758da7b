//! Frames with their [`HlsMark`](super::mark::HlsMark)s in, fMP4 init segments, parts
//! and segments out ([`Packaged`]); deterministic, so every edge produces the same bytes.
//!
//! What a part or segment holds and every byte of it depend only on the frames marked
//! with its numbers, the boundary frame that follows it, and the sequence headers in
//! force when its segment opened (for H.264 and HEVC without a usable header: the
//! parameter sets in the segment's own first keyframe): never on what this packager
//! saw earlier. So an edge that starts at any segment boundary (late, or after a
//! restart) writes the same bytes for every segment from there as an edge that has run
//! from the start. The decode times are the marks' timeline (`time_ms`), not the RTMP
//! timestamps.
//!
//! Sample durations, all deterministic: a video sample lasts until the next video
//! sample of its part, or until the frame that opens the next part when that is video,
//! else as long as the segment's previous video sample. Audio keeps sample-exact times
//! within a segment (each frame lasts the codec's frame duration, 1024 samples for AAC,
//! the TOC's for Opus) and starts again from the timeline at a segment boundary or a
//! jump of more than half a frame. A part lasts until the frame that opens the next
//! one (at [`Packager::finish`], until the end of its last sample).
//!
//! A segment in which a frame was missed (a boundary not seen) or whose part grew past
//! [`MAX_PART_BYTES`] emits nothing more after the loss; its [`SegmentEnd`] still
//! comes, counting only the parts emitted: an edge does not publish a part it knows
//! to be incomplete under a name another edge publishes whole.
//!
//! Knows no sockets, no clock and no playlists.

use bytes::Bytes;

use super::codec::{self, Audio, AudioConfig, Video, VideoCodec, VideoConfig};
use super::fmp4::{self, FragmentSample, TrackConfig, TrackRun, NON_SYNC_SAMPLE, SYNC_SAMPLE, VIDEO_TIMESCALE};
use super::mark::{Boundary, HlsMark};
use super::{Init, Packaged, Part, SegmentEnd, SegmentStart};
use crate::media::{Frame, FrameKind};

/// Most bytes of media one part may hold. A part that grows past it (a publisher
/// sending far more than any sane bitrate, or marks that never cut a part) is dropped
/// with the rest of its segment, counted in [`PackagerStats::dropped_parts`], instead of
/// growing without bound.
pub(crate) const MAX_PART_BYTES: usize = 8 << 20;

/// What a sample costs in a part besides its bytes (its `trun` entry and bookkeeping).
const SAMPLE_OVERHEAD: usize = 64;

/// Duration of the last video sample of a part when nothing better is known (the
/// part's only sample and the segment's first, the next frame not video): 1/30 s.
pub(crate) const DEFAULT_VIDEO_DURATION: u32 = VIDEO_TIMESCALE / 30;

/// `mfhd` sequence numbers: `msn * PARTS_PER_SEQUENCE + part + 1`, wrapping, so they
/// derive from the part's numbers alone and increase for any segment of fewer parts.
const PARTS_PER_SEQUENCE: u64 = 1000;

/// What a packager skipped or dropped, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackagerStats {
    /// Audio or video frames whose body could not be parsed or whose codec fMP4 does
    /// not carry here.
    pub unparsed: u64,
    /// Marked frames before the first segment boundary this packager saw.
    pub(crate) before_segment: u64,
    /// Frames of a segment in which a frame was missed (a part or segment boundary
    /// not seen): the rest of that segment is skipped, never published different.
    pub lost: u64,
    /// Frames of a track that the segment's init segment has no configuration for.
    pub(crate) untracked: u64,
    /// Parts dropped for growing past [`MAX_PART_BYTES`].
    pub(crate) dropped_parts: u64,
}

/// One stream's packager on one edge.
#[derive(Debug, Default)]
pub struct Packager {
    /// The latest sequence headers: used from the next segment. No video header, or
    /// one whose record is empty ([`Video::ConfigInBand`]), makes each segment take its
    /// video configuration from the parameter sets in its first keyframe.
    video: Option<VideoConfig>,
    audio: Option<AudioConfig>,
    /// The init segment the open segment uses.
    init: Option<CurrentInit>,
    segment: Option<OpenSegment>,
    stats: PackagerStats,
    /// [`Packager::unusable_header`] said so already.
    warned: bool,
    /// Where the next segment's audio continues ([`Packager::continue_audio_at`]);
    /// `None` (always, live): from the timeline.
    audio_seed: Option<u64>,
}

#[derive(Debug)]
struct CurrentInit {
    video: Option<VideoConfig>,
    audio: Option<AudioConfig>,
    version: u32,
}

#[derive(Debug)]
struct OpenSegment {
    msn: u64,
    /// Parts emitted so far, and the sum of their durations.
    parts: u32,
    duration_ms: u64,
    /// A frame was missed or a part dropped: nothing more of this segment is emitted.
    broken: bool,
    part: Option<OpenPart>,
    /// The tracks of the segment's init segment.
    video: Option<VideoTrack>,
    audio: Option<AudioConfig>,
    /// The last video sample duration written in this segment.
    video_delta: Option<u32>,
    /// Where the next audio sample falls if the audio is continuous.
    audio_next: Option<u64>,
}

/// The video track of a segment's init segment.
#[derive(Debug, Clone, Copy)]
struct VideoTrack {
    codec: VideoCodec,
    /// Bytes of each NAL unit's length in its samples (H.264, HEVC).
    nal_length_size: Option<usize>,
}

#[derive(Debug)]
struct OpenPart {
    index: u32,
    independent: bool,
    start_ms: u64,
    bytes: usize,
    video: Vec<Pending>,
    audio: Vec<Pending>,
}

#[derive(Debug)]
struct Pending {
    /// Decode time in the track's timescale.
    dts: u64,
    composition_offset: i32,
    flags: u32,
    /// Audio: the codec's duration of this frame, when it has one.
    nominal: Option<u32>,
    data: Bytes,
}

/// Where the frame that follows a part starts: what the part's duration and its last
/// video sample's duration are measured to.
#[derive(Debug, Clone, Copy)]
struct Next {
    time_ms: u64,
    video_dts: Option<u64>,
}

impl Packager {
    pub fn new() -> Self {
        Packager::default()
    }

    /// What was skipped or dropped so far.
    pub fn stats(&self) -> PackagerStats {
        self.stats
    }

    /// The next segment's audio continues sample-exactly from `dts` (in the audio
    /// track's timescale) rather than from the timeline, as it would inside one segment
    /// ([`audio_dts`]). VOD (`crate::edge::vod::hls`) packages one segment of a file at a
    /// time and knows where the audio before it ended, so its segments join without a
    /// gap or overlap; live segments never call this (an edge that starts at any segment
    /// must write the same bytes as one that saw the earlier ones).
    pub(crate) fn continue_audio_at(&mut self, dts: u64) {
        self.audio_seed = Some(dts);
    }

    /// Takes the stream's next frame (headers included, in the order the relay got
    /// them) and returns what it completed. Frames without a mark are ignored.
    pub fn push(&mut self, frame: &Frame) -> Vec<Packaged> {
        let mut out = Vec::new();
        if frame.header {
            self.header(frame);
            return out;
        }
        let Some(mark) = frame.hls else { return out };
        if frame.kind == FrameKind::Data {
            return out;
        }
        let next = Next {
            time_ms: mark.time_ms,
            video_dts: (frame.kind == FrameKind::Video).then(|| video_dts(mark.time_ms)),
        };
        match mark.boundary {
            Some(Boundary::Segment(open)) => {
                let expected = self.segment.as_ref().is_some_and(|s| s.msn.checked_add(1) == Some(mark.msn));
                if !expected {
                    self.break_segment();
                }
                self.close_segment(Some(next), &mut out);
                let video = self.segment_video(frame);
                let Some(init_version) = self.open_init(video, &mut out) else {
                    self.stats.untracked += 1;
                    return out;
                };
                out.push(Packaged::SegmentStart(SegmentStart {
                    msn: mark.msn,
                    discontinuity: open.discontinuity,
                    wall_ms: open.wall_ms,
                    init_version,
                    target_ms: open.target_ms,
                    part_target_ms: open.part_target_ms,
                }));
                let init = self.init.as_ref();
                self.segment = Some(OpenSegment {
                    msn: mark.msn,
                    parts: 0,
                    duration_ms: 0,
                    broken: false,
                    part: Some(OpenPart::new(0, true, mark.time_ms)),
                    video: init
                        .and_then(|i| i.video.as_ref())
                        .map(|v| VideoTrack { codec: v.codec, nal_length_size: v.nal_length_size() }),
                    audio: init.and_then(|i| i.audio.clone()),
                    video_delta: None,
                    audio_next: self.audio_seed.take(),
                });
            }
            Some(Boundary::Part { independent }) => {
                let Some(segment) = self.segment.as_mut() else {
                    self.stats.before_segment += 1;
                    return out;
                };
                let follows = segment.msn == mark.msn
                    && segment.part.as_ref().is_some_and(|p| p.index.checked_add(1) == Some(mark.part));
                if !follows {
                    self.break_segment();
                } else {
                    segment.close_part(Some(next), &mut out);
                    segment.part = Some(OpenPart::new(mark.part, independent, mark.time_ms));
                }
            }
            None => {
                let Some(segment) = self.segment.as_ref() else {
                    self.stats.before_segment += 1;
                    return out;
                };
                let inside = segment.msn == mark.msn && segment.part.as_ref().is_some_and(|p| p.index == mark.part);
                if !inside && !segment.broken {
                    self.break_segment();
                }
            }
        }
        self.add(frame, &mark);
        out
    }

    /// Completes the open part and segment: the stream ended. The next frame must open
    /// a segment.
    pub fn finish(&mut self) -> Vec<Packaged> {
        let mut out = Vec::new();
        self.close_segment(None, &mut out);
        out
    }

    fn header(&mut self, frame: &Frame) {
        match frame.kind {
            FrameKind::Video => match codec::parse_video(&frame.payload) {
                Ok(Video::Config(config)) => self.video = Some(config),
                Ok(Video::ConfigInBand(_)) => self.video = None,
                Ok(_) => {}
                Err(e) => self.unusable_header("video", &e),
            },
            FrameKind::Audio => match codec::parse_audio(&frame.payload) {
                Ok(Audio::Config(config)) => self.audio = Some(config),
                Ok(_) => {}
                Err(e) => self.unusable_header("audio", &e),
            },
            FrameKind::Data => {}
        }
    }

    /// A sequence header the segments cannot use: counted, and said once per packager
    /// (the caller's span names the stream), since the track silently missing from
    /// every segment is otherwise a mystery to whoever watches.
    fn unusable_header(&mut self, track: &'static str, error: &codec::CodecError) {
        self.stats.unparsed += 1;
        if !self.warned {
            self.warned = true;
            tracing::warn!(track, %error, "a sequence header HLS cannot use; segments carry no such track until one it can");
        }
    }

    /// The video configuration of a segment that `opening` opens: the latest sequence
    /// header's, or without one the parameter sets in band in `opening` itself (a
    /// keyframe). The segment's first frame alone decides, so an edge that starts at
    /// this segment decides the same as one that saw every earlier keyframe; a
    /// segment whose first keyframe carries no parameter sets has no video track.
    fn segment_video(&self, opening: &Frame) -> Option<VideoConfig> {
        if self.video.is_some() || opening.kind != FrameKind::Video {
            return self.video.clone();
        }
        match codec::parse_video(&opening.payload) {
            Ok(Video::Sample(c, sample)) => codec::inband_config(c, &sample.data),
            _ => None,
        }
    }

    /// The init segment for the latest audio header and `video`: emitted when it
    /// differs from the one in use. Its version is derived from its bytes, so every
    /// edge names the same init segment the same, however many it saw before. `None`
    /// without any track.
    fn open_init(&mut self, video: Option<VideoConfig>, out: &mut Vec<Packaged>) -> Option<u32> {
        if let Some(init) = &self.init {
            if init.video == video && init.audio == self.audio {
                return Some(init.version);
            }
        }
        let mut tracks = Vec::new();
        let mut codecs = Vec::new();
        if let Some(v) = &video {
            codecs.push(v.codecs());
            tracks.push(TrackConfig::Video(v.clone()));
        }
        if let Some(a) = &self.audio {
            codecs.push(a.codecs());
            tracks.push(TrackConfig::Audio(a.clone()));
        }
        if tracks.is_empty() {
            self.init = None;
            return None;
        }
        let bytes = fmp4::init_segment(&tracks);
        let version = fnv1a(&bytes);
        out.push(Packaged::Init(Init { version, codecs: codecs.join(","), bytes }));
        self.init = Some(CurrentInit { video, audio: self.audio.clone(), version });
        Some(version)
    }

    /// A frame was missed in the open segment: drop its open part and skip the rest.
    fn break_segment(&mut self) {
        if let Some(segment) = self.segment.as_mut() {
            segment.broken = true;
            segment.part = None;
        }
    }

    fn close_segment(&mut self, next: Option<Next>, out: &mut Vec<Packaged>) {
        let Some(mut segment) = self.segment.take() else { return };
        segment.close_part(next, out);
        out.push(Packaged::SegmentEnd(SegmentEnd {
            msn: segment.msn,
            duration_ms: segment.duration_ms.min(u64::from(u32::MAX)) as u32,
            parts: segment.parts,
        }));
    }

    /// Adds a media frame to the open part.
    fn add(&mut self, frame: &Frame, mark: &HlsMark) {
        let Some(segment) = self.segment.as_mut() else {
            self.stats.before_segment += 1;
            return;
        };
        if segment.broken {
            self.stats.lost += 1;
            return;
        }
        let (sample, matches) = match frame.kind {
            FrameKind::Video => match codec::parse_video(&frame.payload) {
                Ok(Video::Sample(c, mut s)) => match segment.video {
                    Some(track) if track.codec == c => {
                        if let Some(size) = track.nal_length_size {
                            match codec::length_prefixed(c, s.data, size) {
                                Ok(data) => s.data = data,
                                Err(_) => {
                                    self.stats.unparsed += 1;
                                    return;
                                }
                            }
                        }
                        (s, true)
                    }
                    _ => (s, false),
                },
                Ok(_) => return,
                Err(_) => {
                    self.stats.unparsed += 1;
                    return;
                }
            },
            FrameKind::Audio => match codec::parse_audio(&frame.payload) {
                Ok(Audio::Sample(c, s)) => (s, segment.audio.as_ref().is_some_and(|a| a.codec == c)),
                Ok(_) => return,
                Err(_) => {
                    self.stats.unparsed += 1;
                    return;
                }
            },
            FrameKind::Data => return,
        };
        let Some(part) = segment.part.as_mut() else { return };
        let pending = match frame.kind {
            _ if !matches => {
                self.stats.untracked += 1;
                return;
            }
            FrameKind::Video => {
                let mut dts = video_dts(mark.time_ms);
                if let Some(last) = part.video.last() {
                    dts = dts.max(last.dts.saturating_add(1));
                }
                Pending {
                    dts,
                    composition_offset: sample.composition_ms.saturating_mul(90),
                    flags: if frame.keyframe { SYNC_SAMPLE } else { NON_SYNC_SAMPLE },
                    nominal: None,
                    data: sample.data,
                }
            }
            FrameKind::Audio => {
                let Some(config) = segment.audio.as_ref() else { return };
                let Some(nominal) = codec::audio_frame_samples(config, &sample.data) else {
                    self.stats.unparsed += 1;
                    return;
                };
                let dts = audio_dts(
                    segment.audio_next,
                    part.audio.last().map(|p| p.dts),
                    mark.time_ms,
                    config.sample_rate,
                    nominal,
                );
                segment.audio_next = Some(dts.saturating_add(u64::from(nominal)));
                Pending { dts, composition_offset: 0, flags: SYNC_SAMPLE, nominal: Some(nominal), data: sample.data }
            }
            _ => {
                self.stats.untracked += 1;
                return;
            }
        };
        part.bytes += pending.data.len() + SAMPLE_OVERHEAD;
        if part.bytes > MAX_PART_BYTES {
            self.stats.dropped_parts += 1;
            segment.broken = true;
            segment.part = None;
            return;
        }
        match frame.kind {
            FrameKind::Video => part.video.push(pending),
            _ => part.audio.push(pending),
        }
    }
}

impl OpenPart {
    fn new(index: u32, independent: bool, start_ms: u64) -> Self {
        OpenPart { index, independent, start_ms, bytes: 0, video: Vec::new(), audio: Vec::new() }
    }
}

impl OpenSegment {
    /// Emits the open part, if any. `next` is where the following part starts (`None`
    /// when the stream ended).
    fn close_part(&mut self, next: Option<Next>, out: &mut Vec<Packaged>) {
        let Some(part) = self.part.take() else { return };
        if self.broken {
            return;
        }
        let mut video = Vec::with_capacity(part.video.len());
        for (i, s) in part.video.iter().enumerate() {
            let following = match part.video.get(i + 1) {
                Some(n) => Some(n.dts),
                None => next.and_then(|n| n.video_dts),
            };
            let duration = match following {
                Some(f) if f > s.dts => (f - s.dts).min(u64::from(u32::MAX)) as u32,
                _ => self.video_delta.unwrap_or(DEFAULT_VIDEO_DURATION),
            };
            self.video_delta = Some(duration);
            video.push(FragmentSample {
                duration,
                flags: s.flags,
                composition_offset: s.composition_offset,
                data: s.data.clone(),
            });
        }
        let mut audio = Vec::with_capacity(part.audio.len());
        for (i, s) in part.audio.iter().enumerate() {
            let duration = match part.audio.get(i + 1) {
                Some(n) => (n.dts - s.dts).min(u64::from(u32::MAX)) as u32,
                None => s.nominal.unwrap_or(0),
            };
            audio.push(FragmentSample { duration, flags: s.flags, composition_offset: 0, data: s.data.clone() });
        }
        let mut runs = Vec::new();
        if let Some(first) = part.video.first() {
            runs.push(TrackRun { track_id: fmp4::VIDEO_TRACK, base_decode_time: first.dts, samples: &video });
        }
        if let Some(first) = part.audio.first() {
            runs.push(TrackRun { track_id: fmp4::AUDIO_TRACK, base_decode_time: first.dts, samples: &audio });
        }
        let duration_ms = match next {
            Some(n) => n.time_ms.saturating_sub(part.start_ms),
            None => {
                // The stream ended: up to the end of the last sample of any track.
                let video_end = part
                    .video
                    .last()
                    .zip(video.last())
                    .map(|(p, s)| p.dts.saturating_add(u64::from(s.duration)).div_ceil(90));
                let audio_end = part.audio.last().zip(audio.last()).zip(self.audio.as_ref()).map(|((p, s), c)| {
                    p.dts
                        .saturating_add(u64::from(s.duration))
                        .saturating_mul(1000)
                        .div_ceil(u64::from(c.sample_rate.max(1)))
                });
                video_end.max(audio_end).unwrap_or(part.start_ms).saturating_sub(part.start_ms)
            }
        };
        let sequence = self.msn.wrapping_mul(PARTS_PER_SEQUENCE).wrapping_add(u64::from(part.index) + 1) as u32;
        out.push(Packaged::Part(Part {
            msn: self.msn,
            index: part.index,
            independent: part.independent,
            duration_ms: duration_ms.min(u64::from(u32::MAX)) as u32,
            bytes: fmp4::fragment(sequence, &runs),
        }));
        self.parts += 1;
        self.duration_ms = self.duration_ms.saturating_add(duration_ms);
    }
}

/// The decode time of an audio frame at `time_ms` on the timeline lasting `nominal`
/// samples at `rate`, in samples: where the audio before it ended (`expected`) when
/// that is within half a frame of the timeline (continuous audio keeps sample-exact
/// times; the ms timeline rounds), else the timeline's; and after the part's previous
/// audio sample (`previous`) in any case.
pub(crate) fn audio_dts(expected: Option<u64>, previous: Option<u64>, time_ms: u64, rate: u32, nominal: u32) -> u64 {
    let from_ms = (u128::from(time_ms) * u128::from(rate) / 1000).min(u128::from(u64::MAX)) as u64;
    let dts = match expected {
        Some(expected) if expected.abs_diff(from_ms) <= u64::from(nominal / 2) => expected,
        _ => from_ms,
    };
    match previous {
        Some(last) => dts.max(last.saturating_add(1)),
        None => dts,
    }
}

/// A video frame's decode time at `time_ms` on the timeline, in [`VIDEO_TIMESCALE`] units.
pub(crate) fn video_dts(time_ms: u64) -> u64 {
    time_ms.saturating_mul(u64::from(VIDEO_TIMESCALE / 1000))
}

/// 32-bit FNV-1a: names an init segment after its bytes.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// What must hold for any input, checked by the `hls_tags` fuzz target and the replay
/// of its regressions: the codec parsers never panic on a tag body (nor the NAL unit
/// framing and in-band parameter set parsers on a sample), and the packager,
/// fed the frames [`fuzz_frames`] builds from the same bytes, never panics and gives
/// the same events twice (live rewind's side: `super::dvr::check_invariants`).
pub fn check_invariants(data: &[u8]) {
    let _ = codec::parse_video(&Bytes::copy_from_slice(data));
    let _ = codec::parse_audio(&Bytes::copy_from_slice(data));
    for video in [VideoCodec::Avc, VideoCodec::Hevc] {
        let _ = codec::inband_config(video, data);
        for size in 0..=4 {
            let _ = codec::length_prefixed(video, Bytes::copy_from_slice(data), size);
        }
    }
    let frames = fuzz_frames(data);
    let run = || {
        let mut p = Packager::new();
        let mut out: Vec<_> = frames.iter().flat_map(|f| p.push(f)).collect();
        out.extend(p.finish());
        out
    };
    assert_eq!(run(), run());
}

/// Frames with arbitrary marks from fuzz input, `[kind][mark][len][body; len]…`: kind
/// picks video/audio/data and whether the frame is marked; mark picks the boundary,
/// msn and part; the time advances by the mark byte.
pub(crate) fn fuzz_frames(mut data: &[u8]) -> Vec<Frame> {
    use super::mark::SegmentOpen;
    let mut frames = Vec::new();
    let mut time_ms = 0u64;
    while let [kind, mark, len, rest @ ..] = data {
        let body = Bytes::copy_from_slice(&rest[..usize::from(*len).min(rest.len())]);
        data = &rest[body.len()..];
        let mut frame = match kind % 3 {
            0 => Frame::video(0, body),
            1 => Frame::audio(0, body),
            _ => Frame::data(0, body),
        };
        time_ms += u64::from(*mark);
        let boundary = match mark % 4 {
            0 => Some(Boundary::Segment(SegmentOpen {
                discontinuity: 0,
                wall_ms: 0,
                target_ms: 2000,
                part_target_ms: 200,
            })),
            1 => Some(Boundary::Part { independent: kind & 0x80 != 0 }),
            _ => None,
        };
        if kind & 0x40 == 0 {
            frame.hls =
                Some(HlsMark { msn: u64::from(mark >> 5), part: u32::from((mark >> 2) & 7), time_ms, boundary });
        }
        frames.push(frame);
    }
    frames
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hls::codec::tests::{
        hex, AAC_SEQUENCE_TAG, AVC_ANNEXB_KEYFRAME_TAG, AVC_EMPTY_SEQUENCE_TAG, AVC_SEQUENCE_TAG,
    };
    use crate::hls::mark::SegmentOpen;

    const OPEN: SegmentOpen = SegmentOpen { discontinuity: 0, wall_ms: 1_000, target_ms: 2000, part_target_ms: 200 };

    fn marked(mut frame: Frame, msn: u64, part: u32, time_ms: u64, boundary: Option<Boundary>) -> Frame {
        frame.hls = Some(HlsMark { msn, part, time_ms, boundary });
        frame
    }

    /// A video frame (legacy AVC, one length-prefixed NAL unit whose bytes say `n`).
    fn video(n: u32, keyframe: bool, composition_ms: u8) -> Frame {
        let mut body = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, composition_ms, 0, 0, 0, 5];
        body.push(if keyframe { 0x65 } else { 0x41 });
        body.extend_from_slice(&n.to_be_bytes());
        Frame::video(n, Bytes::from(body))
    }

    fn audio(n: u32) -> Frame {
        let mut body = vec![0xAF, 1, 0x21];
        body.extend_from_slice(&n.to_be_bytes());
        Frame::audio(n, Bytes::from(body))
    }

    fn headers() -> Vec<Frame> {
        vec![Frame::video(0, hex(AVC_SEQUENCE_TAG)), Frame::audio(0, hex(AAC_SEQUENCE_TAG))]
    }

    /// Headers, then `seconds` of 30 fps video with a keyframe every second and AAC
    /// (44.1 kHz, ~23.2 ms a frame, in ms as RTMP carries it), marked like a stamper:
    /// segments at keyframes every 2 s, parts every 200 ms.
    pub(crate) fn stream(seconds: u64) -> Vec<Frame> {
        let mut frames = headers();
        let (mut msn, mut part, mut part_start, mut segment_start) = (0u64, 0u32, 0u64, None);
        let mut audio_n = 0u64;
        for v in 0..seconds * 30 {
            let t = v * 1000 / 30;
            while audio_n * 1024 * 1000 / 44100 <= t {
                let at = audio_n * 1024 * 1000 / 44100;
                if segment_start.is_some() {
                    let boundary = (at >= part_start + 200).then(|| {
                        part += 1;
                        part_start = at;
                        Boundary::Part { independent: false }
                    });
                    frames.push(marked(audio(at as u32), msn, part, at, boundary));
                }
                audio_n += 1;
            }
            let key = v % 30 == 0;
            let boundary = if key && segment_start.is_none_or(|s| t >= s + 2000) {
                if segment_start.is_some() {
                    msn += 1;
                }
                part = 0;
                part_start = t;
                segment_start = Some(t);
                Some(Boundary::Segment(OPEN))
            } else if t >= part_start + 200 {
                part += 1;
                part_start = t;
                Some(Boundary::Part { independent: key })
            } else {
                None
            };
            frames.push(marked(video(v as u32, key, if key { 0 } else { 33 }), msn, part, t, boundary));
        }
        frames
    }

    fn run(frames: &[Frame]) -> (Vec<Packaged>, PackagerStats) {
        let mut p = Packager::new();
        let mut out: Vec<Packaged> = frames.iter().flat_map(|f| p.push(f)).collect();
        out.extend(p.finish());
        (out, p.stats())
    }

    /// The boxes at the top level of `bytes`: (type, body).
    pub(crate) fn boxes(mut bytes: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while bytes.len() >= 8 {
            let size = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert!(size >= 8 && size <= bytes.len(), "box size {size} within its parent");
            out.push((bytes[4..8].try_into().unwrap(), &bytes[8..size]));
            bytes = &bytes[size..];
        }
        assert!(bytes.is_empty(), "no trailing bytes");
        out
    }

    /// The body of the first `kind` box in `body`.
    pub(crate) fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        boxes(body)
            .into_iter()
            .find(|(k, _)| k == kind)
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(kind)))
            .1
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    #[test]
    fn segments_and_parts_follow_the_marks() {
        let (events, stats) = run(&stream(5));
        assert_eq!(stats, PackagerStats::default());
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Packaged::Init(_) => "init".into(),
                Packaged::SegmentStart(s) => format!("start {}", s.msn),
                Packaged::Part(p) => format!("{}.{}", p.msn, p.index),
                Packaged::SegmentEnd(s) => format!("end {} {} {}", s.msn, s.parts, s.duration_ms),
            })
            .collect();
        let seg0: Vec<String> = (0..10).map(|i| format!("0.{i}")).collect();
        assert_eq!(kinds[..2], ["init", "start 0"]);
        assert_eq!(kinds[2..12], seg0[..]);
        assert_eq!(kinds[12..14], ["end 0 10 2000", "start 1"]);
        assert_eq!(kinds.last().unwrap(), "end 2 5 999", "finish closes the last segment: {kinds:?}");
        let Packaged::SegmentStart(start) = &events[1] else { panic!() };
        let Packaged::Init(init) = &events[0] else { panic!() };
        assert_eq!(
            *start,
            SegmentStart {
                msn: 0,
                discontinuity: 0,
                wall_ms: 1000,
                init_version: init.version,
                target_ms: 2000,
                part_target_ms: 200
            }
        );
        assert_eq!(init.codecs, "avc1.64000d,mp4a.40.2");
        let parts: Vec<&Part> =
            events.iter().filter_map(|e| if let Packaged::Part(p) = e { Some(p) } else { None }).collect();
        assert!(
            parts.iter().all(|p| p.independent == (p.index % 5 == 0)),
            "keyframes every second open independent parts"
        );
        let durations: Vec<u32> = parts[..parts.len() - 1].iter().map(|p| p.duration_ms).collect();
        assert!(durations.iter().all(|&d| d == 200), "parts of 200 ms, the last to its last sample: {durations:?}");
    }

    #[test]
    fn init_segment_layout() {
        let (events, _) = run(&stream(1));
        let Packaged::Init(init) = &events[0] else { panic!() };
        let top = boxes(&init.bytes);
        assert_eq!(top.iter().map(|b| &b.0).collect::<Vec<_>>(), [b"ftyp", b"moov"]);
        let moov = top[1].1;
        let kinds: Vec<[u8; 4]> = boxes(moov).iter().map(|b| b.0).collect();
        assert_eq!(kinds, [*b"mvhd", *b"trak", *b"trak", *b"mvex"]);
        let traks: Vec<&[u8]> = boxes(moov).into_iter().filter(|b| &b.0 == b"trak").map(|b| b.1).collect();
        for (trak, (id, timescale, handler, entry)) in
            traks.iter().zip([(1, 90000, b"vide", b"avc1"), (2, 44100, b"soun", b"mp4a")])
        {
            assert_eq!(be32(&child(trak, b"tkhd")[12..]), id, "track id");
            let mdia = child(trak, b"mdia");
            assert_eq!(be32(&child(mdia, b"mdhd")[12..]), timescale);
            assert_eq!(&child(mdia, b"hdlr")[8..12], handler);
            let stsd = child(child(child(mdia, b"minf"), b"stbl"), b"stsd");
            let entries = boxes(&stsd[8..]);
            assert_eq!(entries.len(), 1);
            assert_eq!(&entries[0].0, entry);
        }
        let tkhd = child(traks[0], b"tkhd");
        assert_eq!((be32(&tkhd[76..]) >> 16, be32(&tkhd[80..]) >> 16), (320, 240), "picture size from the SPS");
        let avc1 = boxes(&child(child(child(child(traks[0], b"mdia"), b"minf"), b"stbl"), b"stsd")[8..])[0].1;
        assert_eq!(child(&avc1[78..], b"avcC"), &hex(AVC_SEQUENCE_TAG)[5..]);
        let mp4a = boxes(&child(child(child(child(traks[1], b"mdia"), b"minf"), b"stbl"), b"stsd")[8..])[0].1;
        let esds = child(&mp4a[28..], b"esds");
        assert!(esds.windows(2).any(|w| w == &hex(AAC_SEQUENCE_TAG)[2..4]), "the ASC is in the esds");
        let trex: Vec<u32> = boxes(child(moov, b"mvex")).iter().map(|b| be32(&b.1[4..])).collect();
        assert_eq!(trex, [1, 2]);
    }

    #[test]
    fn part_layout_times_and_sample_table() {
        let frames = stream(1);
        let (events, _) = run(&frames);
        // Part 0.1: from the 7th video frame (200 ms).
        let part = events.iter().find_map(|e| match e {
            Packaged::Part(p) if p.index == 1 => Some(p),
            _ => None,
        });
        let part = part.unwrap();
        let top = boxes(&part.bytes);
        assert_eq!(top.iter().map(|b| &b.0).collect::<Vec<_>>(), [b"moof", b"mdat"]);
        let moof = top[0].1;
        assert_eq!(be32(&child(moof, b"mfhd")[4..]), 2, "msn 0, part 1");
        let trafs: Vec<&[u8]> = boxes(moof).into_iter().filter(|b| &b.0 == b"traf").map(|b| b.1).collect();
        assert_eq!(trafs.len(), 2, "a traf per track present");
        let mdat_start = 8 + moof.len() + 8;
        let mut data_end = mdat_start;
        for (traf, (id, first_dts)) in trafs.iter().zip([(1u32, 200 * 90u64), (2, 209 * 44100 / 1000)]) {
            let tfhd = child(traf, b"tfhd");
            assert_eq!((be32(tfhd) & 0xFF_FFFF, be32(&tfhd[4..])), (0x02_0000, id), "default-base-is-moof");
            let tfdt = child(traf, b"tfdt");
            assert_eq!(tfdt[0], 1, "64-bit tfdt");
            let base = u64::from_be_bytes(tfdt[4..12].try_into().unwrap());
            let trun = child(traf, b"trun");
            assert_eq!(be32(trun), 0x0100_0F01, "version 1: offset, duration, size, flags, composition");
            let count = be32(&trun[4..]) as usize;
            let offset = be32(&trun[8..]) as usize;
            assert_eq!(offset, data_end, "samples follow each other in the mdat");
            let entries: Vec<[u32; 4]> =
                (0..count).map(|i| std::array::from_fn(|k| be32(&trun[12 + 16 * i + 4 * k..]))).collect();
            data_end += entries.iter().map(|e| e[1] as usize).sum::<usize>();
            if id == 1 {
                assert_eq!(base, first_dts, "decode time from the mark, 90 kHz");
                assert_eq!(count, 6, "200..400 ms at 30 fps");
                assert!(
                    entries.iter().all(|e| e[0] == 33 * 90 || e[0] == 34 * 90),
                    "durations from the ms timeline: {entries:?}"
                );
                assert!(entries.iter().all(|e| e[2] == NON_SYNC_SAMPLE && e[3] == 33 * 90));
                // The first sample's bytes are the frame's NAL units.
                let sample = &part.bytes[offset..offset + entries[0][1] as usize];
                assert_eq!(&sample[4..], &[0x41, 0, 0, 0, 6], "video frame 6, untouched");
            } else {
                // The audio keeps its ms time at the part's first audio frame and
                // advances by whole AAC frames.
                assert!(base.abs_diff(first_dts) <= 44, "{base} vs {first_dts}");
                assert!(entries.iter().all(|e| e[0] == 1024 && e[2] == SYNC_SAMPLE && e[3] == 0));
            }
        }
        assert_eq!(data_end, part.bytes.len(), "the mdat holds exactly the samples");
    }

    #[test]
    fn the_same_frames_give_the_same_bytes() {
        let frames = stream(5);
        assert_eq!(run(&frames).0, run(&frames).0);
    }

    #[test]
    fn a_packager_started_late_writes_the_same_segments_from_its_first_boundary() {
        // The early edge saw other headers first (stereo AAC in segment 0), then the
        // ones in force now: its second init segment is the late edge's first.
        let mut frames = stream(7);
        frames[1] = Frame::audio(0, Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]));
        let at = frames.iter().position(|f| f.hls.is_some_and(|m| m.part == 3)).unwrap();
        frames.insert(at, headers().remove(1));
        let (all, _) = run(&frames);
        let inits: Vec<&Init> =
            all.iter().filter_map(|e| if let Packaged::Init(i) = e { Some(i) } else { None }).collect();
        assert_eq!(inits.len(), 2);
        // A late edge: the headers, then the stream from the middle of segment 1.
        let middle = frames.iter().position(|f| f.hls.is_some_and(|m| m.msn == 1 && m.part == 4)).unwrap();
        let late: Vec<Frame> = headers().into_iter().chain(frames[middle..].iter().cloned()).collect();
        let (events, stats) = run(&late);
        assert!(stats.before_segment > 0, "the rest of segment 1 is skipped");
        assert_eq!(events[0], Packaged::Init(inits[1].clone()), "the same init segment, named the same");
        let from = all.iter().position(|e| matches!(e, Packaged::SegmentStart(s) if s.msn == 2)).unwrap();
        assert_eq!(events[1..], all[from..], "every segment both have is identical");
    }

    #[test]
    fn new_sequence_headers_make_a_new_init_used_from_the_next_segment() {
        let mut frames = stream(5);
        // New audio config (stereo) in the middle of segment 0.
        let at = frames.iter().position(|f| f.hls.is_some_and(|m| m.part == 3)).unwrap();
        frames.insert(at, Frame::audio(300, Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10])));
        let (events, _) = run(&frames);
        let inits: Vec<&Init> =
            events.iter().filter_map(|e| if let Packaged::Init(i) = e { Some(i) } else { None }).collect();
        assert_eq!(inits.len(), 2);
        assert_ne!(inits[0].version, inits[1].version);
        assert_ne!(inits[0].bytes, inits[1].bytes);
        let starts: Vec<(u64, u32)> = events
            .iter()
            .filter_map(|e| if let Packaged::SegmentStart(s) = e { Some((s.msn, s.init_version)) } else { None })
            .collect();
        assert_eq!(starts, [(0, inits[0].version), (1, inits[1].version), (2, inits[1].version)]);
        let second =
            events.iter().position(|e| matches!(e, Packaged::Init(i) if i.version == inits[1].version)).unwrap();
        assert!(
            matches!(events[second + 1], Packaged::SegmentStart(SegmentStart { msn: 1, .. })),
            "the new init comes right before the segment that uses it"
        );
    }

    /// The SPS and PPS of [`AVC_SEQUENCE_TAG`]'s record.
    fn parameter_sets() -> (Bytes, Bytes) {
        let record = hex(AVC_SEQUENCE_TAG).slice(5..);
        (record.slice(8..33), record.slice(36..42))
    }

    /// `frames` (from [`stream`]) with their H.264 as an in-band publisher sends it:
    /// every keyframe carries `sps` and the PPS before its slice, the slices have no
    /// zero bytes (as emulation prevention guarantees). With `annexb`, the sequence
    /// header is empty and the NAL units follow start codes (4 bytes before the
    /// parameter sets, 3 before the slice, an AUD first), else the header is the
    /// record and NAL units are length-prefixed, as with `+global_header`.
    fn in_band(frames: &[Frame], annexb: bool, sps: impl Fn(u64) -> Bytes) -> Vec<Frame> {
        let (_, pps) = parameter_sets();
        frames
            .iter()
            .map(|f| {
                let mut f = f.clone();
                if f.kind != FrameKind::Video {
                    return f;
                }
                if f.header {
                    if annexb {
                        f.payload = hex(AVC_EMPTY_SEQUENCE_TAG);
                    }
                    return f;
                }
                let n = u32::from_be_bytes(f.payload[10..14].try_into().unwrap());
                let slice = [f.payload[9], 0xAB, 0x80 | (n >> 7) as u8, 0x80 | (n & 0x7F) as u8];
                let mut nals: Vec<(&[u8], &[u8])> = Vec::new();
                let sps = sps(f.hls.map_or(0, |m| m.time_ms));
                if annexb {
                    nals.push((&[0, 0, 0, 1], &[0x09, 0xF0]));
                }
                if f.keyframe {
                    nals.push((&[0, 0, 0, 1], &sps));
                    nals.push((&[0, 0, 0, 1], &pps));
                }
                nals.push((&[0, 0, 1], &slice));
                let mut body = f.payload[..5].to_vec();
                for (start, nal) in nals {
                    if annexb {
                        body.extend_from_slice(start);
                    } else {
                        body.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    }
                    body.extend_from_slice(nal);
                }
                f.payload = Bytes::from(body);
                f
            })
            .collect()
    }

    fn inits(events: &[Packaged]) -> Vec<&Init> {
        events.iter().filter_map(|e| if let Packaged::Init(i) = e { Some(i) } else { None }).collect()
    }

    #[test]
    fn annexb_without_a_sequence_header_packages_like_the_same_stream_with_one() {
        let (sps, _) = parameter_sets();
        let frames = stream(5);
        let (annexb, stats) = run(&in_band(&frames, true, |_| sps.clone()));
        assert_eq!(stats, PackagerStats::default());
        let (reference, _) = run(&in_band(&frames, false, |_| sps.clone()));
        assert_eq!(inits(&annexb).len(), 1);
        assert_eq!(inits(&annexb)[0].codecs, "avc1.64000d,mp4a.40.2", "video from the in-band SPS");
        assert!(annexb == reference, "the same init segment and every part byte for byte");
        // The video samples are length-prefixed, without the AUD.
        let Packaged::Part(part) = &annexb[2] else { panic!("{:?}", annexb[2]) };
        let (sps, pps) = parameter_sets();
        let key = [&[0, 0, 0, 25][..], &sps, &[0, 0, 0, 6], &pps, &[0, 0, 0, 4, 0x65, 0xAB, 0x80, 0x80]].concat();
        assert!(part.bytes.windows(key.len()).any(|w| w == key), "the first keyframe, length-prefixed");
    }

    #[test]
    fn annexb_from_a_later_keyframe_gives_the_same_segments() {
        let (sps, _) = parameter_sets();
        let frames = in_band(&stream(7), true, |_| sps.clone());
        let (all, _) = run(&frames);
        assert_eq!(inits(&all)[0].codecs, "avc1.64000d,mp4a.40.2");
        let middle = frames.iter().position(|f| f.hls.is_some_and(|m| m.msn == 1 && m.part == 4)).unwrap();
        let headers = frames.iter().filter(|f| f.header).cloned();
        let late: Vec<Frame> = headers.chain(frames[middle..].iter().cloned()).collect();
        let (events, _) = run(&late);
        assert_eq!(events[0], Packaged::Init(inits(&all)[0].clone()), "the same init segment, named the same");
        let from = all.iter().position(|e| matches!(e, Packaged::SegmentStart(s) if s.msn == 2)).unwrap();
        assert!(events[1..] == all[from..], "every segment both have is identical");
    }

    #[test]
    fn changed_in_band_parameter_sets_make_a_new_init_from_the_next_segment_on() {
        // From 3 s on, keyframes carry an SPS of another level (3.0): the keyframe at
        // 3 s is inside segment 1, the one at 4 s opens segment 2.
        let (sps, _) = parameter_sets();
        let mut level30 = sps.to_vec();
        level30[3] = 0x1E;
        let level30 = Bytes::from(level30);
        let pick = |t: u64| if t >= 3000 { level30.clone() } else { sps.clone() };
        let frames = in_band(&stream(7), true, pick);
        let (events, stats) = run(&frames);
        assert_eq!(stats, PackagerStats::default());
        let inits = inits(&events);
        let codecs: Vec<&str> = inits.iter().map(|i| i.codecs.as_str()).collect();
        assert_eq!(codecs, ["avc1.64000d,mp4a.40.2", "avc1.64001e,mp4a.40.2"]);
        let starts: Vec<(u64, u32)> = events
            .iter()
            .filter_map(|e| if let Packaged::SegmentStart(s) = e { Some((s.msn, s.init_version)) } else { None })
            .collect();
        let (v0, v1) = (inits[0].version, inits[1].version);
        assert_eq!(starts, [(0, v0), (1, v0), (2, v1), (3, v1)]);
        // An edge starting at segment 2 names and writes the new init the same.
        let at = frames.iter().position(|f| f.hls.is_some_and(|m| m.msn == 2)).unwrap();
        let late: Vec<Frame> =
            frames.iter().filter(|f| f.header).cloned().chain(frames[at..].iter().cloned()).collect();
        let (late, _) = run(&late);
        assert_eq!(late[0], Packaged::Init(inits[1].clone()));
        // And back to no video when a segment's first keyframe carries none.
        let bare = in_band(&stream(5), true, |_| Bytes::new());
        let (events, stats) = run(&bare);
        assert_eq!(self::inits(&events)[0].codecs, "mp4a.40.2");
        assert!(stats.untracked > 0);
    }

    #[test]
    fn a_missed_boundary_skips_the_rest_of_that_segment_only() {
        let mut frames = stream(5);
        let lost = frames
            .iter()
            .position(|f| f.hls.is_some_and(|m| m.msn == 0 && m.part == 4 && m.boundary.is_some()))
            .unwrap();
        frames.remove(lost);
        let (events, stats) = run(&frames);
        assert!(stats.lost > 0);
        let parts: Vec<(u64, u32)> = events
            .iter()
            .filter_map(|e| if let Packaged::Part(p) = e { Some((p.msn, p.index)) } else { None })
            .collect();
        assert_eq!(parts[..3], [(0, 0), (0, 1), (0, 2)], "part 0.3 may miss frames: dropped, so are the rest");
        assert_eq!(parts[3], (1, 0));
        let (complete, _) = run(&stream(5));
        let from =
            |e: &[Packaged]| e.iter().position(|e| matches!(e, Packaged::SegmentStart(s) if s.msn == 1)).unwrap();
        assert_eq!(events[from(&events)..], complete[from(&complete)..], "the next segment is whole again");
    }

    #[test]
    fn an_oversized_part_is_dropped_and_counted() {
        let mut frames = stream(3);
        let big = frames
            .iter()
            .position(|f| f.hls.is_some_and(|m| m.msn == 0 && m.part == 2 && m.boundary.is_some()))
            .unwrap();
        let mut body = vec![0x27, 1, 0, 0, 0];
        body.resize(MAX_PART_BYTES + 1, 0);
        let mut frame = Frame::video(0, Bytes::from(body));
        frame.hls = frames[big + 1].hls;
        frames.insert(big + 1, frame);
        let (events, stats) = run(&frames);
        assert_eq!(stats.dropped_parts, 1);
        let parts: Vec<(u64, u32)> = events
            .iter()
            .filter_map(|e| if let Packaged::Part(p) = e { Some((p.msn, p.index)) } else { None })
            .collect();
        assert_eq!(parts[..3], [(0, 0), (0, 1), (1, 0)]);
    }

    #[test]
    fn garbage_and_unmarked_frames_are_skipped_and_counted() {
        let mut frames = stream(3);
        let at = frames.iter().position(|f| f.hls.is_some_and(|m| m.part == 2)).unwrap();
        let mark = frames[at].hls.map(|m| HlsMark { boundary: None, ..m });
        for body in [&[0x27u8][..], &[0x27, 1, 0], &[0x9F, 0xFF], &[0xAF], &[0x91, b'x', b'y', b'z', b'w']] {
            let mut f = if body[0] == 0xAF {
                Frame::audio(0, Bytes::copy_from_slice(body))
            } else {
                Frame::video(0, Bytes::copy_from_slice(body))
            };
            f.hls = mark;
            frames.insert(at + 1, f);
        }
        frames.insert(at + 1, video(9999, false, 0)); // no mark: ignored
                                                      // Well-formed frames of codecs the init segment has no track for.
        for mut f in [
            Frame::video(0, Bytes::from_static(&[0xA3, b'h', b'v', b'c', b'1', 0, 0, 0, 1, 2])),
            Frame::audio(0, Bytes::from_static(&[0x91, b'O', b'p', b'u', b's', 0xF8])),
        ] {
            f.hls = mark;
            frames.insert(at + 1, f);
        }
        let (events, stats) = run(&frames);
        assert_eq!(stats.unparsed, 5);
        assert_eq!(stats.untracked, 2);
        assert_eq!(events, run(&stream(3)).0, "not a byte changed");
    }

    mod hostile {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// A frame of any kind with any body (often a real header or a plausible
        /// tag start) and any mark.
        fn frame() -> impl Strategy<Value = Frame> {
            let body = prop_oneof![
                vec(any::<u8>(), 0..64).prop_map(Bytes::from),
                Just(hex(AVC_SEQUENCE_TAG)),
                Just(hex(AAC_SEQUENCE_TAG)),
                Just(hex(AVC_EMPTY_SEQUENCE_TAG)),
                Just(hex(AVC_ANNEXB_KEYFRAME_TAG)),
                (0usize..64, vec(any::<u8>(), 0..32)).prop_map(|(at, noise)| {
                    // The Annex-B keyframe with its tail replaced by noise.
                    let key = hex(AVC_ANNEXB_KEYFRAME_TAG);
                    let at = at.min(key.len());
                    Bytes::from([&key[..at], &noise].concat())
                }),
                (any::<u8>(), vec(any::<u8>(), 0..32)).prop_map(|(b, rest)| {
                    let head = [[0x17, 1], [0x27, 1], [0xAF, 1], [0x91, b'h'], [0xAF, 0]][usize::from(b % 5)];
                    Bytes::from([&head[..], &rest].concat())
                }),
            ];
            let boundary = prop_oneof![
                Just(None),
                any::<bool>().prop_map(|independent| Some(Boundary::Part { independent })),
                Just(Some(Boundary::Segment(OPEN))),
            ];
            let time = prop_oneof![0u64..10_000, u64::MAX - 10_000..=u64::MAX];
            let mark = (0u64..4, 0u32..4, time, boundary).prop_map(|(msn, part, time_ms, boundary)| HlsMark {
                msn,
                part,
                time_ms,
                boundary,
            });
            (0u8..3, body, proptest::option::weighted(0.9, mark)).prop_map(|(kind, body, mark)| {
                let mut f = match kind {
                    0 => Frame::video(0, body),
                    1 => Frame::audio(0, body),
                    _ => Frame::data(0, body),
                };
                f.hls = mark;
                f
            })
        }

        proptest! {
            /// In-band H.264 whose keyframes carry one of three SPS or none, Annex-B or
            /// length-prefixed: a packager that starts at any segment (with the
            /// headers) writes that segment and every later one, and the init
            /// segments they name, exactly as one that saw the whole stream.
            #[test]
            fn in_band_streams_package_the_same_from_every_segment(
                choices in vec(0u8..4, 6),
                annexb in any::<bool>(),
            ) {
                let (sps, _) = parameter_sets();
                let variant = |t: u64| -> Bytes {
                    let mut s = sps.to_vec();
                    match choices[(t / 1000) as usize % choices.len()] {
                        0 => return Bytes::new(),
                        1 => {}
                        level => s[3] = 0x0D + level,
                    }
                    Bytes::from(s)
                };
                let frames = in_band(&stream(6), annexb, variant);
                let (all, _) = run(&frames);
                let by_version: std::collections::HashMap<u32, &Init> =
                    inits(&all).into_iter().map(|i| (i.version, i)).collect();
                let media = |e: &[Packaged]| -> Vec<Packaged> {
                    e.iter().filter(|e| !matches!(e, Packaged::Init(_))).cloned().collect()
                };
                let openers = frames.iter().enumerate().filter(|(_, f)| {
                    f.hls.is_some_and(|m| matches!(m.boundary, Some(Boundary::Segment(_))))
                });
                for (at, opener) in openers {
                    let msn = opener.hls.unwrap().msn;
                    let late: Vec<Frame> =
                        frames.iter().filter(|f| f.header).cloned().chain(frames[at..].iter().cloned()).collect();
                    let (events, _) = run(&late);
                    for init in inits(&events) {
                        prop_assert_eq!(Some(&init), by_version.get(&init.version), "init {}", init.version);
                    }
                    let from = all.iter().position(|e| matches!(e, Packaged::SegmentStart(s) if s.msn == msn));
                    let expected = media(&all[from.unwrap()..]);
                    prop_assert!(media(&events) == expected, "from segment {}", msn);
                }
            }

            #[test]
            fn any_frames_and_marks_never_panic_and_parts_stay_well_formed(frames in vec(frame(), 0..200)) {
                let (events, _) = run(&frames);
                for e in &events {
                    if let Packaged::Part(p) = e {
                        let top = boxes(&p.bytes);
                        prop_assert_eq!(top.len(), 2);
                        prop_assert!(p.bytes.len() <= MAX_PART_BYTES + 4096);
                    }
                }
                // The same frames again give the same events.
                prop_assert_eq!(run(&frames).0, events);
            }
        }
    }
}
