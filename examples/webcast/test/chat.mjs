// End-to-end check of the webcast page in headless Chromium: two pages, each on its own
// edge, see each other's chat messages, votes and reactions through shared objects,
// and play the live stream over HTTP-FLV.
//
//   node test/chat.mjs EDGE_A EDGE_B [--out DIR] [--stream APP/NAME] [--token T] [--no-video]
//       [--players A,B]
//
// --token is a write token for the stream's webcast objects (`webcast/APP/NAME/…`);
// the pages get it in their URL. --players picks each page's player, `hls` (LL-HLS with
// hls.js) or `flv` (HTTP-FLV with mpegts.js): $WEBCAST_PLAYERS, by default `flv,flv`.
//
// EDGE_A/EDGE_B are base URLs (http://127.0.0.1:8081) or host:port; they default to
// $WEBCAST_EDGE_A and $WEBCAST_EDGE_B. Screenshots go to --out ($WEBCAST_OUT, default
// ./webcast-screenshots): edge-a.png and edge-b.png, or failure-*.png on a failure.
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM). Every wait has a deadline;
// any failure exits non-zero with what was expected and what the pages showed.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

/** How long one expectation may take (generous: CI machines have 2 busy cores). */
const STEP_MS = Number(process.env.WEBCAST_STEP_MS || 30_000);
/** The whole run is killed after this (a hung browser must not hang the test). */
const TOTAL_MS = Number(process.env.WEBCAST_TOTAL_MS || 240_000);

function parseArgs(argv) {
  const opts = {
    edges: [],
    out: process.env.WEBCAST_OUT || 'webcast-screenshots',
    stream: process.env.WEBCAST_STREAM || 'live/test',
    token: process.env.WEBCAST_TOKEN || '',
    video: process.env.WEBCAST_NO_VIDEO ? false : true,
    players: (process.env.WEBCAST_PLAYERS || 'flv,flv').split(','),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--out') opts.out = argv[++i];
    else if (a === '--stream') opts.stream = argv[++i];
    else if (a === '--token') opts.token = argv[++i];
    else if (a === '--no-video') opts.video = false;
    else if (a === '--players') opts.players = argv[++i].split(',');
    else if (a.startsWith('--')) fail(`unknown option ${a}`);
    else opts.edges.push(a);
  }
  if (opts.edges.length === 0) opts.edges = [process.env.WEBCAST_EDGE_A, process.env.WEBCAST_EDGE_B].filter(Boolean);
  if (opts.players.length !== 2 || opts.players.some((p) => p !== 'hls' && p !== 'flv')) fail('--players takes two of hls|flv, e.g. hls,flv');
  if (opts.edges.length !== 2) fail('usage: node test/chat.mjs EDGE_A EDGE_B [--out DIR] [--stream APP/NAME] [--token T] [--no-video]');
  opts.edges = opts.edges.map((e) => (/^https?:\/\//.test(e) ? e : `http://${e}`).replace(/\/+$/, ''));
  return opts;
}

function fail(message) {
  console.error(`webcast test FAILED: ${message}`);
  process.exit(1);
}

const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

/** Waits until `fn` (run in `page`) returns a truthy value; fails with `what` after STEP_MS. */
async function until(page, what, fn, arg) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout: STEP_MS, polling: 100 })).jsonValue();
  } catch (e) {
    throw new Error(`${page.label}: timed out after ${STEP_MS} ms waiting for ${what}` +
      (e.name === 'TimeoutError' ? '' : ` (${e.message.split('\n')[0]})`));
  }
}

async function openPage(browser, label, edge, opts, name, player) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  page.label = `${label} (${edge}, ${player})`;
  const url = `${edge}/webcast/?stream=${encodeURIComponent(opts.stream)}&name=${encodeURIComponent(name)}&player=${player}`
    + (opts.token ? `&token=${encodeURIComponent(opts.token)}` : '');
  const res = await page.goto(url, { timeout: STEP_MS, waitUntil: 'load' }).catch((e) => {
    throw new Error(`${page.label}: could not load ${url}: ${e.message.split('\n')[0]}`);
  });
  if (!res || !res.ok()) throw new Error(`${page.label}: GET ${url} answered ${res && res.status()}`);
  return page;
}

const bothConnected = () =>
  document.getElementById('chat-status').dataset.state === 'live' &&
  document.getElementById('poll-status').dataset.state === 'live';

async function sendChat(page, text) {
  await page.fill('#chat-text', text);
  await page.click('#chat-form button[type=submit]');
}

const chatHas = (text) => [...document.querySelectorAll('#chat-log .text')].some((e) => e.textContent === text);

const tallies = () => [...document.querySelectorAll('#poll-options .option')].map((b) => Number(b.dataset.count));

const sameTallies = (want) => {
  const got = [...document.querySelectorAll('#poll-options .option')].map((b) => Number(b.dataset.count));
  return JSON.stringify(got) === JSON.stringify(want);
};

/** Video time advances by more than one second (and frames have a size). */
async function expectPlaying(page) {
  const t0 = await until(page, 'the video to start playing (currentTime > 0)', () => {
    const v = document.getElementById('video');
    return v.currentTime > 0 && v.videoWidth > 0 && v.currentTime;
  });
  await until(page, `the video's currentTime to advance past ${(t0 + 1).toFixed(2)} s`, (t) => {
    const v = document.getElementById('video');
    return !v.paused && v.currentTime > t + 1;
  }, t0);
  return page.evaluate(() => {
    const v = document.getElementById('video');
    return { currentTime: v.currentTime, width: v.videoWidth, height: v.videoHeight };
  });
}

