// Records an HLS stream with ffmpeg for SECONDS (through the load balancer, typically)
// as decoded-frame checksums (`-f framemd5`) and checks them against the source: every
// source frame exactly once, in order (lib/framemd5.mjs), from wherever the recording
// joined. The source is a media file the publisher also wrote (ffmpeg's tee muxer) or
// its framemd5. --source may be given more than once, for a publisher that reconnected:
// the expected frames are the sources' frames concatenated in order, and the recording
// must run from the first source into the last (lib/framemd5.mjs, compareWithSources).
//
//   node record.mjs URL SECONDS --source FILE [--source FILE…] [--stream v|a] [--out DIR]
//
// Decoded frames, not packet counts: a frame delivered twice, dropped or damaged shows.
// Video by default (AAC frames decoded from a segment boundary depend on the previous
// frame, so audio is compared only with --stream a, as information). Prints a JSON
// report; exits 1 unless the recording is a clean run of the source.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { compareWithSources, parseFramemd5 } from './lib/framemd5.mjs';

function parseArgs(argv) {
  const o = { url: null, seconds: null, sources: [], stream: 'v', out: null };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--source') o.sources.push(argv[++i]);
    else if (a === '--stream') o.stream = argv[++i];
    else if (a === '--out') o.out = argv[++i];
    else if (a.startsWith('--')) usage(`unknown option ${a}`);
    else rest.push(a);
  }
  [o.url, o.seconds] = [rest[0], Number(rest[1])];
  if (!o.url || !(o.seconds > 0) || !o.sources.length || !['v', 'a'].includes(o.stream)) usage('URL, SECONDS and --source are required');
  return o;
}

function usage(why) {
  console.error(`record: ${why}\nusage: node record.mjs URL SECONDS --source FILE [--source FILE…] [--stream v|a] [--out DIR]`);
  process.exit(2);
}

/** Runs ffmpeg to framemd5 text; killed after `limitMs`. */
function framemd5(input, stream, extra, limitMs) {
  return new Promise((resolve, reject) => {
    const args = ['-nostdin', '-hide_banner', '-loglevel', 'error', ...extra, '-i', input,
      '-map', `0:${stream}:0`, '-fps_mode', 'passthrough', '-f', 'framemd5', '-'];
    const p = spawn('ffmpeg', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { if (err.length < 20000) err += d; });
    const timer = setTimeout(() => p.kill('SIGINT'), limitMs);
    p.on('error', reject);
    p.on('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const started = Date.now();
  // The recorder: live, stops after SECONDS of wall clock (SIGINT lets ffmpeg finish
  // the frames it has). -rw_timeout: a request that hangs 5 s is an error, not a wait.
  const rec = await framemd5(o.url, o.stream, ['-rw_timeout', '5000000'], o.seconds * 1000);
  const recorded = parseFramemd5(rec.out);
  const sourceTexts = [];
  for (const file of o.sources) {
    sourceTexts.push(file.endsWith('.framemd5') ? fs.readFileSync(file, 'utf8')
      : (await framemd5(file, o.stream, [], 600_000)).out);
  }
  const result = compareWithSources(sourceTexts.map((t) => parseFramemd5(t)), recorded);
  if (o.out) {
    fs.mkdirSync(o.out, { recursive: true });
    fs.writeFileSync(path.join(o.out, 'recorded.framemd5'), rec.out);
    // One source keeps its old name; several are numbered in order.
    sourceTexts.forEach((t, i) => fs.writeFileSync(path.join(o.out, sourceTexts.length === 1 ? 'source.framemd5' : `source${i + 1}.framemd5`), t));
  }
  const report = { url: o.url, stream: o.stream, seconds: o.seconds, wall_ms: Date.now() - started, ffmpeg_exit: rec.code,
    ffmpeg_errors: rec.err.split('\n').filter(Boolean).slice(0, 20), ...result };
  console.log(JSON.stringify(report, null, 2));
  return result.ok && recorded.length > 0;
}

main().then((ok) => process.exit(ok ? 0 : 1)).catch((e) => { console.error(`record: ${e.stack || e}`); process.exit(1); });
