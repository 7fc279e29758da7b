//! Frames with their [`HlsMark`](super::mark::HlsMark)s in, fMP4 init segments, parts
//! and segments out ([`Packaged`]); deterministic, so every edge produces the same bytes.
//!
//! What a part or segment holds and every byte of it depend only on the frames marked
//! with its numbers, the boundary frame that follows it, and the sequence headers in
//! force when its segment opened: never on what this packager saw earlier. So an edge
//! that starts at any segment boundary (late, or after a restart) writes the same bytes
//! for every segment from there as an edge that has run from the start. The decode
//! times are the marks' timeline (`time_ms`), not the RTMP timestamps.
//!
//! Knows no sockets, no clock and no playlists.

use bytes::Bytes;

use super::codec::{self, Audio, AudioConfig, Video, VideoConfig};
use super::fmp4::{self, FragmentSample, TrackConfig, TrackRun, NON_SYNC_SAMPLE, SYNC_SAMPLE, VIDEO_TIMESCALE};
use super::mark::{Boundary, HlsMark};
use super::{Init, Packaged, Part, SegmentEnd, SegmentStart};
use crate::media::{Frame, FrameKind};

/// Most bytes of media one part may hold. A part that grows past it (a publisher
/// sending far more than any sane bitrate, or marks that never cut a part) is dropped
/// with the rest of its segment, counted in [`PackagerStats::dropped_parts`], instead of
/// growing without bound.
pub const MAX_PART_BYTES: usize = 8 << 20;

/// What a sample costs in a part besides its bytes (its `trun` entry and bookkeeping).
const SAMPLE_OVERHEAD: usize = 64;

/// Duration of the last video sample of a part when nothing better is known (the
/// part's only sample and the segment's first, the next frame not video): 1/30 s.
const DEFAULT_VIDEO_DURATION: u32 = VIDEO_TIMESCALE / 30;

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
    pub before_segment: u64,
    /// Frames of a segment in which a frame was missed (a part or segment boundary
    /// not seen): the rest of that segment is skipped, never published different.
    pub lost: u64,
    /// Frames of a track that the segment's init segment has no configuration for.
    pub untracked: u64,
    /// Parts dropped for growing past [`MAX_PART_BYTES`].
    pub dropped_parts: u64,
}

/// One stream's packager on one edge.
#[derive(Debug, Default)]
pub struct Packager {
    /// The latest sequence headers: used from the next segment.
    video: Option<VideoConfig>,
    audio: Option<AudioConfig>,
    /// The init segment the open segment uses.
    init: Option<CurrentInit>,
    segment: Option<OpenSegment>,
    stats: PackagerStats,
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
    video: bool,
    audio: Option<AudioConfig>,
    /// The last video sample duration written in this segment.
    video_delta: Option<u32>,
    /// Where the next audio sample falls if the audio is continuous.
    audio_next: Option<u64>,
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
                let Some(init_version) = self.open_init(&mut out) else {
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
                    video: init.is_some_and(|i| i.video.is_some()),
                    audio: init.and_then(|i| i.audio.clone()),
                    video_delta: None,
                    audio_next: None,
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
                Ok(_) => {}
                Err(_) => self.stats.unparsed += 1,
            },
            FrameKind::Audio => match codec::parse_audio(&frame.payload) {
                Ok(Audio::Config(config)) => self.audio = Some(config),
                Ok(_) => {}
                Err(_) => self.stats.unparsed += 1,
            },
            FrameKind::Data => {}
        }
    }

    /// The init segment for the latest headers: emitted when it differs from the one
    /// in use. Its version is derived from its bytes, so every edge names the same
    /// init segment the same, however many it saw before. `None` without any header.
    fn open_init(&mut self, out: &mut Vec<Packaged>) -> Option<u32> {
        if let Some(init) = &self.init {
            if init.video == self.video && init.audio == self.audio {
                return Some(init.version);
            }
        }
        let mut tracks = Vec::new();
        let mut codecs = Vec::new();
        if let Some(v) = &self.video {
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
        self.init = Some(CurrentInit { video: self.video.clone(), audio: self.audio.clone(), version });
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
        let sample = match frame.kind {
            FrameKind::Video => match codec::parse_video(&frame.payload) {
                Ok(Video::Sample(s)) => s,
                Ok(_) => return,
                Err(_) => {
                    self.stats.unparsed += 1;
                    return;
                }
            },
            FrameKind::Audio => match codec::parse_audio(&frame.payload) {
                Ok(Audio::Sample(s)) => s,
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
            FrameKind::Video if segment.video => {
                let mut dts = video_dts(mark.time_ms);
                if let Some(last) = part.video.last() {
                    dts = dts.max(last.dts + 1);
                }
                Pending {
                    dts,
                    composition_offset: sample.composition_ms.saturating_mul(90),
                    flags: if frame.keyframe { SYNC_SAMPLE } else { NON_SYNC_SAMPLE },
                    nominal: None,
                    data: sample.data,
                }
            }
            FrameKind::Audio if segment.audio.is_some() => {
                let Some(config) = segment.audio.as_ref() else { return };
                let Some(nominal) = codec::audio_frame_samples(config, &sample.data) else {
                    self.stats.unparsed += 1;
                    return;
                };
                let rate = u64::from(config.sample_rate);
                let from_ms = (u128::from(mark.time_ms) * u128::from(rate) / 1000).min(u128::from(u64::MAX)) as u64;
                // Continuous audio keeps sample-exact times (the ms timeline rounds);
                // a jump of more than half a frame starts again from the timeline.
                let mut dts = match segment.audio_next {
                    Some(expected) if expected.abs_diff(from_ms) <= u64::from(nominal / 2) => expected,
                    _ => from_ms,
                };
                if let Some(last) = part.audio.last() {
                    dts = dts.max(last.dts + 1);
                }
                segment.audio_next = Some(dts + u64::from(nominal));
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
                let video_end = part.video.last().zip(video.last()).map(|(p, s)| (p.dts + u64::from(s.duration)) / 90);
                let audio_end = part
                    .audio
                    .last()
                    .zip(audio.last())
                    .zip(self.audio.as_ref())
                    .map(|((p, s), c)| (p.dts + u64::from(s.duration)) * 1000 / u64::from(c.sample_rate.max(1)));
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
        self.duration_ms += duration_ms;
    }
}

fn video_dts(time_ms: u64) -> u64 {
    time_ms.saturating_mul(u64::from(VIDEO_TIMESCALE / 1000))
}

/// 32-bit FNV-1a: names an init segment after its bytes.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}
