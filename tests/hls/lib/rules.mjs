// Media playlists parsed with m3u8-parser (videojs) and checked against the rules of
// RFC 8216bis (HLS 2nd edition, with Low-Latency HLS) that players rely on. Pure
// functions over text: no network, no clock.
//
//   parsePlaylist(text)            -> { manifest, warnings }
//   checkPlaylist(text, opts)      -> { errors: [...], summary }     rules on one playlist
//   checkReload(prev, next)        -> [errors]                       rules between two reloads
//   segmentMap(summary)            -> Map(msn -> {uri, duration, parts: [...]})
//   compareEdges(a, b)             -> [errors]                       two edges' views of one stream
//   discontinuityPoints(summary)   -> [{msn, dseq, pdt, before}]     where the media timeline breaks

import m3u8 from 'm3u8-parser';

const { Parser } = m3u8;

/** Floating-point slack for durations written with a few decimals (ms precision). */
const EPS = 0.0015;

/** Parses with m3u8-parser; its warnings are kept (they count as errors in checks). */
export function parsePlaylist(text) {
  const parser = new Parser();
  const warnings = [];
  parser.on('warn', (w) => warnings.push(w.message || String(w)));
  parser.push(text);
  parser.end();
  return { manifest: parser.manifest, warnings };
}

/**
 * Checks one media playlist. `opts`: { requirePdt, requireLowLatency }.
 * Returns every violated rule (strings) and a summary used by the reload and edge
 * comparisons.
 */
export function checkPlaylist(text, opts = {}) {
  const errors = [];
  const lines = text.split(/\r?\n/);
  if (lines[0] !== '#EXTM3U') errors.push('the first line is not #EXTM3U (RFC 8216bis 4.4.1.1)');
  if (lines.some((l) => l.startsWith('#EXT-X-STREAM-INF'))) errors.push('a multivariant playlist, not a media playlist');
  const { manifest: m, warnings } = parsePlaylist(text);
  for (const w of warnings) errors.push(`m3u8-parser: ${w}`);

  const target = m.targetDuration;
  if (!Number.isFinite(target)) errors.push('no EXT-X-TARGETDURATION (4.4.3.1)');
  const msn0 = m.mediaSequence ?? 0;
  const segments = m.segments || [];
  const ended = Boolean(m.endList);

  // EXTINF rounded to the nearest integer <= TARGETDURATION (4.4.3.1).
  segments.forEach((s, i) => {
    if (Number.isFinite(target) && Math.round(s.duration) > target) {
      errors.push(`segment ${msn0 + i} (${s.uri}): EXTINF ${s.duration} rounds above TARGETDURATION ${target}`);
    }
    if (!s.uri) errors.push(`segment ${msn0 + i}: no URI`);
  });

  // Partial segments (LL-HLS).
  const partTarget = m.partInf?.partTarget;
  // Each segment's discontinuity sequence number: the playlist's, plus one per
  // EXT-X-DISCONTINUITY up to and including the segment's own (4.4.3.3).
  let dseq = m.discontinuitySequence ?? 0;
  const live = segments.map((s, i) => {
    if (s.discontinuity) dseq++;
    return { msn: msn0 + i, uri: s.uri, duration: s.duration, parts: s.parts || [], discontinuity: Boolean(s.discontinuity),
      dseq, pdt: s.programDateTime ?? null };
  });
  const open = m.preloadSegment; // the segment being written: parts, no URI yet
  const allParts = [...live.flatMap((s) => s.parts.map((p) => ({ msn: s.msn, ...p }))),
    ...((open && open.parts) || []).map((p) => ({ msn: msn0 + segments.length, ...p }))];
  if (allParts.length || partTarget !== undefined || opts.requireLowLatency) {
    if (!Number.isFinite(partTarget)) errors.push('parts without EXT-X-PART-INF:PART-TARGET (4.4.3.7)');
    for (const p of allParts) {
      if (Number.isFinite(partTarget) && p.duration > partTarget + EPS) {
        errors.push(`part ${p.uri}: DURATION ${p.duration} above PART-TARGET ${partTarget} (4.4.4.9)`);
      }
    }
    if (!(m.serverControl || {}).canBlockReload) errors.push('LL-HLS without EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES (4.4.3.8)');
    // m3u8-parser clamps PART-HOLD-BACK (with a warning): read what was written.
    const hold = Number((text.match(/PART-HOLD-BACK=([0-9.]+)/) || [])[1]);
    if (!Number.isFinite(hold)) {
      errors.push('LL-HLS without PART-HOLD-BACK (4.4.3.8)');
    } else if (Number.isFinite(partTarget) && hold < 2 * partTarget - EPS) {
      errors.push(`PART-HOLD-BACK ${hold} is below twice PART-TARGET ${partTarget} (4.4.3.8)`);
    }
    // Parts are kept for the last segments only, but every segment that lists parts
    // must have them add up to its EXTINF.
    for (const s of live) {
      if (!s.parts.length) continue;
      const sum = s.parts.reduce((a, p) => a + p.duration, 0);
      if (Math.abs(sum - s.duration) > EPS * s.parts.length + EPS) {
        errors.push(`segment ${s.msn}: its parts last ${sum.toFixed(4)} s, its EXTINF ${s.duration}`);
      }
    }
    const hints = (open && open.preloadHints) || m.preloadHints || [];
    if (!ended && !hints.some((h) => h.type === 'PART')) {
      errors.push('no EXT-X-PRELOAD-HINT:TYPE=PART at the live end (4.4.5.3)');
    }
  }

  if (opts.requirePdt && segments.length && !segments[0].programDateTime) {
    errors.push('no EXT-X-PROGRAM-DATE-TIME on the first segment');
  }
  const discontinuities = segments.filter((s) => s.discontinuity).length;
  return {
    errors,
    summary: {
      mediaSequence: msn0,
      discontinuitySequence: m.discontinuitySequence ?? 0,
      discontinuities,
      targetDuration: target,
      partTarget,
      ended,
      segments: live,
      openParts: (open && open.parts) || [],
      preloadHints: (open && open.preloadHints) || [],
      map: segments[0]?.map?.uri ?? open?.map?.uri,
      lastMsn: msn0 + segments.length - 1,
      programDateTime: segments[0]?.programDateTime,
    },
  };
}

