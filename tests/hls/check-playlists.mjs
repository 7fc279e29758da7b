// Fetches one stream's media playlist from several edges (and optionally through the
// load balancer) over and over, validates every playlist (lib/rules.mjs: m3u8-parser
// + RFC 8216bis rules), checks that no reload goes backwards, that every edge names
// each sequence number the same way, and that a segment (and its init segment and
// parts) fetched from each edge is byte-identical.
//
//   node check-playlists.mjs --edge URL --edge URL [--lb URL] [--seconds 30]
//       [--interval-ms 500] [--ll] [--pdt] [--no-media] [--parts] [--min-segments N]
//       [--discontinuities N] [--no-skips] [--out report.json]
//
// URL is a media playlist URL (http://127.0.0.1:8081/live/x/index.m3u8). Prints a JSON
// report and exits 1 when any rule broke or fewer than --min-segments segments were
// compared across every edge. Every request has a 5 s deadline; the run ends after
// --seconds.
//
// --discontinuities N: the timeline must break exactly N times in the run (distinct
// sequence numbers opening with EXT-X-DISCONTINUITY, on any edge), each seen at least
// once right after the segment before it (msn − 1, discontinuity sequence − 1: the
// numbering ran on across the break). The report lists each with the program date
// times on either side, so a caller can check that it is where the timeline really
// broke.
//
// --no-skips: a reload whose first segment is past the previous reload's last + 1 is
// an error (numbers that were never listed: the numbering jumped, or the window
// started over). For runs where every source answers every round; an edge that was
// down for longer than its window would trip it.

import crypto from 'node:crypto';
import fs from 'node:fs';
import { checkPlaylist, checkReload, compareEdges, discontinuityPoints } from './lib/rules.mjs';

function parseArgs(argv) {
  const o = { edges: [], lb: null, seconds: 30, intervalMs: 500, ll: false, pdt: false, media: true, parts: false, minSegments: 0, discontinuities: null, noSkips: false, out: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    if (a === '--edge') o.edges.push(next());
    else if (a === '--lb') o.lb = next();
    else if (a === '--seconds') o.seconds = Number(next());
    else if (a === '--interval-ms') o.intervalMs = Number(next());
    else if (a === '--ll') o.ll = true;
    else if (a === '--pdt') o.pdt = true;
    else if (a === '--no-media') o.media = false;
    else if (a === '--parts') o.parts = true;
    else if (a === '--min-segments') o.minSegments = Number(next());
    else if (a === '--discontinuities') o.discontinuities = Number(next());
    else if (a === '--no-skips') o.noSkips = true;
    else if (a === '--out') o.out = next();
    else usage(`unknown argument ${a}`);
  }
  if (!o.edges.length) usage('at least one --edge');
  return o;
}

function usage(why) {
  console.error(`check-playlists: ${why}\nusage: node check-playlists.mjs --edge URL [--edge URL…] [--lb URL] [--seconds N] [--interval-ms N] [--ll] [--pdt] [--no-media] [--parts] [--min-segments N] [--discontinuities N] [--no-skips] [--out FILE]`);
  process.exit(2);
}

const REQUEST_MS = 5000;
/** A segment not yet on every edge is retried for this many rounds, then reported. */
const PENDING_ROUNDS = 20;

async function get(url, binary) {
  const res = await fetch(url, { signal: AbortSignal.timeout(REQUEST_MS), cache: 'no-store' });
  const body = binary ? Buffer.from(await res.arrayBuffer()) : await res.text();
  return { status: res.status, body, headers: res.headers };
}

