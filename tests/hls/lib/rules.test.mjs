// The playlist rules on hand-written playlists: what our edges will serve (LL-HLS, the
// URIs of docs/hls.md), what ffmpeg serves (plain HLS), and one break per rule.
// Run: node --test lib/   (from tests/hls)

import test from 'node:test';
import assert from 'node:assert/strict';
import { checkPlaylist, checkReload, compareEdges, discontinuityPoints } from './rules.mjs';
import { compareFrames, compareWithSources, parseFramemd5 } from './framemd5.mjs';

const LL = (msn, { extinf = '2.000', part = '0.500', hint = true, hold = '1.500', last = 3 } = {}) => `#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=${hold}
#EXT-X-PART-INF:PART-TARGET=0.5
#EXT-X-MEDIA-SEQUENCE:${msn}
#EXT-X-MAP:URI="init-0.mp4"
#EXT-X-PROGRAM-DATE-TIME:2026-12-05T00:00:00.000Z
#EXTINF:2.000,
seg-${msn}.m4s
#EXT-X-PART:DURATION=0.500,URI="part-${msn + 1}.0.m4s",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.500,URI="part-${msn + 1}.1.m4s"
#EXT-X-PART:DURATION=0.500,URI="part-${msn + 1}.2.m4s"
#EXT-X-PART:DURATION=0.500,URI="part-${msn + 1}.3.m4s"
#EXTINF:${extinf},
seg-${msn + 1}.m4s
#EXT-X-PART:DURATION=${part},URI="part-${msn + 2}.0.m4s",INDEPENDENT=YES
${Array.from({ length: last - 1 }, (_, i) => `#EXT-X-PART:DURATION=0.500,URI="part-${msn + 2}.${i + 1}.m4s"`).join('\n')}
${hint ? `#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-${msn + 2}.${last}.m4s"` : ''}
`;

const FFMPEG = `#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:1
#EXT-X-MEDIA-SEQUENCE:41
#EXT-X-MAP:URI="init.mp4"
#EXT-X-PROGRAM-DATE-TIME:2026-12-05T00:40:36.106+0000
#EXTINF:1.000000,
seg41.m4s
#EXTINF:1.000000,
seg42.m4s
`;

test('a valid LL-HLS playlist passes', () => {
  const { errors, summary } = checkPlaylist(LL(100), { requirePdt: true, requireLowLatency: true });
  assert.deepEqual(errors, []);
  assert.equal(summary.mediaSequence, 100);
  assert.equal(summary.lastMsn, 101);
  assert.equal(summary.openParts.length, 3);
});

test('ffmpeg-style plain HLS passes, and fails when LL is required', () => {
  assert.deepEqual(checkPlaylist(FFMPEG, { requirePdt: true }).errors, []);
  assert.ok(checkPlaylist(FFMPEG, { requireLowLatency: true }).errors.some((e) => /PART-TARGET/.test(e)));
});

test('EXTINF above TARGETDURATION is caught', () => {
  const { errors } = checkPlaylist(LL(7, { extinf: '2.600' }));
  assert.ok(errors.some((e) => /rounds above TARGETDURATION/.test(e)), errors.join('\n'));
});

test('a part above PART-TARGET is caught', () => {
  const { errors } = checkPlaylist(LL(7, { part: '0.700' }));
  assert.ok(errors.some((e) => /above PART-TARGET/.test(e)), errors.join('\n'));
});

test('a live LL playlist without a preload hint is caught', () => {
  const { errors } = checkPlaylist(LL(7, { hint: false }));
  assert.ok(errors.some((e) => /PRELOAD-HINT/.test(e)), errors.join('\n'));
});

test('PART-HOLD-BACK below twice PART-TARGET is caught', () => {
  const { errors } = checkPlaylist(LL(7, { hold: '0.600' }));
  assert.ok(errors.some((e) => /twice PART-TARGET/.test(e)), errors.join('\n'));
});

test('parts that do not add up to their segment are caught', () => {
  const text = LL(7).replace('part-8.3.m4s"', 'part-8.3.m4s"\n#EXT-X-PART:DURATION=0.500,URI="part-8.4.m4s"');
  const { errors } = checkPlaylist(text);
  assert.ok(errors.some((e) => /its parts last/.test(e)), errors.join('\n'));
});

test('a media sequence going backwards between reloads is caught', () => {
  const a = checkPlaylist(LL(10)).summary;
  const b = checkPlaylist(LL(9)).summary;
  assert.deepEqual(checkReload(a, checkPlaylist(LL(11)).summary), []);
  assert.ok(checkReload(a, b).some((e) => /went backwards/.test(e)));
});

test('two edges naming one sequence number differently are caught', () => {
  const a = checkPlaylist(LL(10)).summary;
  const b = checkPlaylist(LL(10).replace('seg-11.m4s', 'seg-11b.m4s')).summary;
  assert.deepEqual(compareEdges(a, checkPlaylist(LL(10)).summary), []);
  assert.ok(compareEdges(a, b).some((e) => /segment 11 is/.test(e)));
});

const md5 = (hashes) => `#format: frame checksums
#version: 2
#hash: MD5
#tb 0: 1/30
#stream#, dts, pts, duration, size, hash
${hashes.map((h, i) => `0, ${i}, ${i}, 1, 100, ${h}`).join('\n')}
`;

test('framemd5: a recording that is a contiguous run of the source passes', () => {
  const src = parseFramemd5(md5(['a', 'b', 'c', 'd', 'e', 'f']));
  assert.equal(compareFrames(src, parseFramemd5(md5(['c', 'd', 'e']))).ok, true);
});

test('framemd5: a missing, a repeated and a foreign frame are each caught', () => {
  const src = parseFramemd5(md5(['a', 'b', 'c', 'd', 'e', 'f']));
  const missing = compareFrames(src, parseFramemd5(md5(['b', 'c', 'e', 'f'])));
  assert.equal(missing.ok, false);
  assert.equal(missing.missing, 1);
  const repeated = compareFrames(src, parseFramemd5(md5(['b', 'c', 'd', 'c', 'd', 'e'])));
  assert.equal(repeated.ok, false);
  assert.equal(repeated.repeated, 2);
  const foreign = compareFrames(src, parseFramemd5(md5(['b', 'c', 'x', 'd'])));
  assert.equal(foreign.ok, false);
  assert.equal(foreign.foreign, 1);
});

test('framemd5: with one source, compareWithSources is compareFrames', () => {
  const src = parseFramemd5(md5(['a', 'b', 'c', 'd', 'e', 'f']));
  for (const rec of [['c', 'd', 'e'], ['b', 'c', 'e', 'f'], ['b', 'c', 'x', 'd'], []]) {
    assert.deepEqual(compareWithSources([src], rec), compareFrames(src, rec));
  }
});

test('framemd5: a recording across a reconnect runs from one source into the next', () => {
  const one = parseFramemd5(md5(['a', 'b', 'c', 'd']));
  const two = parseFramemd5(md5(['p', 'q', 'r', 's']));
  const ok = compareWithSources([one, two], ['b', 'c', 'd', 'p', 'q']);
  assert.equal(ok.ok, true, ok.firstProblem);
  assert.deepEqual(ok.sources, [{ frames: 4, starts_at: 0 }, { frames: 4, starts_at: 4 }]);
  // The first source's last frame lost at the reconnect.
  const lostTail = compareWithSources([one, two], ['b', 'c', 'p', 'q']);
  assert.equal(lostTail.ok, false);
  assert.equal(lostTail.missing, 1);
  // The second source's first frame lost.
  assert.equal(compareWithSources([one, two], ['c', 'd', 'q', 'r']).missing, 1);
  // The first source's tail delivered again after the second began.
  const again = compareWithSources([one, two], ['c', 'd', 'p', 'd', 'q']);
  assert.equal(again.ok, false);
  assert.equal(again.repeated, 1);
  // The sources in the wrong order.
  assert.equal(compareWithSources([one, two], ['p', 'q', 'c', 'd']).ok, false);
});

test('framemd5: a recording that never reaches the last source, or starts after the first, fails', () => {
  const one = parseFramemd5(md5(['a', 'b', 'c', 'd']));
  const two = parseFramemd5(md5(['p', 'q', 'r', 's']));
  const stopped = compareWithSources([one, two], ['b', 'c', 'd']);
  assert.equal(stopped.ok, false);
  assert.match(stopped.firstProblem, /does not run from the first source/);
  assert.equal(compareWithSources([one, two], ['q', 'r']).ok, false);
});

const RECONNECT = (msn, { dseq = 7, before = true } = {}) => `#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:${msn}
#EXT-X-DISCONTINUITY-SEQUENCE:${dseq}
${before ? `#EXT-X-PROGRAM-DATE-TIME:2026-12-05T00:00:00.000Z
#EXTINF:1.500,
seg-${msn}.m4s
#EXT-X-DISCONTINUITY
` : ''}#EXT-X-PROGRAM-DATE-TIME:2026-12-05T00:00:03.000Z
#EXTINF:2.000,
seg-${msn + 1}.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-12-05T00:00:05.000Z
#EXTINF:2.000,
seg-${msn + 2}.m4s
`;

test('a discontinuity is found with the segment before it and both sequence numbers', () => {
  const { errors, summary } = checkPlaylist(RECONNECT(20));
  assert.deepEqual(errors, []);
  assert.deepEqual(discontinuityPoints(summary), [{
    msn: 21, dseq: 8, pdt: Date.parse('2026-12-05T00:00:03.000Z'),
    before: { msn: 20, dseq: 7, pdt: Date.parse('2026-12-05T00:00:00.000Z') },
  }]);
  assert.deepEqual(discontinuityPoints(checkPlaylist(RECONNECT(20, { before: false })).summary), []);
});

test('two views giving one segment different discontinuity sequences are caught', () => {
  const a = checkPlaylist(RECONNECT(20)).summary;
  const b = checkPlaylist(RECONNECT(20).replace('#EXT-X-DISCONTINUITY\n', '')).summary;
  assert.deepEqual(compareEdges(a, checkPlaylist(RECONNECT(20)).summary), []);
  assert.ok(compareEdges(a, b).some((e) => /segment 21 has discontinuity sequence 8 in one and 7/.test(e)), compareEdges(a, b).join('\n'));
});
