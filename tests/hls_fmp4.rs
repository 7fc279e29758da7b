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

    // An edge that joins in the middle of segment 1 (the sequence headers first, as a
    // hub gives them) writes the same files for every segment and part it has.
    let late_dir = dir.join("late");
    std::fs::create_dir(&late_dir).unwrap();
    let middle = frames.iter().position(|f| f.hls.is_some_and(|m| m.msn == 1 && m.part == 3)).unwrap();
    let headers = frames.iter().filter(|f| f.header && f.kind != FrameKind::Data).cloned();
    let late: Vec<Frame> = headers.chain(frames[middle..].iter().cloned()).collect();
    package_to(&late_dir, &late);
    let mut compared = 0;
    for entry in std::fs::read_dir(&late_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".m4s") || name.ends_with(".mp4") {
            let late = std::fs::read(late_dir.join(&name)).unwrap();
            assert!(late == std::fs::read(dir.join(&name)).unwrap(), "{name} is the same on both edges");
            compared += 1;
        }
    }
    assert!(compared >= 10 && late_dir.join("seg-2.m4s").exists(), "segments and parts compared: {compared}");
    assert!(!late_dir.join("seg-1.m4s").exists(), "the late edge starts at a segment boundary");

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

/// ffmpeg's `tee` muxer does not ask libx264 for a global header, so the FLV has an
/// empty AVC sequence header and Annex-B frames with SPS and PPS in every keyframe;
/// the packager builds the `avcC` from them and rewrites the start codes.
#[test]
fn h264_with_in_band_parameter_sets_from_ffmpegs_tee_muxer_decodes_frame_for_frame() {
    let dir = keep(tempfile::tempdir().unwrap(), "h264-annexb-aac");
    let source = dir.path().join("source.flv");
    let tee = format!("[f=flv]{}", source.to_str().unwrap());
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
        "-map",
        "0:v",
        "-map",
        "1:a",
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
        "tee",
        &tee,
    ]);
    let frames = read_flv(&std::fs::read(&source).unwrap());
    let header = frames.iter().find(|f| f.kind == FrameKind::Video && f.header).expect("a video sequence header");
    assert_eq!(&header.payload[..], &[0x17, 0, 0, 0, 0], "the sequence header is empty");
    let key = frames.iter().find(|f| f.kind == FrameKind::Video && f.keyframe && !f.header).unwrap();
    assert_eq!(&key.payload[5..10], &[0, 0, 0, 1, 0x67], "Annex-B, the SPS first");
    let out = dir.path().join("hls");
    std::fs::create_dir(&out).unwrap();
    let events = assert_hls_decodes_like(&source, frames, &out);
    let Some(Packaged::Init(init)) = events.first() else { panic!("an init segment comes first") };
    assert_eq!(init.codecs, "avc1.4d400d,mp4a.40.2", "the profile and level of the in-band SPS");

    // ffmpeg decodes Annex-B even behind an avcC, so compare the bytes too: the avcC
    // and every video sample are what ffmpeg's MP4 muxer makes of the same FLV
    // (length-prefixed NAL units, parameter sets kept in the keyframes).
    let mut ours = init.bytes.to_vec();
    for event in &events {
        if let Packaged::SegmentEnd(end) = event {
            ours.extend(std::fs::read(out.join(format!("seg-{}.m4s", end.msn))).unwrap());
        }
    }
    let remuxed = dir.path().join("remuxed.mp4");
    let flags = "frag_keyframe+empty_moov+default_base_moof";
    ffmpeg(&["-i", source.to_str().unwrap(), "-c", "copy", "-movflags", flags, remuxed.to_str().unwrap()]);
    let video = |tracks: Vec<Mp4Track>| tracks.into_iter().find(|t| &t.entry == b"avc1").expect("an avc1 track");
    let (ours, theirs) =
        (video(read_fragmented_mp4(&ours)), video(read_fragmented_mp4(&std::fs::read(remuxed).unwrap())));
    assert_eq!(ours.config, theirs.config, "the same avcC");
    assert_eq!(ours.samples.len(), theirs.samples.len());
    for (i, (a, b)) in ours.samples.iter().zip(&theirs.samples).enumerate() {
        assert!(a.data == b.data, "video sample {i}: the same NAL units behind the same lengths");
        assert_eq!(a.sync, b.sync, "video sample {i}");
    }
}

