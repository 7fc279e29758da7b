//! The packager's real proof: media that ffmpeg encodes goes through a stamper-like
//! marker and the packager, is written out as an HLS stream (init segment, segments,
//! playlist), and ffmpeg's HLS reader decodes every source frame from it, the same
//! frames in the same order (`-f framemd5` hashes of the decoded pictures and audio).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use raftcast::hls::mark::{Boundary, HlsMark, SegmentOpen};
use raftcast::hls::packager::Packager;
use raftcast::hls::Packaged;
use raftcast::media::{Frame, FrameKind};

/// Cuts like a publishing edge would: a segment at the first video keyframe at least
/// `segment_ms` after the last segment opened, a part at the first frame at least
/// `part_ms` after the last part opened. Headers and metadata carry no mark.
struct Marker {
    segment_ms: u64,
    part_ms: u64,
    msn: u64,
    part: u32,
    segment_start: Option<u64>,
    part_start: u64,
    has_video: bool,
}

impl Marker {
    fn new(segment_ms: u64, part_ms: u64, has_video: bool) -> Self {
        Marker { segment_ms, part_ms, msn: 0, part: 0, segment_start: None, part_start: 0, has_video }
    }

    fn mark(&mut self, frame: &mut Frame) {
        if frame.header || frame.kind == FrameKind::Data {
            return;
        }
        let time_ms = u64::from(frame.timestamp);
        let key = frame.keyframe || (!self.has_video && frame.kind == FrameKind::Audio);
        let boundary = match self.segment_start {
            None if key => {
                self.segment_start = Some(time_ms);
                Some(Boundary::Segment(self.open(time_ms)))
            }
            None => return,
            Some(start) if key && time_ms >= start + self.segment_ms => {
                self.msn += 1;
                self.part = 0;
                self.segment_start = Some(time_ms);
                Some(Boundary::Segment(self.open(time_ms)))
            }
            Some(_) if time_ms >= self.part_start + self.part_ms => {
                self.part += 1;
                Some(Boundary::Part { independent: frame.keyframe })
            }
            Some(_) => None,
        };
        if boundary.is_some() {
            self.part_start = time_ms;
        }
        frame.hls = Some(HlsMark { msn: self.msn, part: self.part, time_ms, boundary });
    }

    fn open(&self, time_ms: u64) -> SegmentOpen {
        SegmentOpen {
            discontinuity: 0,
            wall_ms: 1_700_000_000_000 + time_ms,
            target_ms: self.segment_ms as u32,
            part_target_ms: self.part_ms as u32,
        }
    }
}

/// The tags of an FLV file as frames, in file order.
fn read_flv(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..3], b"FLV");
    let mut at = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize + 4;
    let mut frames = Vec::new();
    while at + 11 <= bytes.len() {
        let kind = bytes[at];
        let size = u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let ts = u32::from_be_bytes([bytes[at + 7], bytes[at + 4], bytes[at + 5], bytes[at + 6]]);
        let body = Bytes::copy_from_slice(&bytes[at + 11..at + 11 + size]);
        frames.push(match kind {
            8 => Frame::audio(ts, body),
            9 => Frame::video(ts, body),
            _ => Frame::metadata(ts, body),
        });
        at += 11 + size + 4;
    }
    frames
}

