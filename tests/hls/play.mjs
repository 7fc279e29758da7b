// Plays an HLS stream with hls.js (from npm, low-latency mode by default) in headless
// Chromium (Debian's /usr/bin/chromium through playwright-core) for SECONDS and prints
// a JSON report: fatal errors, stalls longer than --stall-ms with their wall-clock
// times, and latency samples = wall clock − the playhead's program date time
// (hls.js `playingDate`, from EXT-X-PROGRAM-DATE-TIME), with p50/p95.
//
//   node play.mjs URL SECONDS [--plain] [--stall-ms 250] [--max-stall-ms N]
//       [--max-p50-ms N] [--catch-up RATE] [--trust-spki BASE64] [--seek S]
//       [--out report.json]
//
// --seek S (a VOD playlist): hls.js buffers only 4 s ahead; once playback has
// started, the playhead is set to S seconds; the report's `seek` says where it landed (`currentTime` at the `seeked`
// event), the first fragment hls.js loaded for it (its start on the playlist's
// timeline) and how far the playhead moved after it in SECONDS. A seek that never
// completes, lands before S or more than 0.5 s after it, or does not play on is a
// problem.
//
// An https:// URL is played as Chromium would play it in production: certificates are
// verified. --trust-spki (repeatable) adds a leaf whose SubjectPublicKeyInfo has that
// base64 SHA-256 (`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der |
// openssl dgst -sha256 -binary | base64`) through Chromium's
// --ignore-certificate-errors-spki-list, so an edge with a test CA's certificate is
// accepted and every other certificate error still fails. The report's `protocols`
// gives the negotiated protocol (`nextHopProtocol` of the page's resource timing
// entries: "h2", "http/1.1") of every playlist and media request.
//
// --catch-up sets hls.js's maxLiveSyncPlaybackRate (default 1: hls.js's own default, no
// catch-up): a player that fell behind its target latency (a slow start on a busy
// machine, a stall) plays up to RATE× until it is back. Without it hls.js keeps whatever
// latency it started at. The report gives the latency of the first sample beside the
// percentiles, so a start far behind live shows as such.
//
// The page is served on the stream's own origin (intercepted by playwright), so the
// stream needs no CORS headers. --plain turns hls.js's low-latency mode off (parts and
// blocking reloads unused). Exits 1 on a fatal error, when playback never started, or
// when a --max-* bound is broken. Every wait has a deadline.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const HLS_JS = path.join(here, 'node_modules/hls.js/dist/hls.min.js');
/** How long the player may take to show its first frame. */
const START_MS = 20_000;

function parseArgs(argv) {
  const o = { url: null, seconds: null, ll: true, stallMs: 250, maxStallMs: null, maxP50Ms: null, catchUp: 1, trustSpki: [], seek: null, out: null };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--plain') o.ll = false;
    else if (a === '--stall-ms') o.stallMs = Number(next());
    else if (a === '--max-stall-ms') o.maxStallMs = Number(next());
    else if (a === '--max-p50-ms') o.maxP50Ms = Number(next());
    else if (a === '--catch-up') o.catchUp = Number(next());
    else if (a === '--trust-spki') o.trustSpki.push(next());
    else if (a === '--seek') o.seek = Number(next());
    else if (a === '--out') o.out = next();
    else if (a.startsWith('--')) usage(`unknown option ${a}`);
    else rest.push(a);
  }
  [o.url, o.seconds] = [rest[0], Number(rest[1])];
  if (!o.url || !(o.seconds > 0)) usage('URL and SECONDS are required');
  return o;
}

function usage(why) {
  console.error(`play: ${why}\nusage: node play.mjs URL SECONDS [--plain] [--stall-ms N] [--max-stall-ms N] [--max-p50-ms N] [--catch-up RATE] [--trust-spki BASE64] [--seek S] [--out FILE]`);
  process.exit(2);
}

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>hls harness</title></head>
<body><video id="v" muted autoplay playsinline></video>
<script src="hls.min.js"></script>
<script>
window.harness = { fatal: [], nonfatal: {}, samples: [], stalls: [], started: null, levels: null,
  protocols: { playlist: {}, media: {} }, requests: [] };