/** The segments of a summary by media sequence number. */
export function segmentMap(summary) {
  return new Map(summary.segments.map((s) => [s.msn, s]));
}

/**
 * Rules between two reloads of the same playlist (same edge, or as a client behind a
 * balancer sees them): the media sequence never goes backwards (6.2.1, and hls.js
 * cannot play otherwise), and a sequence number seen twice names the same segment.
 */
export function checkReload(prev, next, label = 'reload') {
  const errors = [];
  if (next.mediaSequence < prev.mediaSequence) {
    errors.push(`${label}: EXT-X-MEDIA-SEQUENCE went backwards, ${prev.mediaSequence} -> ${next.mediaSequence}`);
  }
  if (next.lastMsn < prev.lastMsn) {
    errors.push(`${label}: the last segment went backwards, ${prev.lastMsn} -> ${next.lastMsn}`);
  }
  if (next.discontinuitySequence < prev.discontinuitySequence) {
    errors.push(`${label}: EXT-X-DISCONTINUITY-SEQUENCE went backwards`);
  }
  errors.push(...sameSegments(prev, next, label));
  return errors;
}

/** Two views of one stream (two edges, or two reloads) agree on every common segment. */
export function sameSegments(a, b, label) {
  const errors = [];
  const mb = segmentMap(b);
  for (const s of a.segments) {
    const t = mb.get(s.msn);
    if (!t) continue;
    if (t.uri !== s.uri) errors.push(`${label}: segment ${s.msn} is ${s.uri} in one and ${t.uri} in the other`);
    if (Math.abs(t.duration - s.duration) > EPS) {
      errors.push(`${label}: segment ${s.msn} lasts ${s.duration} in one and ${t.duration} in the other`);
    }
    if (t.dseq !== s.dseq) {
      errors.push(`${label}: segment ${s.msn} has discontinuity sequence ${s.dseq} in one and ${t.dseq} in the other`);
    }
    // Parts listed in both must agree (one side may have dropped them already).
    if (s.parts.length && t.parts.length) {
      const pa = s.parts.map((p) => `${p.uri}@${p.duration}`).join(' ');
      const pb = t.parts.map((p) => `${p.uri}@${p.duration}`).join(' ');
      if (pa !== pb) errors.push(`${label}: segment ${s.msn} has parts [${pa}] in one and [${pb}] in the other`);
    }
  }
  return errors;
}

/** Two edges' playlists fetched at about the same time: same numbering, same URIs. */
export function compareEdges(a, b, label = 'edges') {
  const errors = sameSegments(a, b, label);
  if (a.map && b.map && a.segments.length && b.segments.length && a.mediaSequence === b.mediaSequence && a.map !== b.map) {
    errors.push(`${label}: EXT-X-MAP ${a.map} in one and ${b.map} in the other`);
  }
  return errors;
}

/**
 * The segments of one playlist that open with an EXT-X-DISCONTINUITY, each with its
 * discontinuity sequence number, program date time, and the segment listed before it
 * (`before`: null when the discontinuity opens the playlist, so what it follows is not
 * shown). Used to check that the timeline breaks exactly where it really does, and that
 * the numbering runs on across the break (`before.msn === msn - 1`).
 */
export function discontinuityPoints(summary) {
  const out = [];
  summary.segments.forEach((s, i) => {
    if (!s.discontinuity) return;
    const b = i > 0 ? summary.segments[i - 1] : null;
    out.push({ msn: s.msn, dseq: s.dseq, pdt: s.pdt, before: b && { msn: b.msn, dseq: b.dseq, pdt: b.pdt } });
  });
  return out;
}
