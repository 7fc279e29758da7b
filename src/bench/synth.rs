//! A synthetic live stream for load and tests: legacy AVC + AAC FLV tag bodies with
//! realistic sizes (a large keyframe opening each GOP), where every video and audio
//! frame carries a sequence number and its send time, so a player can check continuity
//! and measure latency without decoding anything.
//!
//! Video body: `0x17|0x27, 0x01 (NALU), cts 0 0 0`, then the stamp; audio body:
//! `0xAF, 0x01 (raw AAC)`, then the stamp. Stamp: `b"RCSQ"`, sequence `u64` BE (one
//! sequence for video, another for audio), send time `u64` BE, then filler.
//!
//! The send time is in µs since the Unix epoch, read from a [`StampClock`]: the wall
//! clock is read once, when the generator starts, and the monotonic time elapsed since
//! is added to it, so stamps never jump when the wall clock is set. A player in the
//! same process shares the generator's clock and turns a stamp back into an `Instant`
//! exactly; a player in another process on the same machine (scripts/rtmp-players.py)
//! computes publish→play latency as its own wall clock minus the stamp, exact up to
//! how far the two clocks drift apart during a run (NTP slewing: well under a
//! millisecond a second).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 4] = b"RCSQ";
const STAMP: usize = 4 + 8 + 8;

/// Shape of the stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    /// Video bitrate in kbit/s (audio adds about 64 kbit/s at 43 frames/s).
    pub video_kbps: u32,
    pub fps: u32,
    /// Frames per GOP (a keyframe every `gop` frames).
    pub gop: u32,
    /// A keyframe is this many times the size of an inter frame.
    pub keyframe_ratio: u32,
    /// Whether to send AAC audio (1024 samples at 44.1 kHz: 43 frames/s, 186 bytes).
    pub audio: bool,
}

impl Default for StreamShape {
    fn default() -> Self {
        StreamShape { video_kbps: 2500, fps: 30, gop: 60, keyframe_ratio: 8, audio: true }
    }
}

impl StreamShape {
    /// (keyframe bytes, inter-frame bytes) giving the bitrate on average.
    pub(crate) fn frame_sizes(&self) -> (usize, usize) {
        let gop_bytes = u64::from(self.video_kbps) * 1000 / 8 * u64::from(self.gop) / u64::from(self.fps.max(1));
        let units = u64::from(self.keyframe_ratio) + u64::from(self.gop.saturating_sub(1));
        let inter = (gop_bytes / units.max(1)).max(STAMP as u64 + 8) as usize;
        (inter * self.keyframe_ratio as usize, inter)
    }
}

/// One frame to send.
#[derive(Debug, Clone, PartialEq)]
pub enum SynthFrame {
    Video { timestamp: u32, payload: Bytes, keyframe: bool },
    Audio { timestamp: u32, payload: Bytes },
}

/// The configuration tags a stream starts with: `onMetaData` (AMF0), the AVC decoder
/// configuration and the AAC AudioSpecificConfig.
pub fn headers() -> (Bytes, Bytes, Bytes) {
    use crate::rtmp::amf0::{self, Amf0Value};
    let meta = Amf0Value::EcmaArray(vec![
        ("width".into(), Amf0Value::Number(1280.0)),
        ("height".into(), Amf0Value::Number(720.0)),
        ("framerate".into(), Amf0Value::Number(30.0)),
        ("videocodecid".into(), Amf0Value::Number(7.0)),
        ("audiocodecid".into(), Amf0Value::Number(10.0)),
        ("encoder".into(), Amf0Value::String("raftcast synth".into())),
    ]);
    let mut m = Vec::new();
    amf0::encode(&Amf0Value::String("onMetaData".into()), &mut m);
    amf0::encode(&meta, &mut m);
    // AVCDecoderConfigurationRecord with one SPS and one PPS (Baseline 3.1).
    let avc = Bytes::from_static(&[
        0x17, 0x00, 0, 0, 0, 0x01, 0x42, 0xC0, 0x1F, 0xFF, 0xE1, 0x00, 0x08, 0x67, 0x42, 0xC0, 0x1F, 0x8C, 0x8D, 0x40,
        0x50, 0x01, 0x00, 0x04, 0x68, 0xCE, 0x3C, 0x80,
    ]);
    let aac = Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]);
    (Bytes::from(m), avc, aac)
}