async function run(opts) {
  const exe = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(exe)) fail(`${exe} not found: install Debian's chromium (scripts/install-deps.sh)`);
  fs.mkdirSync(opts.out, { recursive: true });

  // launch() gives the browser a fresh temporary profile (user-data dir), removed on close.
  const browser = await chromium.launch({
    executablePath: exe,
    headless: true,
    timeout: STEP_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required'],
  });
  const pages = [];
  try {
    const tag = Math.random().toString(36).slice(2, 8);
    const a = await openPage(browser, 'page A', opts.edges[0], opts, 'Alice', opts.players[0]);
    const b = await openPage(browser, 'page B', opts.edges[1], opts, 'Bob', opts.players[1]);
    pages.push(a, b);
    await Promise.all(pages.map((p) => until(p, 'chat and poll event streams to connect', bothConnected)));
    log('both pages connected to their edges');

    // Chat, both ways.
    const fromA = `hello from Alice ${tag}`;
    await sendChat(a, fromA);
    await until(b, `page A's message "${fromA}"`, chatHas, fromA);
    const fromB = `hi Alice, Bob here ${tag}`;
    await sendChat(b, fromB);
    await until(a, `page B's message "${fromB}"`, chatHas, fromB);
    await until(b, `its own message "${fromB}"`, chatHas, fromB);
    log('chat: each page shows the other\'s message');

    // Poll: A starts one, both vote, both show the same tallies.
    const question = `Which codec next? ${tag}`;
    await a.click('.new-poll summary');
    await a.fill('#poll-q', question);
    await a.fill('#poll-o', 'H.264\nAV1\nVP9');
    await a.click('#poll-form button[type=submit]');
    for (const p of pages) {
      await until(p, `the poll "${question}" with 3 options`, (q) =>
        document.getElementById('poll-question').textContent === q &&
        document.querySelectorAll('#poll-options .option').length === 3, question);
    }
    await a.click('#poll-options .option[data-option="0"]');
    await b.click('#poll-options .option[data-option="2"]');
    for (const p of pages) await until(p, 'tallies [1,0,1]', sameTallies, [1, 0, 1]);
    await b.click('#poll-options .option[data-option="0"]'); // B changes its vote
    for (const p of pages) await until(p, 'tallies [2,0,0] after page B changed its vote', sameTallies, [2, 0, 0]);
    const [ta, tb] = await Promise.all(pages.map((p) => p.evaluate(tallies)));
    if (JSON.stringify(ta) !== JSON.stringify(tb)) throw new Error(`tallies differ: A ${ta}, B ${tb}`);
    log(`poll: both pages show tallies ${JSON.stringify(ta)}`);

    // Reactions are broadcasts (not stored): B sees A's.
    await a.click('.react[data-emoji="🔥"]');
    await until(b, 'page A\'s 🔥 reaction', () =>
      [...document.querySelectorAll('#reaction-feed .reaction')].some((r) => r.textContent === '🔥'));
    log('reactions: page B saw page A\'s broadcast');

    if (opts.video) {
      for (const p of pages) {
        const v = await expectPlaying(p);
        log(`${p.label}: video playing ${v.width}x${v.height}, currentTime ${v.currentTime.toFixed(2)} s`);
      }
    }

    const versions = await Promise.all(pages.map((p) => p.evaluate(() =>
      [document.getElementById('chat-version').textContent, document.getElementById('poll-version').textContent])));
    log(`object versions (chat, poll): A ${versions[0]}, B ${versions[1]}`);
    await a.screenshot({ path: path.join(opts.out, 'edge-a.png'), fullPage: true });
    await b.screenshot({ path: path.join(opts.out, 'edge-b.png'), fullPage: true });
    log(`screenshots in ${opts.out}`);
    for (const p of pages) {
      if (p.problems.length) log(`${p.label} reported (not fatal):\n  ${p.problems.join('\n  ')}`);
    }
  } catch (e) {
    for (const [i, p] of pages.entries()) {
      await p.screenshot({ path: path.join(opts.out, `failure-${'ab'[i]}.png`), timeout: 5000 }).catch(() => {});
      const shown = await p.evaluate(() => ({
        chat: document.getElementById('chat-status').textContent,
        poll: document.getElementById('poll-status').textContent,
        player: document.getElementById('player-status').textContent,
        notice: document.getElementById('notice').textContent,
        messages: document.querySelectorAll('#chat-log li').length,
      })).catch(() => null);
      console.error(`${p.label} shows ${JSON.stringify(shown)}`);
      if (p.problems.length) console.error(`${p.label} reported:\n  ${p.problems.join('\n  ')}`);
    }
    throw e;
  } finally {
    await browser.close().catch(() => {});
  }
}

const opts = parseArgs(process.argv.slice(2));
const watchdog = setTimeout(() => fail(`the whole run took more than ${TOTAL_MS} ms`), TOTAL_MS);
try {
  await run(opts);
  clearTimeout(watchdog);
  log(`webcast test passed (edges ${opts.edges.join(', ')})`);
} catch (e) {
  fail(e.message);
}
