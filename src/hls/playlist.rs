//! The LL-HLS media playlist of one stream, rendered from its [`Window`] alone: no
//! clock, no edge name, no client, so every edge holding the same window serves the
//! same bytes. Players without low-latency support read it as plain HLS (they ignore
//! `EXT-X-PART`, `EXT-X-PRELOAD-HINT` and `EXT-X-SERVER-CONTROL`).
//!
//! Rules kept (RFC 8216bis): `EXTINF` rounded is at most `EXT-X-TARGETDURATION`; every
//! part at most `PART-TARGET`; parts listed only for the segments less than three
//! target durations from the live end; `PART-HOLD-BACK` three part targets; a preload
//! hint for the next part. Never knows HTTP.

use std::fmt::Write;

use super::dvr::DvrSegment;
use super::window::{Segment, Window};

/// `EXT-X-VERSION`: version 6 is what `EXT-X-MAP` in a playlist that is not I-frames
/// only needs; the low-latency tags need no higher version (the RFC's own LL-HLS
/// examples say 6).
pub const VERSION: u32 = 6;
/// Segments whose end is this many target durations or more behind the live end are
/// listed without their parts (RFC 8216bis 4.4.4.9: three).
const PART_HORIZON_TARGETS: u64 = 3;

/// The media playlist's URIs, relative to the playlist (`/{app}/{name}/`).
pub fn init_uri(version: u32) -> String {
    format!("init-{version}.mp4")
}

pub fn segment_uri(msn: u64) -> String {
    format!("seg-{msn}.m4s")
}

pub fn part_uri(msn: u64, index: u32) -> String {
    format!("part-{msn}.{index}.m4s")
}

/// `EXT-X-TARGETDURATION` in seconds: the segment target, or the longest listed
/// segment rounded up if one is longer.
pub fn target_duration(window: &Window) -> u64 {
    let target = window.segments().chain(window.open()).map(|s| u64::from(s.start.target_ms)).max().unwrap_or(0);
    let longest = window.segments().map(Segment::elapsed_ms).max().unwrap_or(0);
    target.max(longest).div_ceil(1000).max(1)
}

/// `PART-TARGET` in ms: the part target, or the longest listed part if one is longer
/// (a part must never exceed it).
pub fn part_target_ms(window: &Window) -> u64 {
    let target = window.part_target_ms().map_or(0, u64::from);
    let longest = window
        .segments()
        .chain(window.open())
        .flat_map(|s| &s.parts)
        .map(|p| u64::from(p.duration_ms))
        .max()
        .unwrap_or(0);
    target.max(longest).max(1)
}

/// Seconds with three decimals from ms (`2.000`).
pub(crate) fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `EXT-X-PROGRAM-DATE-TIME` value: ms since the Unix epoch as ISO 8601 UTC with
/// milliseconds (`2026-12-05T00:00:00.000Z`).
pub fn date_time(ms: u64) -> String {
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The media playlist without a query or DVR entries: what the unit tests compare.
#[cfg(test)]
pub fn render(window: &Window) -> Option<String> {
    render_with_query(window, &[], 0, None)
}

/// The DVR entries a playlist lists before a window whose first segment is `first`:
/// the run of `index` (increasing msn) with consecutive numbers that ends exactly at
/// `first - 1`, trimmed from its old end so that its `EXTINF`s add up to at most
/// `span_ms`, that it starts at `floor` or later, and that no entry is longer than
/// `max_target_s` rounded up (one long old segment would raise
/// `EXT-X-TARGETDURATION`, and every player's reload interval and hold-back with
/// it, for as long as the span lists it). Empty when the index does not reach the
/// window (a gap lists nothing rather than skip a number, which the media sequence
/// cannot express).
pub fn dvr_run(index: &[DvrSegment], first: u64, span_ms: u64, floor: u64, max_target_s: u64) -> &[DvrSegment] {
    let Some(last) = first.checked_sub(1) else { return &[] };
    let Ok(end) = index.binary_search_by_key(&last, |s| s.msn) else { return &[] };
    let (mut start, mut sum) = (end + 1, 0u64);
    while start > 0 {
        let s = &index[start - 1];
        let follows = start > end || s.msn.checked_add(1) == Some(index[start].msn);
        let fits = sum + u64::from(s.duration_ms) <= span_ms
            && s.msn >= floor
            && u64::from(s.duration_ms).div_ceil(1000) <= max_target_s;
        if !follows || !fits {
            break;
        }
        sum += u64::from(s.duration_ms);
        start -= 1;
    }
    &index[start..end + 1]
}

/// What a live playlist lists before its window (live rewind): the stream's DVR index,
/// the span, and the lowest msn it may list (an edge never lists below a media
/// sequence number it served already: `EXT-X-MEDIA-SEQUENCE` never goes back).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewind<'a> {
    pub index: &'a [DvrSegment],
    pub span_ms: u64,
    pub floor: u64,
}