/// µs since the Unix epoch at the instant `epoch`: the wall clock now, less the
/// monotonic time elapsed since `epoch`.
pub fn unix_us_at(epoch: Instant) -> u64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    wall.saturating_sub(epoch.elapsed()).as_micros() as u64
}

/// The clock send times are stamped with: µs since the Unix epoch, as the wall clock
/// read once at `epoch` plus the monotonic time since (it never jumps). Copy it to
/// every player of the process so their latencies are exact.
#[derive(Debug, Clone, Copy)]
pub struct StampClock {
    epoch: Instant,
    epoch_unix_us: u64,
}

impl StampClock {
    /// A clock whose Unix time at `epoch` is read now.
    pub fn new(epoch: Instant) -> Self {
        StampClock { epoch, epoch_unix_us: unix_us_at(epoch) }
    }

    /// The instant the clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The stamp of `at`: µs since the Unix epoch.
    pub fn unix_us(&self, at: Instant) -> u64 {
        self.epoch_unix_us + at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The stamp of now.
    pub fn now_us(&self) -> u64 {
        self.unix_us(Instant::now())
    }

    /// The instant of a stamp this clock made (the epoch for an earlier one).
    pub fn instant_of(&self, unix_us: u64) -> Instant {
        self.epoch + Duration::from_micros(unix_us.saturating_sub(self.epoch_unix_us))
    }
}

/// Produces the frames of a stream in send order, with their due times.
pub struct Synth {
    shape: StreamShape,
    clock: StampClock,
    video_seq: u64,
    audio_seq: u64,
    filler: Bytes,
}

impl Synth {
    /// A stream stamped by a clock from `epoch` (its Unix time read now): for a
    /// generator whose players measure no latency, or only against the wall clock.
    pub fn new(shape: StreamShape, epoch: Instant) -> Self {
        Self::with_clock(shape, StampClock::new(epoch))
    }

    /// A stream stamped by `clock` (share it with the players of the same process).
    pub fn with_clock(shape: StreamShape, clock: StampClock) -> Self {
        let (key, _) = shape.frame_sizes();
        let filler: Vec<u8> = (0..key).map(|i| (i * 131 % 251) as u8).collect();
        Synth { shape, clock, video_seq: 0, audio_seq: 0, filler: Bytes::from(filler) }
    }

    /// When the next frame is due, relative to the stream's start: sleep until then,
    /// then call [`next_frame`](Self::next_frame), which stamps the current time.
    pub fn next_due(&self) -> Duration {
        self.next_kind().0
    }

    fn next_kind(&self) -> (Duration, bool) {
        let video_at = Duration::from_micros(self.video_seq * 1_000_000 / u64::from(self.shape.fps.max(1)));
        if !self.shape.audio {
            return (video_at, true);
        }
        let audio_at = Duration::from_micros(self.audio_seq * 1024 * 1_000_000 / 44_100);
        if video_at <= audio_at {
            (video_at, true)
        } else {
            (audio_at, false)
        }
    }