/// One track of an ffmpeg fragmented MP4: its codec box and samples.
#[derive(Default)]
struct Mp4Track {
    id: u32,
    timescale: u32,
    /// The sample entry's type (`hvc1`, `av01`, `mp4a`, `Opus`) and its configuration
    /// box body (`hvcC`, `av1C`, the AudioSpecificConfig from `esds`, `dOps`).
    entry: [u8; 4],
    config: Vec<u8>,
    samples: Vec<Mp4Sample>,
}

struct Mp4Sample {
    dts: u64,
    composition: i64,
    sync: bool,
    data: Vec<u8>,
}

fn mp4_boxes(mut b: &[u8]) -> Vec<([u8; 4], &[u8], usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while b.len() >= 8 {
        let size = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        let size = if size == 0 { b.len() } else { size };
        out.push((b[4..8].try_into().unwrap(), &b[8..size], at));
        at += size;
        b = &b[size..];
    }
    out
}

fn mp4_child<'a>(b: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
    mp4_boxes(b).into_iter().find(|x| &x.0 == kind).unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(kind))).1
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// Reads the tracks and samples of a fragmented MP4 as ffmpeg writes it
/// (`-movflags frag_keyframe+empty_moov+default_base_moof`).
fn read_fragmented_mp4(file: &[u8]) -> Vec<Mp4Track> {
    let top = mp4_boxes(file);
    let moov = top.iter().find(|b| &b.0 == b"moov").unwrap().1;
    let mut tracks = Vec::new();
    for (_, trak, _) in mp4_boxes(moov).into_iter().filter(|b| &b.0 == b"trak") {
        let tkhd = mp4_child(trak, b"tkhd");
        let id = be32(&tkhd[if tkhd[0] == 1 { 20 } else { 12 }..]);
        let mdia = mp4_child(trak, b"mdia");
        let mdhd = mp4_child(mdia, b"mdhd");
        let timescale = be32(&mdhd[if mdhd[0] == 1 { 20 } else { 12 }..]);
        let stsd = mp4_child(mp4_child(mp4_child(mdia, b"minf"), b"stbl"), b"stsd");
        let (entry, body, _) = mp4_boxes(&stsd[8..])[0];
        let audio = &entry == b"mp4a" || &entry == b"Opus";
        let children = mp4_boxes(&body[if audio { 28 } else { 78 }..]);
        let config = match &entry {
            b"mp4a" => asc_of_esds(children.iter().find(|c| &c.0 == b"esds").unwrap().1),
            b"Opus" => children.iter().find(|c| &c.0 == b"dOps").unwrap().1.to_vec(),
            b"hvc1" | b"hev1" => children.iter().find(|c| &c.0 == b"hvcC").unwrap().1.to_vec(),
            b"av01" => children.iter().find(|c| &c.0 == b"av1C").unwrap().1.to_vec(),
            b"avc1" => children.iter().find(|c| &c.0 == b"avcC").unwrap().1.to_vec(),
            other => panic!("sample entry {}", String::from_utf8_lossy(other)),
        };
        tracks.push(Mp4Track { id, timescale, entry, config, samples: Vec::new() });
    }
    let mut next_dts = vec![0u64; tracks.len()];
    for (kind, moof, moof_at) in &top {
        if kind != b"moof" {
            continue;
        }
        let moof_start = moof_at;
        for (_, traf, _) in mp4_boxes(moof).into_iter().filter(|b| &b.0 == b"traf") {
            let tfhd = mp4_child(traf, b"tfhd");
            let flags = be32(tfhd) & 0xFF_FFFF;
            let id = be32(&tfhd[4..]);
            let mut at = 8;
            let mut base = *moof_start as u64;
            if flags & 0x1 != 0 {
                base = u64::from_be_bytes(tfhd[at..at + 8].try_into().unwrap());
                at += 8;
            }
            if flags & 0x2 != 0 {
                at += 4;
            }
            let mut default_duration = 0;
            if flags & 0x8 != 0 {
                default_duration = be32(&tfhd[at..]);
                at += 4;
            }
            let mut default_size = 0;
            if flags & 0x10 != 0 {
                default_size = be32(&tfhd[at..]);
                at += 4;
            }
            let mut default_flags = 0;
            if flags & 0x20 != 0 {
                default_flags = be32(&tfhd[at..]);
            }
            let t = tracks.iter().position(|t| t.id == id).unwrap();
            let mut dts = next_dts[t];
            if let Some((_, tfdt, _)) = mp4_boxes(traf).into_iter().find(|b| &b.0 == b"tfdt") {
                dts = if tfdt[0] == 1 {
                    u64::from_be_bytes(tfdt[4..12].try_into().unwrap())
                } else {
                    u64::from(be32(&tfdt[4..]))
                };
            }
            let mut data_at = base as usize;
            for (_, trun, _) in mp4_boxes(traf).into_iter().filter(|b| &b.0 == b"trun") {
                let tflags = be32(trun) & 0xFF_FFFF;
                let count = be32(&trun[4..]);
                let mut at = 8;
                if tflags & 0x1 != 0 {
                    data_at = (base as i64 + i64::from(be32(&trun[at..]) as i32)) as usize;
                    at += 4;
                }
                let mut first_flags = None;
                if tflags & 0x4 != 0 {
                    first_flags = Some(be32(&trun[at..]));
                    at += 4;
                }
                for i in 0..count {
                    let mut field = |bit: u32, default: u32| {
                        if tflags & bit != 0 {
                            at += 4;
                            be32(&trun[at - 4..])
                        } else {
                            default
                        }
                    };
                    let duration = field(0x100, default_duration);
                    let size = field(0x200, default_size) as usize;
                    let mut sample_flags = field(0x400, default_flags);
                    if i == 0 {
                        sample_flags = first_flags.unwrap_or(sample_flags);
                    }
                    let composition = i64::from(field(0x800, 0) as i32);
                    tracks[t].samples.push(Mp4Sample {
                        dts,
                        composition,
                        sync: sample_flags & 0x1_0000 == 0,
                        data: file[data_at..data_at + size].to_vec(),
                    });
                    data_at += size;
                    dts += u64::from(duration);
                }
            }
            next_dts[t] = dts;
        }
    }
    tracks
}