/// Packages `frames` and writes `index.m3u8`, its init segments and segments to `dir`.
/// Returns the events for further checks.
fn package_to(dir: &Path, frames: &[Frame]) -> Vec<Packaged> {
    let mut packager = Packager::new();
    let mut events = Vec::new();
    for frame in frames {
        events.extend(packager.push(frame));
    }
    events.extend(packager.finish());
    assert_eq!(packager.stats().unparsed, 0, "{:?}", packager.stats());
    assert_eq!(packager.stats().lost, 0, "{:?}", packager.stats());

    let mut playlist = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n");
    let mut segment = Vec::new();
    let mut map = None;
    for event in &events {
        match event {
            Packaged::Init(init) => {
                std::fs::write(dir.join(format!("init-{}.mp4", init.version)), &init.bytes).unwrap();
            }
            Packaged::SegmentStart(start) => {
                if map != Some(start.init_version) {
                    map = Some(start.init_version);
                    writeln!(playlist, "#EXT-X-MAP:URI=\"init-{}.mp4\"", start.init_version).unwrap();
                }
                segment.clear();
            }
            Packaged::Part(part) => {
                std::fs::write(dir.join(format!("part-{}.{}.m4s", part.msn, part.index)), &part.bytes).unwrap();
                segment.extend_from_slice(&part.bytes);
            }
            Packaged::SegmentEnd(end) => {
                std::fs::write(dir.join(format!("seg-{}.m4s", end.msn)), &segment).unwrap();
                writeln!(playlist, "#EXTINF:{:.3},\nseg-{}.m4s", f64::from(end.duration_ms) / 1000.0, end.msn).unwrap();
            }
        }
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    std::fs::write(dir.join("index.m3u8"), playlist).unwrap();
    events
}

/// `ffmpeg -f framemd5` of `input`: each stream's decoded frame hashes, in order.
fn frame_hashes(input: &Path, extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error"])
        .args(extra)
        .arg("-i")
        .arg(input)
        .args(["-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg -f framemd5 {input:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        streams.entry(fields[0].to_string()).or_default().push(fields[fields.len() - 1].to_string());
    }
    streams
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg").args(["-nostdin", "-v", "error", "-y"]).args(args).output().expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Marks `frames` and checks that the HLS stream the packager makes of them decodes to
/// exactly the frames of `source`.
fn assert_hls_decodes_like(source: &Path, mut frames: Vec<Frame>, dir: &Path) -> Vec<Packaged> {
    let has_video = frames.iter().any(|f| f.kind == FrameKind::Video);
    let mut marker = Marker::new(2000, 200, has_video);
    for frame in &mut frames {
        marker.mark(frame);
    }
    let events = package_to(dir, &frames);
    let segments = events.iter().filter(|e| matches!(e, Packaged::SegmentEnd(_))).count();
    assert!(segments >= 3, "several segments were cut: {segments}");

    let expected = frame_hashes(source, &[]);
    let got = frame_hashes(&dir.join("index.m3u8"), &[]);
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same streams");
    assert!(
        expected.values().all(|h| h.len() > 100),
        "the source has frames: {:?}",
        expected.values().map(Vec::len).collect::<Vec<_>>()
    );
    for (stream, hashes) in &expected {
        let got = &got[stream];
        assert_eq!(got.len(), hashes.len(), "stream {stream}: every source frame decoded");
        assert!(got == hashes, "stream {stream}: the same frames in the same order");
    }
    events
}

/// Keeps the test's files in `$HLS_FMP4_KEEP/NAME` when that is set (to look at them
/// with other players), else in a temporary folder removed at the end.
fn keep(dir: tempfile::TempDir, name: &str) -> KeptDir {
    match std::env::var_os("HLS_FMP4_KEEP") {
        Some(root) => {
            let path = Path::new(&root).join(name);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            KeptDir { path, _temp: None }
        }
        None => KeptDir { path: dir.path().to_path_buf(), _temp: Some(dir) },
    }
}

struct KeptDir {
    path: std::path::PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl KeptDir {
    fn path(&self) -> &Path {
        &self.path
    }
}

#[test]
fn h264_and_aac_from_ffmpeg_flv_decode_frame_for_frame_from_the_hls_stream() {
    let dir = tempfile::tempdir().unwrap();
    let dir = keep(dir, "h264-aac");
    let source = dir.path().join("source.flv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "7",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-bf",
        "2",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-f",
        "flv",
        source.to_str().unwrap(),
    ]);
    let frames = read_flv(&std::fs::read(&source).unwrap());
    let out = dir.path().join("hls");
    std::fs::create_dir(&out).unwrap();
    let events = assert_hls_decodes_like(&source, frames, &out);
    let Some(Packaged::Init(init)) = events.first() else { panic!("an init segment comes first") };
    // libx264's ultrafast preset writes Main profile (with constraint_set1), level 1.3.
    assert_eq!(init.codecs, "avc1.4d400d,mp4a.40.2");
}