const sha = (b) => crypto.createHash('sha256').update(b).digest('hex').slice(0, 16);

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const sources = [...o.edges.map((u, i) => ({ name: `edge${i + 1}`, url: u })), ...(o.lb ? [{ name: 'lb', url: o.lb }] : [])];
  const report = {
    sources: sources.map((s) => s.url), rounds: 0, playlists: 0, errors: [], fetch_errors: 0,
    segments_compared: 0, inits_compared: 0, parts_compared: 0, first_msn: null, last_msn: null,
    max_edge_lag_segments: 0, discontinuities_seen: 0, discontinuity_points: [],
  };
  const breaks = new Map(); // msn -> { msn, dseq, pdt, before, sources }
  const prev = new Map();
  const compared = new Set(); // URIs already compared across edges
  const pending = new Map(); // uri -> rounds waited
  const error = (e) => { if (report.errors.length < 200) report.errors.push(e); };
  const deadline = Date.now() + o.seconds * 1000;

  while (Date.now() < deadline) {
    const round = Date.now();
    report.rounds++;
    const got = await Promise.all(sources.map(async (s) => {
      try {
        const r = await get(s.url, false);
        if (r.status !== 200) { report.fetch_errors++; return null; }
        return { s, text: r.body };
      } catch (e) {
        report.fetch_errors++;
        return null;
      }
    }));
    const summaries = new Map();
    for (const g of got.filter(Boolean)) {
      report.playlists++;
      const { errors, summary } = checkPlaylist(g.text, { requirePdt: o.pdt, requireLowLatency: o.ll });
      for (const e of errors) error(`${g.s.name}: ${e}`);
      const before = prev.get(g.s.name);
      if (before) for (const e of checkReload(before, summary, `${g.s.name} reload`)) error(e);
      if (before && o.noSkips && summary.mediaSequence > before.lastMsn + 1) {
        error(`${g.s.name} reload: segments ${before.lastMsn + 1}..${summary.mediaSequence - 1} never listed (the numbering jumped from ${before.lastMsn} to ${summary.mediaSequence})`);
      }
      prev.set(g.s.name, summary);
      summaries.set(g.s.name, summary);
      report.first_msn ??= summary.mediaSequence;
      report.last_msn = Math.max(report.last_msn ?? 0, summary.lastMsn);
      report.discontinuities_seen = Math.max(report.discontinuities_seen, summary.discontinuitySequence + summary.discontinuities);
      for (const d of discontinuityPoints(summary)) {
        const known = breaks.get(d.msn) ?? { ...d, before: null, sources: [] };
        // Keep the view that shows what the break follows.
        if (!known.before && d.before) known.before = d.before;
        if (!known.sources.includes(g.s.name)) known.sources.push(g.s.name);
        breaks.set(d.msn, known);
      }
    }
    const edgeViews = o.edges.map((_, i) => summaries.get(`edge${i + 1}`)).filter(Boolean);
    for (let i = 1; i < edgeViews.length; i++) {
      for (const e of compareEdges(edgeViews[0], edgeViews[i], `edge1 vs edge${i + 1}`)) error(e);
    }
    if (edgeViews.length > 1) {
      const lasts = edgeViews.map((v) => v.lastMsn);
      report.max_edge_lag_segments = Math.max(report.max_edge_lag_segments, Math.max(...lasts) - Math.min(...lasts));
    }

    if (o.media && edgeViews.length) {
      // Every URI listed by the first edge's latest playlist: whole segments, the init
      // segment, and (with --parts) parts of completed segments.
      const v = edgeViews[0];
      const uris = [];
      if (v.map) uris.push({ uri: v.map, kind: 'init' });
      for (const s of v.segments) {
        uris.push({ uri: s.uri, kind: 'segment' });
        if (o.parts) for (const p of s.parts) uris.push({ uri: p.uri, kind: 'part' });
      }
      for (const { uri, kind } of uris) {
        if (compared.has(uri)) continue;
        const bodies = await Promise.all(o.edges.map(async (edge) => {
          try {
            const r = await get(new URL(uri, edge), true);
            return r.status === 200 ? r.body : null;
          } catch { return null; }
        }));
        if (bodies.some((b) => b === null)) {
          const waited = (pending.get(uri) || 0) + 1;
          pending.set(uri, waited);
          if (waited >= PENDING_ROUNDS) {
            error(`${kind} ${uri}: not served by every edge after ${waited} rounds`);
            compared.add(uri);
            pending.delete(uri);
          }
          continue;
        }
        pending.delete(uri);
        compared.add(uri);
        const hashes = bodies.map(sha);
        if (new Set(hashes).size !== 1) error(`${kind} ${uri}: bytes differ between edges (${hashes.join(' ')})`);
        if (kind === 'segment') report.segments_compared++;
        else if (kind === 'init') report.inits_compared++;
        else report.parts_compared++;
      }
    }
    const wait = o.intervalMs - (Date.now() - round);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }

  // Program date times as ms since the epoch (pdt_ms) and as text (pdt).
  const dated = (x) => ({ ...x, pdt_ms: x.pdt, pdt: x.pdt === null ? null : new Date(x.pdt).toISOString() });
  report.discontinuity_points = [...breaks.values()].sort((a, b) => a.msn - b.msn)
    .map((d) => ({ ...dated(d), before: d.before && dated(d.before) }));
  if (o.discontinuities !== null) {
    if (breaks.size !== o.discontinuities) {
      error(`the timeline broke ${breaks.size} times (at ${[...breaks.keys()].join(', ') || 'none'}), ${o.discontinuities} expected`);
    }
    for (const d of breaks.values()) {
      if (!d.before) error(`discontinuity at ${d.msn}: never listed after the segment before it`);
      else if (d.before.msn !== d.msn - 1 || d.before.dseq !== d.dseq - 1) {
        error(`discontinuity at ${d.msn} (sequence ${d.dseq}) follows segment ${d.before.msn} (sequence ${d.before.dseq})`);
      }
    }
  }
  report.ok = report.errors.length === 0 && report.segments_compared >= o.minSegments && report.playlists > 0;
  if (report.segments_compared < o.minSegments) {
    report.errors.push(`only ${report.segments_compared} segments compared, ${o.minSegments} required`);
  }
  const text = JSON.stringify(report, null, 2);
  if (o.out) fs.writeFileSync(o.out, text);
  console.log(text);
  process.exit(report.ok ? 0 : 1);
}

main().catch((e) => { console.error(`check-playlists: ${e.stack || e}`); process.exit(1); });