/// The AudioSpecificConfig inside an `esds` box body.
fn asc_of_esds(esds: &[u8]) -> Vec<u8> {
    let mut at = 4;
    let descriptor = |at: &mut usize| {
        let tag = esds[*at];
        *at += 1;
        let mut len = 0usize;
        loop {
            let b = esds[*at];
            *at += 1;
            len = (len << 7) | usize::from(b & 0x7F);
            if b & 0x80 == 0 {
                break;
            }
        }
        (tag, len)
    };
    assert_eq!(descriptor(&mut at).0, 3);
    let flags = esds[at + 2];
    at += 3 + if flags & 0x80 != 0 { 2 } else { 0 } + if flags & 0x20 != 0 { 2 } else { 0 };
    assert_eq!(descriptor(&mut at).0, 4);
    at += 13;
    let (tag, len) = descriptor(&mut at);
    assert_eq!(tag, 5);
    esds[at..at + len].to_vec()
}

/// The parameter sets of an `hvcC` body, in order.
fn hvcc_parameter_sets(hvcc: &[u8]) -> Vec<&[u8]> {
    let mut sets = Vec::new();
    let mut at = 23;
    for _ in 0..hvcc[22] {
        let count = u16::from_be_bytes([hvcc[at + 1], hvcc[at + 2]]);
        at += 3;
        for _ in 0..count {
            let len = usize::from(u16::from_be_bytes([hvcc[at], hvcc[at + 1]]));
            sets.push(&hvcc[at + 2..at + 2 + len]);
            at += 2 + len;
        }
    }
    sets
}

/// An HEVC sample (4-byte lengths) as an Annex-B publisher sends it: start codes, an
/// access unit delimiter first, and a keyframe led by the parameter sets.
fn hevc_annexb(sample: &Mp4Sample, parameter_sets: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 1, 0x46, 0x01, 0x10];
    if sample.sync {
        for set in parameter_sets {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(set);
        }
    }
    let mut data = &sample.data[..];
    while !data.is_empty() {
        let len = be32(data) as usize;
        out.extend_from_slice(&[0, 0, 1]);
        out.extend_from_slice(&data[4..4 + len]);
        data = &data[4 + len..];
    }
    out
}