/// The DVR lines of one run for one query, kept by the caller between renders: a
/// long span's lines are formatted once per window move, not once per request.
#[derive(Debug, Default)]
pub struct DvrLines {
    key: Option<(u64, u64, Option<String>)>,
    text: String,
}

/// The media playlist, or `None` while the window has no complete segment, every URI
/// it names (map, parts, segments, preload hint) followed by `?{query}` when there is
/// one (an edge's segment token, `st=…`: the same for every player and every edge, so
/// the text stays identical across edges).
///
/// Live rewind: before the window's segments it lists the run [`dvr_run`] picks from
/// `dvr` (the stream's DVR index) for `dvr_span_ms` (0 lists none), whole, without
/// parts; the media and discontinuity sequences then come from the first of them.
pub fn render_with_query(window: &Window, dvr: &[DvrSegment], dvr_span_ms: u64, query: Option<&str>) -> Option<String> {
    let rewind = Rewind { index: dvr, span_ms: dvr_span_ms, floor: 0 };
    render_rewound(window, rewind, query, &mut DvrLines::default()).map(|(text, _)| text)
}

/// [`render_with_query`] with a floor and a cache of the DVR lines (`lines`, reused
/// when the run and the query are those it holds, else replaced). Also returns the
/// playlist's `EXT-X-MEDIA-SEQUENCE`.
pub fn render_rewound(
    window: &Window,
    rewind: Rewind<'_>,
    query: Option<&str>,
    lines: &mut DvrLines,
) -> Option<(String, u64)> {
    let q = query.map(|q| format!("?{q}")).unwrap_or_default();
    if !window.is_ready() {
        return None;
    }
    let first = window.segments().next()?;
    let target = target_duration(window);
    let dvr = dvr_run(rewind.index, first.msn(), rewind.span_ms, rewind.floor, target);
    let part_target = part_target_ms(window);
    let (media_sequence, discontinuity_sequence) = match dvr.first() {
        Some(s) => (s.msn, s.discontinuity),
        None => (first.msn(), first.start.discontinuity),
    };
    if let (Some(a), Some(b)) = (dvr.first(), dvr.last()) {
        let key = Some((a.msn, b.msn, query.map(str::to_owned)));
        if lines.key != key {
            lines.text = dvr_lines(dvr, &q);
            lines.key = key;
        }
    }
    let dvr_text = if dvr.is_empty() { "" } else { lines.text.as_str() };
    let mut out = String::with_capacity(256 + dvr_text.len() + 160 * window.segments().len());
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:{VERSION}\n#EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-PART-INF:PART-TARGET={}\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={}\n\
         #EXT-X-MEDIA-SEQUENCE:{media_sequence}\n#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}\n",
        seconds(part_target),
        seconds(3 * part_target),
    );
    out.push_str(dvr_text);
    // The previous listed segment's (discontinuity, init version).
    let mut previous: Option<(u32, u32)> = dvr.last().map(|s| (s.discontinuity, s.init_version));
    let mut opening = |out: &mut String, discontinuity: u32, init_version: u32, wall_ms: u64| {
        opening_tags(out, &mut previous, discontinuity, init_version, wall_ms, &q);
    };
    // Where parts stop being listed: segments that end within three target durations
    // of the live end (the end of the last part).
    let all: Vec<&Segment> = window.segments().chain(window.open()).collect();
    let mut behind = 0u64;
    let mut with_parts = vec![false; all.len()];
    for (i, segment) in all.iter().enumerate().rev() {
        with_parts[i] = behind < PART_HORIZON_TARGETS * target * 1000;
        behind += segment.elapsed_ms();
    }
    for (segment, with_parts) in all.iter().zip(with_parts) {
        let s = &segment.start;
        opening(&mut out, s.discontinuity, s.init_version, s.wall_ms);
        if with_parts {
            for part in &segment.parts {
                let _ = writeln!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"{}{q}\"{}",
                    seconds(u64::from(part.duration_ms)),
                    part_uri(segment.msn(), part.index),
                    if part.independent { ",INDEPENDENT=YES" } else { "" }
                );
            }
        }
        if let Some(duration) = segment.duration_ms {
            let _ = writeln!(out, "#EXTINF:{},\n{}{q}", seconds(u64::from(duration)), segment_uri(segment.msn()));
        }
    }
    // Between publishing sessions (no open segment) too: the next session continues at
    // the last segment + 1 (`docs/hls.md`, "Numbering"), a request for that part waits
    // for it like any hinted part (404 if it does not come), and hls.js 1.7 needs a tag
    // after the last segment's URI: without one it takes that segment for the next
    // one's hint and calls the reconnect's `EXT-X-DISCONTINUITY` a "discontinuity
    // sequence mismatch", a fatal error (seen in `tests/hls_lb.rs`).
    if let Some((msn, index)) = window.next_part() {
        let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}{q}\"", part_uri(msn, index));
    }
    Some((out, media_sequence))
}