    /// The next frame, stamped with the current time, and when it was due after the
    /// stream's start.
    pub fn next_frame(&mut self) -> (Duration, SynthFrame) {
        let (due, video) = self.next_kind();
        let sent_us = self.clock.now_us();
        let timestamp = due.as_millis() as u32;
        if video {
            let keyframe = self.video_seq.is_multiple_of(u64::from(self.shape.gop.max(1)));
            let (key, inter) = self.shape.frame_sizes();
            let size = if keyframe { key } else { inter };
            let mut b = BytesMut::with_capacity(5 + size);
            b.put_slice(&[if keyframe { 0x17 } else { 0x27 }, 0x01, 0, 0, 0]);
            stamp(&mut b, self.video_seq, sent_us, size, &self.filler);
            self.video_seq += 1;
            (due, SynthFrame::Video { timestamp, payload: b.freeze(), keyframe })
        } else {
            let mut b = BytesMut::with_capacity(2 + 186);
            b.put_slice(&[0xAF, 0x01]);
            stamp(&mut b, self.audio_seq, sent_us, 186, &self.filler);
            self.audio_seq += 1;
            (due, SynthFrame::Audio { timestamp, payload: b.freeze() })
        }
    }

    /// Video frames produced so far.
    #[cfg(test)]
    pub(crate) fn video_frames(&self) -> u64 {
        self.video_seq
    }
}

fn stamp(b: &mut BytesMut, seq: u64, sent_us: u64, size: usize, filler: &[u8]) {
    b.put_slice(MAGIC);
    b.put_u64(seq);
    b.put_u64(sent_us);
    let rest = size.saturating_sub(STAMP);
    b.put_slice(&filler[..rest.min(filler.len())]);
}

/// The (sequence, send time in µs since the Unix epoch) stamped in a synthetic video
/// or audio body.
pub fn read_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let offset = match body.first()? {
        0x17 | 0x27 => 5,
        0xAF => 2,
        _ => return None,
    };
    let s = body.get(offset..offset + STAMP)?;
    if &s[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(s[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(s[12..20].try_into().ok()?);
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_bitrate_and_frames_carry_stamps() {
        let shape = StreamShape::default();
        let mut synth = Synth::new(shape, Instant::now());
        let mut video_bytes = 0;
        let mut last = Duration::ZERO;
        let mut keyframes = 0;
        while synth.video_frames() < 300 {
            let (due, frame) = synth.next_frame();
            assert!(due >= last, "frames come in due order");
            last = due;
            if let SynthFrame::Video { payload, keyframe, .. } = frame {
                assert_eq!(read_stamp(&payload).unwrap().0, synth.video_frames() - 1);
                video_bytes += payload.len();
                keyframes += usize::from(keyframe);
            }
        }
        // 300 frames at 30 fps = 10 s at 2500 kbit/s ≈ 3.1 MB.
        let kbps = video_bytes * 8 / 10 / 1000;
        assert!((2400..=2600).contains(&kbps), "{kbps} kbit/s");
        assert_eq!(keyframes, 5);
        assert!(read_stamp(&[0x17, 1, 0, 0, 0, b'X']).is_none());
    }

    #[test]
    fn stamps_are_unix_microseconds_that_map_back_to_instants() {
        let epoch = Instant::now() - Duration::from_secs(5);
        let clock = StampClock::new(epoch);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let now = clock.now_us();
        // The same moment on both clocks, give or take the time between the reads.
        assert!(now.abs_diff(wall) < 50_000, "{now} vs {wall}");
        assert!(clock.unix_us(epoch).abs_diff(wall - 5_000_000) < 50_000);
        let at = epoch + Duration::from_micros(1_234_567);
        assert_eq!(clock.instant_of(clock.unix_us(at)), at);
        assert_eq!(clock.instant_of(0), epoch, "older than the epoch: the epoch");

        let mut synth = Synth::with_clock(StreamShape::default(), clock);
        let before = clock.now_us();
        let (_, frame) = synth.next_frame();
        let SynthFrame::Video { payload, .. } = frame else { panic!("video comes first") };
        let (seq, sent) = read_stamp(&payload).unwrap();
        assert_eq!(seq, 0);
        assert!(sent >= before && sent <= clock.now_us());
        let (_, frame) = synth.next_frame();
        let SynthFrame::Audio { payload, .. } = frame else { panic!("then audio") };
        assert_eq!(read_stamp(&payload).map(|s| s.0), Some(0));
    }
}
