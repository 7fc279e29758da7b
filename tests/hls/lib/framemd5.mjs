// ffmpeg's framemd5 output (one line per decoded frame) and the comparison of a
// recording with its source: every source frame exactly once, in order, from wherever
// the recording joined to wherever it stopped. Pure functions over text.

/** The frames of one stream (`stream` index, 0 by default) as their hashes, in order. */
export function parseFramemd5(text, stream = 0) {
  const hashes = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const f = line.split(',').map((x) => x.trim());
    if (f.length < 6 || Number(f[0]) !== stream) continue;
    hashes.push(f[5]);
  }
  return hashes;
}

/**
 * Compares a recording with its source. The recording must be a contiguous run of
 * the source: its first frame is found in the source, then every next frame must be
 * the source's next one. Reports what broke that: `missing` source frames skipped,
 * `repeated` frames seen again, `foreign` frames the source never had.
 */
export function compareFrames(source, recorded) {
  const at = new Map();
  source.forEach((h, i) => { if (!at.has(h)) at.set(h, []); at.get(h).push(i); });
  const result = { source: source.length, recorded: recorded.length, start: -1, missing: 0, repeated: 0, foreign: 0, firstProblem: null, ok: false };
  if (!recorded.length) return { ...result, firstProblem: 'the recording has no frames' };
  // Identical frames (a static picture) would make a hash ambiguous; the test pattern
  // has a running clock, so each is unique. Take the first occurrence at or after `from`.
  const find = (h, from) => (at.get(h) || []).find((i) => i >= from);
  let pos = find(recorded[0], 0);
  if (pos === undefined) return { ...result, foreign: 1, firstProblem: 'the first recorded frame is not in the source' };
  result.start = pos;
  let highest = pos;
  for (let k = 1; k < recorded.length; k++) {
    const want = pos + 1;
    if (source[want] === recorded[k]) { pos = want; highest = Math.max(highest, pos); continue; }
    const later = find(recorded[k], want);
    const earlier = (at.get(recorded[k]) || []).some((i) => i < want);
    if (later !== undefined) {
      result.missing += later - want;
      result.firstProblem ??= `recorded frame ${k}: source frames ${want}..${later - 1} skipped`;
      pos = later;
    } else if (earlier) {
      result.repeated += 1;
      result.firstProblem ??= `recorded frame ${k}: a source frame seen again`;
      // Stay where we were: the next frame should continue after the highest seen.
      pos = highest;
      continue;
    } else {
      result.foreign += 1;
      result.firstProblem ??= `recorded frame ${k}: not in the source`;
      continue;
    }
    highest = Math.max(highest, pos);
  }
  result.end = highest;
  result.ok = result.missing === 0 && result.repeated === 0 && result.foreign === 0;
  return result;
}

/**
 * Compares a recording with several sources published one after the other (a
 * publisher that reconnected): the expected frames are the sources' frames
 * concatenated in order, and the recording must be a contiguous run of them that
 * starts in the first source and reaches the last, so it crossed every reconnect (a
 * recorder that stopped at the first one would otherwise pass). `sources` is an array
 * of hash arrays; with one source this is `compareFrames` exactly. Adds `sources`:
 * each source's frame count and the index where it starts in the concatenation.
 */
export function compareWithSources(sources, recorded) {
  if (sources.length === 1) return compareFrames(sources[0], recorded);
  const starts = [];
  let total = 0;
  for (const s of sources) { starts.push(total); total += s.length; }
  const result = compareFrames(sources.flat(), recorded);
  result.sources = sources.map((s, i) => ({ frames: s.length, starts_at: starts[i] }));
  if (result.start >= 0 && (result.start >= starts[1] || result.end < starts[sources.length - 1])) {
    result.firstProblem ??= `the recording (source frames ${result.start}..${result.end}) does not run from the first source into the last (starting at ${starts[sources.length - 1]})`;
    result.ok = false;
  }
  return result;
}