/// The tracks as an Enhanced RTMP publisher would send them: sequence headers, then
/// every sample as a tag with its ms timestamp, interleaved by decode time. With
/// `annexb`, HEVC goes as an in-band publisher sends it: an empty `hvcC`, Annex-B
/// samples with the parameter sets in every keyframe.
fn enhanced_rtmp_frames(tracks: &[Mp4Track], annexb: bool) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut tagged = Vec::new();
    for track in tracks {
        let ms = |t: u64| t * 1000 / u64::from(track.timescale);
        match &track.entry {
            b"hvc1" | b"hev1" | b"av01" => {
                let fourcc: &[u8; 4] = if &track.entry == b"av01" { b"av01" } else { b"hvc1" };
                let annexb = annexb && fourcc == b"hvc1";
                let config: &[u8] = if annexb { &[] } else { &track.config };
                frames.push(Frame::video(0, Bytes::from([&[0x90u8][..], fourcc, config].concat())));
                let sets = if annexb { hvcc_parameter_sets(&track.config) } else { Vec::new() };
                for s in &track.samples {
                    let data = if annexb { hevc_annexb(s, &sets) } else { s.data.clone() };
                    let frame_type = if s.sync { 0x10 } else { 0x20 };
                    let body = if fourcc == b"av01" {
                        [&[0x80 | frame_type | 1][..], fourcc, &data].concat()
                    } else {
                        let cts = (s.composition * 1000 / i64::from(track.timescale)) as i32;
                        [&[0x80 | frame_type | 1][..], fourcc, &cts.to_be_bytes()[1..], &data].concat()
                    };
                    tagged.push((ms(s.dts), 0, Frame::video(ms(s.dts) as u32, Bytes::from(body))));
                }
            }
            b"mp4a" => {
                frames.push(Frame::audio(0, Bytes::from([&[0xAF, 0][..], &track.config].concat())));
                for s in &track.samples {
                    tagged.push((
                        ms(s.dts),
                        1,
                        Frame::audio(ms(s.dts) as u32, Bytes::from([&[0xAF, 1][..], &s.data].concat())),
                    ));
                }
            }
            b"Opus" => {
                // dOps (big-endian) back to the OpusHead a publisher sends.
                let d = &track.config;
                let mut head = b"OpusHead".to_vec();
                head.extend_from_slice(&[1, d[1]]);
                head.extend_from_slice(&u16::from_be_bytes([d[2], d[3]]).to_le_bytes());
                head.extend_from_slice(&u32::from_be_bytes([d[4], d[5], d[6], d[7]]).to_le_bytes());
                head.extend_from_slice(&i16::from_be_bytes([d[8], d[9]]).to_le_bytes());
                head.extend_from_slice(&d[10..]);
                frames.push(Frame::audio(0, Bytes::from([&[0x90][..], b"Opus", &head].concat())));
                for s in &track.samples {
                    let body = [&[0x91][..], b"Opus", &s.data].concat();
                    tagged.push((ms(s.dts), 1, Frame::audio(ms(s.dts) as u32, Bytes::from(body))));
                }
            }
            other => panic!("{}", String::from_utf8_lossy(other)),
        }
    }
    tagged.sort_by_key(|(ms, order, _)| (*ms, *order));
    frames.extend(tagged.into_iter().map(|(_, _, f)| f));
    frames
}

/// Encodes 7 s of test pattern and tone with `video` and `audio` into a fragmented
/// MP4, turns it into Enhanced RTMP tags and checks the HLS stream made of them.
fn enhanced_rtmp_roundtrip(name: &str, video: &[&str], audio: &[&str], rate: &str, annexb: bool) -> Vec<Packaged> {
    let dir = keep(tempfile::tempdir().unwrap(), name);
    let source = dir.path().join("source.mp4");
    let sine = format!("sine=frequency=440:sample_rate={rate}");
    let mut args = vec!["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", &sine, "-t", "7"];
    args.extend_from_slice(video);
    args.extend_from_slice(audio);
    args.extend_from_slice(&["-movflags", "frag_keyframe+empty_moov+default_base_moof", source.to_str().unwrap()]);
    ffmpeg(&args);
    let tracks = read_fragmented_mp4(&std::fs::read(&source).unwrap());
    let frames = enhanced_rtmp_frames(&tracks, annexb);
    let out = dir.path().join("hls");
    std::fs::create_dir(&out).unwrap();
    assert_hls_decodes_like(&source, frames, &out)
}