/// What precedes a listed segment's `EXTINF`: `EXT-X-DISCONTINUITY` where the
/// discontinuity number changes, `EXT-X-MAP` where the init version does, and its
/// `EXT-X-PROGRAM-DATE-TIME`. `previous`: the segment listed before it.
fn opening_tags(
    out: &mut String,
    previous: &mut Option<(u32, u32)>,
    discontinuity: u32,
    init_version: u32,
    wall_ms: u64,
    q: &str,
) {
    if previous.is_some_and(|(d, _)| d != discontinuity) {
        out.push_str("#EXT-X-DISCONTINUITY\n");
    }
    if previous.is_none_or(|(_, v)| v != init_version) {
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}{q}\"", init_uri(init_version));
    }
    let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", date_time(wall_ms));
    *previous = Some((discontinuity, init_version));
}

/// The lines of a DVR run (`q`: `?{query}` or empty).
fn dvr_lines(run: &[DvrSegment], q: &str) -> String {
    let mut out = String::with_capacity(120 * run.len());
    let mut previous = None;
    for s in run {
        opening_tags(&mut out, &mut previous, s.discontinuity, s.init_version, s.wall_ms, q);
        let _ = writeln!(out, "#EXTINF:{},\n{}{q}", seconds(u64::from(s.duration_ms)), segment_uri(s.msn));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::window::tests::{end, feed_segment, init, part, start};
    use crate::hls::window::WindowLimits;
    use crate::hls::{Packaged, SegmentStart};

    fn live_window() -> Window {
        let mut w = Window::new(WindowLimits::default());
        w.push(init(0));
        for msn in 100..110 {
            feed_segment(&mut w, msn);
        }
        w.push(start(110, 0));
        w.push(part(110, 0, 10));
        w.push(part(110, 1, 10));
        w
    }

    /// Tag name → attribute value or the value after `:`.
    fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let rest = line.split_once(':')?.1;
        rest.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    fn secs(v: &str) -> f64 {
        v.parse().unwrap()
    }

    #[test]
    fn follows_the_rfc_rules() {
        let text = render(&live_window()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#EXTM3U");
        let value = |tag: &str| lines.iter().find_map(|l| l.strip_prefix(tag)).unwrap();
        let target: f64 = secs(value("#EXT-X-TARGETDURATION:"));
        let part_inf = lines.iter().find(|l| l.starts_with("#EXT-X-PART-INF:")).unwrap();
        let part_target = secs(attr(part_inf, "PART-TARGET").unwrap());
        let control = lines.iter().find(|l| l.starts_with("#EXT-X-SERVER-CONTROL:")).unwrap();
        assert_eq!(attr(control, "CAN-BLOCK-RELOAD"), Some("YES"));
        assert!(secs(attr(control, "PART-HOLD-BACK").unwrap()) >= 3.0 * part_target);
        let mut msn: u64 = value("#EXT-X-MEDIA-SEQUENCE:").parse().unwrap();
        assert_eq!(msn, 104, "six complete segments");
        let mut segments = 0;
        for (i, line) in lines.iter().enumerate() {
            if let Some(extinf) = line.strip_prefix("#EXTINF:") {
                let d = secs(extinf.trim_end_matches(','));
                assert!(d.round() <= target, "EXTINF {d} > TARGETDURATION {target}");
                assert_eq!(lines[i + 1], format!("seg-{msn}.m4s"), "consecutive numbers");
                msn += 1;
                segments += 1;
            }
            if line.starts_with("#EXT-X-PART:") {
                assert!(secs(attr(line, "DURATION").unwrap()) <= part_target);
            }
        }
        assert_eq!(segments, 6);
        assert_eq!(*lines.last().unwrap(), "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-110.2.m4s\"");
        assert!(text.contains("#EXT-X-PART:DURATION=0.500,URI=\"part-110.1.m4s\"\n"));
        assert!(text.contains("#EXT-X-MAP:URI=\"init-0.mp4\"\n"));
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2025-12-05T00:03:28.000Z\n"), "{text}");
    }

    #[test]
    fn lists_parts_only_near_the_live_end() {
        let text = render(&live_window()).unwrap();
        // Target 2 s: parts of segments ending less than 6 s before the live end
        // (1 s into segment 110): 107, 108, 109 and 110.
        for msn in 104..=106 {
            assert!(!text.contains(&format!("part-{msn}.")), "segment {msn}'s parts are too old\n{text}");
        }
        for msn in 107..=110 {
            assert!(text.contains(&format!("part-{msn}.0.m4s\",INDEPENDENT=YES")), "{msn}\n{text}");
        }
    }

    #[test]
    fn a_query_follows_every_uri_and_nothing_else_changes() {
        let window = live_window();
        let plain = render(&window).unwrap();
        assert_eq!(render_with_query(&window, &[], 0, None).as_deref(), Some(plain.as_str()));
        let signed = render_with_query(&window, &[], 0, Some("st=1.2928.abc_-")).unwrap();
        // Every URI, wherever it is, carries the query once.
        let mut uris = 0;
        for (p, s) in plain.lines().zip(signed.lines()) {
            let with = |uri: &str| (uri.to_owned(), format!("{uri}?st=1.2928.abc_-"));
            match p.find("URI=\"") {
                Some(at) => {
                    let uri = p[at + 5..].split('"').next().unwrap();
                    let (bare, queried) = with(uri);
                    assert_eq!(s, p.replacen(&format!("\"{bare}\""), &format!("\"{queried}\""), 1));
                    uris += 1;
                }
                None if !p.starts_with('#') => {
                    assert_eq!(s, with(p).1);
                    uris += 1;
                }
                None => assert_eq!(s, p),
            }
        }
        assert_eq!(plain.lines().count(), signed.lines().count());
        // The map, 6 segments, the parts of 107..=110 (3 × 4 + 2) and the hint.
        assert_eq!(uris, 1 + 6 + 14 + 1, "{signed}");
    }

    #[test]
    fn is_the_same_for_the_same_events() {
        assert_eq!(render(&live_window()), render(&live_window()));
    }

    #[test]
    fn marks_discontinuities_and_init_changes() {
        let mut w = Window::new(WindowLimits::default());
        w.push(init(0));
        feed_segment(&mut w, 0);
        w.push(init(1));
        w.push(Packaged::SegmentStart(SegmentStart {
            msn: 1,
            discontinuity: 1,
            wall_ms: 0,
            init_version: 1,
            target_ms: 2000,
            part_target_ms: 500,
        }));
        w.push(part(1, 0, 10));
        w.push(end(1, 1));
        let text = render(&w).unwrap();
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        assert!(text.contains(
            "seg-0.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:00.000Z\n"
        ));
        // No open segment (between publishing sessions): the hint names the next
        // segment's first part, right after the last segment.
        assert!(text.ends_with("seg-1.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-2.0.m4s\"\n"), "{text}");
    }

    #[test]
    fn target_duration_covers_a_long_segment() {
        let mut w = Window::new(WindowLimits::default());
        w.push(start(0, 0));
        w.push(part(0, 0, 10));
        w.push(Packaged::SegmentEnd(crate::hls::SegmentEnd { msn: 0, duration_ms: 3400, parts: 1 }));
        assert_eq!(target_duration(&w), 4);
        assert!(render(&w).unwrap().contains("#EXT-X-TARGETDURATION:4\n"));
    }

    #[test]
    fn nothing_to_list_is_no_playlist() {
        let mut w = Window::new(WindowLimits::default());
        assert_eq!(render(&w), None);
        w.push(start(0, 0));
        w.push(part(0, 0, 10));
        assert_eq!(render(&w), None);
    }

    /// An arbitrary event, numbers kept small so that some fit the window's order.
    fn event() -> impl proptest::strategy::Strategy<Value = Packaged> {
        use proptest::prelude::*;
        prop_oneof![
            (0u32..3).prop_map(init),
            (0u64..12, 0u32..3, 0u32..2, 1u32..4000, 1u32..1000).prop_map(|(msn, d, v, target, part)| {
                Packaged::SegmentStart(SegmentStart {
                    msn,
                    discontinuity: d,
                    wall_ms: msn * 1000,
                    init_version: v,
                    target_ms: target,
                    part_target_ms: part,
                })
            }),
            (0u64..12, 0u32..6, 0usize..300, 0u32..1500, any::<bool>()).prop_map(|(msn, index, len, d, key)| {
                Packaged::Part(crate::hls::Part {
                    msn,
                    index,
                    independent: key,
                    duration_ms: d,
                    bytes: bytes::Bytes::from(vec![7; len]),
                })
            }),
            (0u64..12, 0u32..6000).prop_map(|(msn, d)| Packaged::SegmentEnd(crate::hls::SegmentEnd {
                msn,
                duration_ms: d,
                parts: 0
            })),
        ]
    }

    /// Mostly well-formed segments (numbers that step by 0, 1 or 2, some never ended)
    /// with arbitrary events between them.
    fn stream() -> impl proptest::strategy::Strategy<Value = Vec<Packaged>> {
        use proptest::prelude::*;
        let parts = proptest::collection::vec((0usize..400, 1u32..1200), 0..6);
        let segment = (0u64..3, parts, proptest::bool::weighted(0.9), 1u32..4000, 1u32..1000, 0u32..2);
        // `None`: one arbitrary event from the noise instead of a segment.
        let item = prop_oneof![9 => segment.prop_map(Some), 1 => Just(None)];
        (proptest::collection::vec(item, 0..40), proptest::collection::vec(event(), 0..20)).prop_map(|(plan, noise)| {
            let mut events = Vec::new();
            let mut noise = noise.into_iter();
            let mut msn = 0u64;
            for step in plan {
                let Some((delta, parts, ended, target, part_target, version)) = step else {
                    events.extend(noise.next());
                    continue;
                };
                msn += delta;
                events.push(Packaged::SegmentStart(SegmentStart {
                    msn,
                    discontinuity: 0,
                    wall_ms: msn * 1000,
                    init_version: version,
                    target_ms: target,
                    part_target_ms: part_target,
                }));
                let mut total = 0;
                for (index, (len, duration_ms)) in parts.iter().enumerate() {
                    total += duration_ms;
                    events.push(Packaged::Part(crate::hls::Part {
                        msn,
                        index: index as u32,
                        independent: index == 0,
                        duration_ms: *duration_ms,
                        bytes: bytes::Bytes::from(vec![1; *len]),
                    }));
                }
                if ended {
                    events.push(Packaged::SegmentEnd(crate::hls::SegmentEnd {
                        msn,
                        duration_ms: total,
                        parts: parts.len() as u32,
                    }));
                }
            }
            events
        })
    }

    proptest::proptest! {
        /// Whatever the packager sends, the window stays in its bounds and every
        /// playlist it renders keeps the RFC rules.
        #[test]
        fn any_events_keep_the_bounds_and_the_rules(events in stream()) {
            let limits = WindowLimits { segments: 3, max_bytes: 2000 };
            let mut w = Window::new(limits);
            for e in events {
                w.push(e);
                proptest::prop_assert!(w.bytes() <= limits.max_bytes);
                proptest::prop_assert!(w.segments().len() <= limits.segments);
                let Some(text) = render(&w) else { continue };
                let target: u64 = text.lines().find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:")).unwrap().parse().unwrap();
                let part_inf = text.lines().find(|l| l.starts_with("#EXT-X-PART-INF:")).unwrap();
                let part_target: f64 = attr(part_inf, "PART-TARGET").unwrap().parse().unwrap();
                let mut msn: u64 = text.lines().find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")).unwrap().parse().unwrap();
                let lines: Vec<&str> = text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    if let Some(extinf) = line.strip_prefix("#EXTINF:") {
                        let d: f64 = extinf.trim_end_matches(',').parse().unwrap();
                        proptest::prop_assert!(d.round() as u64 <= target, "{}", text);
                        let uri = format!("seg-{msn}.m4s");
                        proptest::prop_assert_eq!(lines[i + 1], uri.as_str());
                        msn += 1;
                    }
                    if line.starts_with("#EXT-X-PART:") {
                        proptest::prop_assert!(secs(attr(line, "DURATION").unwrap()) <= part_target, "{}", text);
                    }
                }
            }
        }
    }

    fn dvr(msns: impl IntoIterator<Item = u64>, discontinuity: u32, init_version: u32) -> Vec<DvrSegment> {
        msns.into_iter()
            .map(|msn| DvrSegment {
                msn,
                duration_ms: 2000,
                discontinuity,
                wall_ms: 1_764_892_800_000 + msn * 2000,
                init_version,
                target_ms: 2000,
                part_target_ms: 500,
            })
            .collect()
    }

    /// The RFC rules every playlist keeps: consecutive numbers from the media sequence,
    /// every `EXTINF` within the target duration, a program date on every segment.
    /// Returns the listed segment numbers.
    fn check_rules(text: &str) -> Vec<u64> {
        let lines: Vec<&str> = text.lines().collect();
        let target: f64 = secs(lines.iter().find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:")).unwrap());
        let mut msn: u64 =
            lines.iter().find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")).unwrap().parse().unwrap();
        let mut listed = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if let Some(extinf) = line.strip_prefix("#EXTINF:") {
                let d = secs(extinf.trim_end_matches(','));
                assert!(d.round() <= target, "EXTINF {d} > TARGETDURATION {target}\n{text}");
                assert_eq!(lines[i + 1], format!("seg-{msn}.m4s"), "consecutive numbers\n{text}");
                let opening = lines[..i].iter().rev().find(|l| !l.starts_with("#EXT-X-PART:")).unwrap();
                assert!(opening.starts_with("#EXT-X-PROGRAM-DATE-TIME:"), "{text}");
                listed.push(msn);
                msn += 1;
            }
        }
        listed
    }

    #[test]
    fn lists_the_dvr_run_before_the_window() {
        let window = live_window();
        let index = dvr(90..=109, 0, 0);
        // 10 s of span: the five 2 s segments before the window's first (104).
        let text = render_with_query(&window, &index, 10_000, None).unwrap();
        assert_eq!(check_rules(&text), (99..=109).collect::<Vec<_>>());
        assert!(text.contains(
            "#EXT-X-MEDIA-SEQUENCE:99\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-MAP:URI=\"init-0.mp4\"\n\
             #EXT-X-PROGRAM-DATE-TIME:2025-12-05T00:03:18.000Z\n#EXTINF:2.000,\nseg-99.m4s\n"
        ));
        // One map only (the same init), no discontinuity, no parts of DVR segments.
        assert_eq!(text.matches("#EXT-X-MAP:").count(), 1);
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"));
        assert!(!text.contains("part-99.") && !text.contains("part-103."));
        // The window's part of the text is unchanged after the DVR entries.
        let plain = render(&window).unwrap();
        let window_part = plain.split_once("#EXT-X-PROGRAM-DATE-TIME").unwrap().1;
        assert!(text.ends_with(window_part));
        // Spans that are not a whole number of segments round down; 0 is off.
        assert_eq!(check_rules(&render_with_query(&window, &index, 11_999, None).unwrap())[0], 99);
        assert_eq!(render_with_query(&window, &index, 0, None), render(&window));
        assert_eq!(render_with_query(&window, &index, 1999, None), render(&window));
        // Longer than the index: all of it from 90 (the entries in the window are not
        // listed twice).
        assert_eq!(check_rules(&render_with_query(&window, &index, 3_600_000, None).unwrap())[..2], [90, 91]);
        // The same window and index, the same text; the query follows DVR URIs too.
        assert_eq!(render_with_query(&window, &index, 10_000, None), Some(text));
        let signed = render_with_query(&window, &index, 10_000, Some("st=x")).unwrap();
        assert!(signed.contains("\nseg-99.m4s?st=x\n") && signed.contains("#EXT-X-MAP:URI=\"init-0.mp4?st=x\"\n"));
    }

    #[test]
    fn only_a_contiguous_run_that_reaches_the_window_is_listed() {
        let window = live_window();
        // A gap at 101: only 102 and 103 are listed.
        let gap: Vec<DvrSegment> = dvr((90..=100).chain(102..=103), 0, 0);
        assert_eq!(dvr_run(&gap, 104, u64::MAX, 0, u64::MAX).iter().map(|s| s.msn).collect::<Vec<_>>(), [102, 103]);
        assert_eq!(check_rules(&render_with_query(&window, &gap, 60_000, None).unwrap())[0], 102);
        // The index does not reach the window yet: no DVR entry, the plain playlist.
        let behind = dvr(90..=102, 0, 0);
        assert!(dvr_run(&behind, 104, u64::MAX, 0, u64::MAX).is_empty());
        assert_eq!(render_with_query(&window, &behind, 60_000, None), render(&window));
        // Nothing, or a window starting at 0.
        assert!(dvr_run(&[], 104, u64::MAX, 0, u64::MAX).is_empty());
        assert!(dvr_run(&dvr(0..3, 0, 0), 0, u64::MAX, 0, u64::MAX).is_empty());
        assert_eq!(dvr_run(&dvr(0..3, 0, 0), 3, 4000, 0, u64::MAX).len(), 2);
    }

    #[test]
    fn the_run_keeps_to_its_floor_and_the_windows_target() {
        let window = live_window();
        let index = dvr(90..=103, 0, 0);
        // An edge that served a playlist from 100 never lists below it again.
        let rewind = Rewind { index: &index, span_ms: 3_600_000, floor: 100 };
        let (text, sequence) = render_rewound(&window, rewind, None, &mut DvrLines::default()).unwrap();
        assert_eq!((check_rules(&text)[0], sequence), (100, 100));
        // A floor above the window's first segment: the window alone.
        let rewind = Rewind { index: &index, span_ms: 3_600_000, floor: 200 };
        let (text, sequence) = render_rewound(&window, rewind, None, &mut DvrLines::default()).unwrap();
        assert_eq!((text, sequence), (render(&window).unwrap(), 104));
        // A 9 s old segment (at 97) would raise the target from 2 s: the run stops
        // after it.
        let mut long = index.clone();
        long[7].duration_ms = 9000;
        assert_eq!(dvr_run(&long, 104, u64::MAX, 0, 2).first().map(|s| s.msn), Some(98));
        let text = render_with_query(&window, &long, 3_600_000, None).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
    }

    #[test]
    fn dvr_lines_are_reused_for_the_same_run_and_query() {
        let window = live_window();
        let index = dvr(90..=103, 0, 0);
        let mut lines = DvrLines::default();
        let rewind = Rewind { index: &index, span_ms: 3_600_000, floor: 0 };
        let first = render_rewound(&window, rewind, Some("st=a"), &mut lines).unwrap();
        // The cache is what the next render uses: planted text shows up.
        lines.text = lines.text.replace("seg-90.m4s", "seg-PLANTED.m4s");
        let again = render_rewound(&window, rewind, Some("st=a"), &mut lines).unwrap();
        assert!(again.0.contains("seg-PLANTED.m4s") && !first.0.contains("PLANTED"));
        // Another query or another run: formatted anew.
        let other = render_rewound(&window, rewind, Some("st=b"), &mut lines).unwrap();
        assert!(!other.0.contains("PLANTED") && other.0.contains("seg-90.m4s?st=b"));
        let shorter = Rewind { index: &index, span_ms: 10_000, floor: 0 };
        let (text, _) = render_rewound(&window, shorter, Some("st=b"), &mut lines).unwrap();
        assert_eq!(Some(text), render_with_query(&window, &index, 10_000, Some("st=b")));
    }

    #[test]
    fn marks_discontinuities_and_maps_between_dvr_and_the_window() {
        let mut w = Window::new(WindowLimits::default());
        w.push(init(0));
        for msn in 100..104 {
            w.push(start(msn, 3));
            w.push(part(msn, 0, 10));
            w.push(end(msn, 1));
        }
        // 96, 97: discontinuity 1 with init 5; 98, 99: discontinuity 2 with init 0.
        let mut index = dvr(96..=97, 1, 5);
        index.extend(dvr(98..=99, 2, 0));
        let text = render_with_query(&w, &index, 60_000, None).unwrap();
        assert_eq!(check_rules(&text), (96..=103).collect::<Vec<_>>());
        assert!(
            text.contains("#EXT-X-MEDIA-SEQUENCE:96\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n#EXT-X-MAP:URI=\"init-5.mp4\"\n")
        );
        assert!(
            text.contains("seg-97.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-0.mp4\"\n#EXT-X-PROGRAM-DATE-TIME")
        );
        // Between the last DVR entry and the window's first segment too (same init: no map).
        assert!(text.contains("seg-99.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME"), "{text}");
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 2);
        assert_eq!(text.matches("#EXT-X-MAP:").count(), 2);
    }

    #[test]
    fn a_dvr_entry_longer_than_the_target_ends_the_run() {
        let window = live_window();
        let mut index = dvr(100..=103, 0, 0);
        index[1].duration_ms = 4400;
        let text = render_with_query(&window, &index, 60_000, None).unwrap();
        // 101 (4.4 s) would need a target of 5: the run is 102 and 103, the target 2.
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
        assert_eq!(check_rules(&text)[..2], [102, 103]);
        // The parts listed are those of the window's own target (2 s).
        for msn in 104..=106 {
            assert!(!text.contains(&format!("part-{msn}.")), "{msn}");
        }
        assert!(text.contains("part-107.0.m4s"));
    }

    #[test]
    fn dates_are_iso_8601_utc_with_milliseconds() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(date_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(date_time(1_764_892_800_000 + 86_399_999), "2025-12-05T23:59:59.999Z");
    }
}