// Resource timing keeps 250 entries by default; LL-HLS makes several requests a second.
// Entries are counted and cleared every 100 ms so none is lost to a full buffer.
performance.setResourceTimingBufferSize(10000);
function countProtocols() {
  const p = window.harness.protocols;
  for (const e of performance.getEntriesByType('resource')) {
    // hls.js loads with XHR (fetch for some loaders); the browser's own requests
    // (favicon.ico) and the harness's page are not the stream's.
    if (!['xmlhttprequest', 'fetch'].includes(e.initiatorType) || e.name.includes('/__hls_harness__/')) continue;
    const kind = new URL(e.name).pathname.endsWith('.m3u8') ? 'playlist' : 'media';
    const proto = e.nextHopProtocol || 'unknown';
    p[kind][proto] = (p[kind][proto] || 0) + 1;
    // The last 30 s of requests (wall clock), for the report's view of each stall.
    const at = performance.timeOrigin + e.startTime, r = window.harness.requests;
    r.push({ at: Math.round(at), ms: Math.round(e.duration), status: e.responseStatus, url: (() => { const u = new URL(e.name); return u.pathname + u.search; })() });
    while (r.length && r[0].at < at - 30000) r.shift();
    if (proto === 'unknown' && (p.unknown ||= []).length < 5) {
      p.unknown.push({ url: e.name, initiator: e.initiatorType, status: e.responseStatus, ms: Math.round(e.duration), bytes: e.transferSize });
    }
  }
  performance.clearResourceTimings();
}
function start(url, ll, stallMs, catchUp, shortBuffer) {
  const h = window.harness, v = document.getElementById('v');
  if (!Hls.isSupported()) { h.fatal.push({ at: Date.now(), type: 'unsupported', details: 'MSE missing' }); return; }
  // With a seek to come, hls.js buffers 4 s ahead only, so the seek loads what it lands on.
  const buffer = shortBuffer ? { maxBufferLength: 4, maxMaxBufferLength: 4 } : {};
  const hls = new Hls({ lowLatencyMode: ll, backBufferLength: 10, maxLiveSyncPlaybackRate: catchUp, ...buffer });
  window.hls = hls;
  hls.on(Hls.Events.ERROR, (e, d) => {
    // The reason too (a parsing error's names both playlists), cut to keep the report short.
    if (d.fatal) h.fatal.push({ at: Date.now(), type: d.type, details: d.details, url: d.url || (d.frag && d.frag.url) || null,
      reason: String(d.reason || (d.error && d.error.message) || '').slice(0, 4000) });
    else {
      h.nonfatal[d.details] = (h.nonfatal[d.details] || 0) + 1;
      // When, too (the first 50): a stall or a timeout is matched with what the test did.
      if ((h.nonfatalAt ||= []).length < 50) h.nonfatalAt.push({ at: new Date().toISOString().slice(11, 23), details: d.details, url: d.url || (d.frag && d.frag.url) || undefined,
        reason: String(d.reason || (d.error && d.error.message) || '').slice(0, 300) || undefined });
    }
  });
  h.frags = [];
  hls.on(Hls.Events.FRAG_LOADED, (e, d) => { if (h.frags.length < 1000) h.frags.push({ at: Date.now(), sn: d.frag.sn, start: d.frag.start }); });
  hls.on(Hls.Events.LEVEL_LOADED, (e, d) => { h.levels = { live: d.details.live, partTarget: d.details.partTarget, targetduration: d.details.targetduration, canBlockReload: d.details.canBlockReload }; });
  hls.loadSource(url);
  hls.attachMedia(v);
  v.play().catch(() => {});
  let lastT = -1, lastAdvance = 0, stalledSince = null;
  setInterval(() => {
    countProtocols();
    const now = Date.now();
    if (v.currentTime !== lastT) {
      if (h.started === null && v.currentTime > 0) { h.started = now; h.startedAtS = v.currentTime; }
      if (stalledSince !== null && now - stalledSince > stallMs) {
        // What hls.js asked for from 3 s before the stall to its end, and how long each took.
        const around = h.requests.filter((q) => q.at + q.ms >= stalledSince - 3000 && q.at <= now);
        h.stalls.push({ at: stalledSince, ms: now - stalledSince, requests: around.map((q) => ({ ...q, at: q.at - stalledSince })) });
      }
      stalledSince = null;
      lastT = v.currentTime; lastAdvance = now;
    } else if (h.started !== null && stalledSince === null) {
      stalledSince = lastAdvance;
    }
    h.stalledSince = stalledSince;
    const pd = hls.playingDate;
    if (h.started !== null && pd && !v.paused) {
      h.samples.push({ at: now, latency: now - pd.getTime(), hlsLatency: hls.latency, buffered: v.buffered.length ? v.buffered.end(v.buffered.length - 1) - v.currentTime : 0 });
    }
  }, 100);
}
</script></body></html>`;

const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const exe = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(exe)) throw new Error(`${exe} not found: run scripts/install-deps.sh`);
  if (!fs.existsSync(HLS_JS)) throw new Error(`${HLS_JS} not found: run scripts/install-deps.sh (npm ci in tests/hls)`);
  const origin = new URL(o.url).origin;
  const browser = await chromium.launch({
    executablePath: exe, headless: true, timeout: START_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
      // Honoured only with a --user-data-dir, which playwright always passes (a fresh
      // profile per launch).
      ...(o.trustSpki.length ? [`--ignore-certificate-errors-spki-list=${o.trustSpki.join(',')}`] : [])],
  });
  const responses = {};
  try {
    const page = await browser.newPage();
    await page.route(`${origin}/__hls_harness__/page.html`, (r) => r.fulfill({ contentType: 'text/html', body: PAGE }));
    await page.route(`${origin}/__hls_harness__/hls.min.js`, (r) => r.fulfill({ contentType: 'application/javascript', body: fs.readFileSync(HLS_JS) }));
    page.on('response', (r) => { if (!r.url().includes('__hls_harness__')) responses[r.status()] = (responses[r.status()] || 0) + 1; });
    page.on('requestfailed', () => { responses.failed = (responses.failed || 0) + 1; });
    await page.goto(`${origin}/__hls_harness__/page.html`, { timeout: START_MS });
    const t0 = Date.now();
    await page.evaluate(([u, ll, s, c, b]) => start(u, ll, s, c, b), [o.url, o.ll, o.stallMs, o.catchUp, o.seek !== null]);
    await page.waitForFunction(() => window.harness.started !== null || window.harness.fatal.length > 0, null, { timeout: START_MS, polling: 100 })
      .catch(() => {});
    const startedAt = await page.evaluate(() => window.harness.started);
    let seek = null;
    if (startedAt && o.seek !== null) {
      await page.waitForTimeout(1000);
      seek = await page.evaluate((to) => new Promise((done) => {
        const v = document.getElementById('v'), h = window.harness, asked = Date.now();
        const timer = setTimeout(() => done({ to, landed: null, after_ms: null }), 15000);
        v.addEventListener('seeked', () => {
          clearTimeout(timer);
          h.seekedAtS = v.currentTime;
          const frag = h.frags.find((f) => f.at >= asked);
          done({ to, landed: v.currentTime, after_ms: Date.now() - asked, first_fragment: frag ? { sn: frag.sn, start: frag.start } : null });
        }, { once: true });
        v.currentTime = to;
      }), o.seek);
    }
    if (startedAt) await page.waitForTimeout(o.seconds * 1000);
    const h = await page.evaluate(() => {
      countProtocols();
      const v = document.getElementById('v');
      const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
      return { ...window.harness, frags: undefined, decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames, currentTime: v.currentTime };
    });
    // A stall still going on at the end counts too.
    if (h.stalledSince !== null && h.stalledSince !== undefined && Date.now() - h.stalledSince > o.stallMs) {
      h.stalls.push({ at: h.stalledSince, ms: Date.now() - h.stalledSince, ongoing: true });
    }
    const lat = h.samples.map((s) => s.latency);
    const report = {
      url: o.url, mode: o.ll ? 'low-latency' : 'plain', seconds: o.seconds,
      started_after_ms: h.started ? h.started - t0 : null,
      playlist: h.levels,
      fatal_errors: h.fatal,
      nonfatal_errors: h.nonfatal,
      nonfatal_errors_at: h.nonfatalAt || [],
      stall_threshold_ms: o.stallMs,
      stalls: h.stalls.map((s) => ({ at: new Date(s.at).toISOString(), ms: s.ms, ...(s.ongoing ? { ongoing: true } : {}),
        ...(s.requests ? { requests_ms_from_stall: s.requests } : {}) })),
      longest_stall_ms: Math.max(0, ...h.stalls.map((s) => s.ms)),
      catch_up_rate: o.catchUp,
      latency_ms: { samples: lat.length, first: lat.length ? lat[0] : null, p50: pct(lat, 50), p95: pct(lat, 95), min: pct(lat, 0), max: pct(lat, 100) },
      hlsjs_latency_s: { p50: pct(h.samples.map((s) => s.hlsLatency), 50), p95: pct(h.samples.map((s) => s.hlsLatency), 95) },
      frames: { decoded: h.decoded, dropped: h.dropped },
      played_s: h.currentTime,
      // How far the playhead moved from the first frame shown (played_s is the
      // stream's timeline, which a live stream joins part-way).
      progress_s: h.started ? h.currentTime - h.startedAtS : 0,
      ...(seek ? { seek: { ...seek, played_after_s: seek.landed === null ? 0 : h.currentTime - seek.landed } } : {}),
      responses,
      protocols: h.protocols,
    };
    const problems = [];
    if (!h.started) problems.push(`playback never started within ${START_MS} ms`);
    if (h.fatal.length) problems.push(`${h.fatal.length} fatal error(s)`);
    if (o.maxStallMs !== null && report.longest_stall_ms > o.maxStallMs) problems.push(`a stall of ${report.longest_stall_ms} ms (max ${o.maxStallMs})`);
    if (o.maxP50Ms !== null && !(report.latency_ms.p50 <= o.maxP50Ms)) problems.push(`latency p50 ${report.latency_ms.p50} ms (max ${o.maxP50Ms})`);
    if (o.seek !== null && h.started) {
      const sk = report.seek;
      if (!sk || sk.landed === null) problems.push(`the seek to ${o.seek} s never completed`);
      else if (sk.landed < o.seek - 0.05 || sk.landed > o.seek + 0.5) problems.push(`the seek to ${o.seek} s landed at ${sk.landed} s`);
      else if (!(sk.played_after_s >= o.seconds / 2)) problems.push(`after the seek the playhead moved ${sk.played_after_s} s in ${o.seconds} s`);
    }
    report.problems = problems;
    report.ok = problems.length === 0;
    const text = JSON.stringify(report, null, 2);
    if (o.out) fs.writeFileSync(o.out, text);
    console.log(text);
    return report.ok;
  } finally {
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => { console.error('play: the run overran its deadline'); process.exit(1); }, (Number(process.argv[3]) || 60) * 1000 + 3 * START_MS);
main().then((ok) => { clearTimeout(watchdog); process.exit(ok ? 0 : 1); })
  .catch((e) => { console.error(`play: ${e.stack || e}`); process.exit(1); });