#[test]
fn hevc_and_aac_over_enhanced_rtmp_decode_frame_for_frame_from_the_hls_stream() {
    let events = enhanced_rtmp_roundtrip(
        "hevc-aac",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "keyint=30:min-keyint=30:bframes=2:log-level=error",
        ],
        &["-c:a", "aac"],
        "44100",
        false,
    );
    let Some(Packaged::Init(init)) = events.first() else { panic!("an init segment comes first") };
    assert!(init.codecs.starts_with("hvc1.1.6.L"), "{}", init.codecs);
    assert!(init.codecs.ends_with(",mp4a.40.2"), "{}", init.codecs);
}

#[test]
fn hevc_with_in_band_parameter_sets_decodes_frame_for_frame_with_ffmpegs_hvcc() {
    let x265 = [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "keyint=30:min-keyint=30:bframes=2:log-level=error",
    ];
    let events = enhanced_rtmp_roundtrip("hevc-annexb-aac", &x265, &["-c:a", "aac"], "44100", true);
    let Some(Packaged::Init(init)) = events.first() else { panic!("an init segment comes first") };
    assert!(init.codecs.starts_with("hvc1.1.6.L"), "{}", init.codecs);
    // The hvcC built from the in-band parameter sets is the one ffmpeg wrote, but for
    // the SEI array x265's record also carries (its options, not a parameter set).
    let with_header = enhanced_rtmp_roundtrip("hevc-header-aac", &x265, &["-c:a", "aac"], "44100", false);
    let Some(Packaged::Init(theirs)) = with_header.first() else { panic!() };
    let hvcc = |init: &[u8]| {
        let at = init.windows(4).position(|w| w == b"hvcC").unwrap();
        init[at + 4..at - 4 + be32(&init[at - 4..]) as usize].to_vec()
    };
    let (ours, theirs) = (hvcc(&init.bytes), hvcc(&theirs.bytes));
    assert_eq!(ours[..22], theirs[..22], "profile, tier, level, chroma, depths, layers, length size");
    let sets = |hvcc: &[u8]| -> Vec<Vec<u8>> {
        hvcc_parameter_sets(hvcc)
            .into_iter()
            .filter(|n| (32..=34).contains(&((n[0] >> 1) & 0x3F)))
            .map(<[u8]>::to_vec)
            .collect()
    };
    assert_eq!(sets(&ours).len(), 3);
    assert_eq!(sets(&ours), sets(&theirs), "the same VPS, SPS and PPS");
}

#[test]
fn av1_and_opus_over_enhanced_rtmp_decode_frame_for_frame_from_the_hls_stream() {
    let events = enhanced_rtmp_roundtrip(
        "av1-opus",
        &["-c:v", "libsvtav1", "-preset", "12", "-g", "30"],
        &["-c:a", "libopus"],
        "48000",
        false,
    );
    let Some(Packaged::Init(init)) = events.first() else { panic!("an init segment comes first") };
    assert!(init.codecs.starts_with("av01.0."), "{}", init.codecs);
    assert!(init.codecs.ends_with(",opus"), "{}", init.codecs);
}

/// Packaging cost: run with
/// `cargo test --release --test hls_fmp4 packaging_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn packaging_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.flv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "20",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-b:v",
        "4M",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-f",
        "flv",
        source.to_str().unwrap(),
    ]);
    let mut frames = read_flv(&std::fs::read(&source).unwrap());
    let mut marker = Marker::new(2000, 200, true);
    for frame in &mut frames {
        marker.mark(frame);
    }
    let bytes: usize = frames.iter().map(|f| f.payload.len()).sum();
    let rounds = 50;
    let start = std::time::Instant::now();
    let mut out = 0usize;
    for _ in 0..rounds {
        let mut packager = Packager::new();
        for frame in &frames {
            out += packager.push(frame).len();
        }
        out += packager.finish().len();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = (bytes * rounds) as f64;
    println!(
        "packaged {rounds} x {} frames ({:.1} MB of tag bodies, {out} events) in {elapsed:.3} s: {:.0} MB/s, {:.2} us/frame, {:.2} CPU-s per GB",
        frames.len(),
        total / 1e6,
        total / 1e6 / elapsed,
        elapsed * 1e6 / (frames.len() * rounds) as f64,
        elapsed / (total / 1e9),
    );
}
