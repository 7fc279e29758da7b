// The interactive webcast: a player (LL-HLS with hls.js, or HTTP-FLV with mpegts.js), a chat and a poll built on
// raftcast shared objects over the edge's HTTP API (PUT/DELETE slots, Server-Sent
// Events for changes, POST messages for broadcasts). No build step; served by the edge
// at /webcast/ (`raftcast edge --www examples/webcast`).
//
// Conflict-free by design: every write touches a slot only its author writes.
//   webcast/<stream>/chat: one slot per message, `m-<ms, 13 digits>-<random>` → {from, text, at}
//   webcast/<stream>/poll: `poll` → {id, question, options}; one slot per voter,
//                          `v-<voterId>` → {poll: id, option: index}
//
// Writes need a write token for those objects, which the page takes from its URL
// (`?token=…`, e.g. from `raftcast ctl tokens sign --object-prefix webcast/live/test/
// --write`); without one the page is read-only: it shows the chat and the poll live.
'use strict';

(() => {
  /** Chat messages kept; whoever posts past it deletes the oldest ones. */
  const MAX_CHAT = 200;
  /** Reconnect delays (ms) after an event stream fails for good (e.g. a 503). */
  const BACKOFF = [1000, 2000, 5000, 10000];
  const PLAYER_RETRY_MS = 2000;

  const params = new URLSearchParams(location.search);
  const stream = (params.get('stream') || 'live/test').replace(/^\/+|\.flv$/g, '');
  const CHAT = `webcast/${stream}/chat`;
  const POLL = `webcast/${stream}/poll`;
  /** The write token from the page's URL; none: read-only. */
  const token = params.get('token') || '';
  const $ = (id) => document.getElementById(id);

  function randomId(n) {
    const bytes = crypto.getRandomValues(new Uint8Array(n));
    return Array.from(bytes, (b) => 'abcdefghijklmnopqrstuvwxyz0123456789'[b % 36]).join('');
  }

  function stored(key, make) {
    try {
      let v = localStorage.getItem(key);
      if (!v) {
        v = make();
        localStorage.setItem(key, v);
      }
      return v;
    } catch {
      return make(); // storage disabled: a new identity per page load
    }
  }

  const voterId = stored('webcast.voter', () => randomId(12));
  let myName = (params.get('name') || stored('webcast.name', () => 'guest-' + randomId(4))).slice(0, 40);

  function notice(text) {
    $('notice').textContent = text;
    if (text) setTimeout(() => { if ($('notice').textContent === text) $('notice').textContent = ''; }, 6000);
  }

  // ---- HTTP API -------------------------------------------------------------------

  const base = (name) => '/shared-objects/' + encodeURIComponent(name);

  async function call(method, path, body, headers = {}) {
    const init = { method, headers: { ...headers } };
    if (token) init.headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let json = null;
    try { json = await res.json(); } catch { /* empty body */ }
    if (!res.ok) {
      let message = (json && json.error && json.error.message) || res.statusText;
      if (res.status === 401) message = 'this page is read-only: open it with a write token (?token=…)';
      const err = new Error(`${method} ${path}: ${res.status} ${message}`);
      err.status = res.status;
      err.code = json && json.error && json.error.code;
      throw err;
    }
    return json;
  }

  const setSlot = (obj, slot, value, ifMatch) =>
    call('PUT', `${base(obj)}/slots/${encodeURIComponent(slot)}`, value,
      ifMatch === undefined ? {} : { 'If-Match': String(ifMatch) });
  const deleteSlot = (obj, slot) => call('DELETE', `${base(obj)}/slots/${encodeURIComponent(slot)}`);
  const broadcast = (obj, handler, args) => call('POST', `${base(obj)}/messages`, { handler, args });

  // ---- A shared object mirrored from its event stream ----------------------------

  /**
   * Keeps `slots` and `version` of one object from `GET …/events`: `state` replaces
   * everything (first, and again after a resync), `change` applies one commit
   * (`set`, `deleted`, `cleared`, or `removed`: the object is gone, version 0).
   * Calls `onUpdate(changedSlots | null)` (null = whole state), `onMessage(data)`,
   * `onStatus(state)` with state "connecting" | "live" | "reconnecting".
   */
  class SharedObject {
    constructor(name, { onUpdate, onMessage, onStatus }) {
      Object.assign(this, { name, onUpdate, onMessage, onStatus });
      this.slots = {};
      this.version = 0;
      this.failures = 0;
      this.connect();
    }

    connect() {
      this.onStatus(this.failures ? 'reconnecting' : 'connecting');
      const es = new EventSource(`${base(this.name)}/events`);
      this.es = es;
      es.addEventListener('open', () => { this.failures = 0; });
      es.addEventListener('state', (e) => {
        const s = JSON.parse(e.data);
        this.slots = s.slots || {};
        this.version = s.version || 0;
        this.onStatus('live');
        this.onUpdate(null);
      });
      es.addEventListener('change', (e) => {
        const c = JSON.parse(e.data);
        if (c.removed) {
          // The object was removed (a temporary one nobody used); it restarts at version 1.
          this.slots = {};
          this.version = 0;
          this.onUpdate(null);
          return;
        }
        if (c.version <= this.version) return; // already in the state we hold
        this.version = c.version;
        let changed = [];
        if (c.cleared) {
          this.slots = {};
          changed = null;
        } else if (c.set) {
          Object.assign(this.slots, c.set);
          changed = Object.keys(c.set);
        } else if (c.deleted !== undefined) {
          delete this.slots[c.deleted];
          changed = [c.deleted];
        }
        this.onUpdate(changed);
      });
      es.addEventListener('message', (e) => {
        try { this.onMessage(JSON.parse(e.data)); } catch { /* not ours */ }
      });
      es.addEventListener('error', () => {
        if (es.readyState === EventSource.CONNECTING) {
          this.onStatus('reconnecting'); // the browser retries by itself
          return;
        }
        // Closed for good (a non-200 answer): retry ourselves, with backoff.
        es.close();
        this.onStatus('reconnecting');
        const delay = BACKOFF[Math.min(this.failures, BACKOFF.length - 1)];
        this.failures += 1;
        setTimeout(() => this.connect(), delay);
      });
    }
  }

  function showStatus(id, label) {
    return (state) => {
      const el = $(id);
      el.dataset.state = state;
      el.textContent = `${label}: ${state === 'live' ? 'connected' : state}`;
      el.parentElement.dataset.state = state;
    };
  }

  // ---- Chat ------------------------------------------------------------------------

  const chatLog = $('chat-log');
  const chatItems = new Map(); // slot → <li>

  function validMessage(v) {
    return v && typeof v === 'object' && typeof v.text === 'string' && typeof v.from === 'string';
  }

  function chatItem(slot, m) {
    const li = document.createElement('li');
    li.dataset.slot = slot;
    if (m.from === myName) li.classList.add('mine');
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = m.from.slice(0, 40);
    const time = document.createElement('time');
    const at = typeof m.at === 'number' ? new Date(m.at) : null;
    if (at && !isNaN(at)) {
      time.dateTime = at.toISOString();
      time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = m.text.slice(0, 500);
    li.append(from, time, text);
    return li;
  }

  function renderChat(changed) {
    const nearBottom = chatLog.scrollHeight - chatLog.scrollTop - chatLog.clientHeight < 40;
    const slots = chat.slots;
    const keys = changed || [...new Set([...chatItems.keys(), ...Object.keys(slots)])];
    for (const slot of keys) {
      if (!slot.startsWith('m-')) continue;
      const old = chatItems.get(slot);
      const json = JSON.stringify(slots[slot]);
      if (old && old.dataset.json === json) continue; // unchanged (a resync): not announced again
      if (old) { old.remove(); chatItems.delete(slot); }
      if (!validMessage(slots[slot])) continue;
      const li = chatItem(slot, slots[slot]);
      li.dataset.json = json;
      // Slot names sort by time (13-digit ms timestamps): insert in order.
      const next = [...chatItems.keys()].filter((k) => k > slot).sort()[0];
      chatLog.insertBefore(li, next ? chatItems.get(next) : null);
      chatItems.set(slot, li);
    }
    $('chat-version').textContent = 'v' + chat.version;
    if (nearBottom || changed === null) chatLog.scrollTop = chatLog.scrollHeight;
  }

  async function trimChat() {
    const messages = Object.keys(chat.slots).filter((k) => k.startsWith('m-')).sort();
    for (const slot of messages.slice(0, Math.max(0, messages.length - MAX_CHAT))) {
      // Another poster may trim the same slot first: a 404 is fine.
      await deleteSlot(CHAT, slot).catch((e) => { if (e.status !== 404) throw e; });
    }
  }

  $('chat-name').value = myName;
  $('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = $('chat-text').value.trim();
    const from = $('chat-name').value.trim().slice(0, 40);
    if (!text || !from) return;
    myName = from;
    try { localStorage.setItem('webcast.name', from); } catch { /* ignore */ }
    const at = Date.now();
    const slot = `m-${String(at).padStart(13, '0')}-${randomId(6)}`;
    const button = e.target.querySelector('button');
    button.disabled = true;
    try {
      await setSlot(CHAT, slot, { from, text: text.slice(0, 500), at });
      $('chat-text').value = '';
      await trimChat();
    } catch (err) {
      notice('Message not sent: ' + err.message);
    } finally {
      button.disabled = false;
      $('chat-text').focus();
    }
  });

  // ---- Poll ------------------------------------------------------------------------

  function currentPoll() {
    const p = poll.slots.poll;
    const ok = p && typeof p === 'object' && typeof p.id === 'string' && typeof p.question === 'string' &&
      Array.isArray(p.options) && p.options.every((o) => typeof o === 'string');
    return ok ? p : null;
  }

  function tally(p) {
    const counts = p.options.map(() => 0);
    let mine = null;
    for (const [slot, v] of Object.entries(poll.slots)) {
      if (!slot.startsWith('v-') || !v || v.poll !== p.id) continue;
      if (!Number.isInteger(v.option) || v.option < 0 || v.option >= counts.length) continue;
      counts[v.option] += 1;
      if (slot === 'v-' + voterId) mine = v.option;
    }
    return { counts, mine };
  }

  function renderPoll() {
    $('poll-version').textContent = 'v' + poll.version;
    const p = currentPoll();
    const list = $('poll-options');
    list.replaceChildren();
    if (!p) {
      $('poll-question').textContent = 'No poll yet. Start one below.';
      $('poll-total').textContent = '';
      return;
    }
    const { counts, mine } = tally(p);
    const total = counts.reduce((a, b) => a + b, 0);
    $('poll-question').textContent = p.question;
    $('poll-question').dataset.pollId = p.id;
    p.options.forEach((label, i) => {
      const pct = total ? Math.round((100 * counts[i]) / total) : 0;
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'option';
      button.dataset.option = String(i);
      button.dataset.count = String(counts[i]);
      button.setAttribute('aria-pressed', String(mine === i));
      button.style.setProperty('--pct', pct + '%');
      const name = document.createElement('span');
      name.className = 'label';
      name.textContent = label;
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = `${counts[i]} · ${pct}%`;
      button.append(name, count);
      button.addEventListener('click', () => vote(p.id, i));
      li.append(button);
      list.append(li);
    });
    $('poll-total').textContent = `${total} vote${total === 1 ? '' : 's'}` + (mine === null ? '' : ' · you voted');
    $('poll-total').dataset.total = String(total);
  }

  async function vote(pollId, option) {
    try {
      await setSlot(POLL, 'v-' + voterId, { poll: pollId, option });
    } catch (err) {
      notice(err.code === 'limit_exceeded' ? 'The poll is full.' : 'Vote not counted: ' + err.message);
    }
  }

  $('poll-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const question = $('poll-q').value.trim();
    const options = $('poll-o').value.split('\n').map((s) => s.trim()).filter(Boolean).slice(0, 10);
    if (!question || options.length < 2) {
      notice('A poll needs a question and at least two options.');
      return;
    }
    const id = `p-${Date.now()}-${randomId(4)}`;
    try {
      await setSlot(POLL, 'poll', { id, question, options });
      e.target.closest('details').open = false;
      e.target.reset();
      // Votes of earlier polls no longer count; clearing them keeps the object small.
      for (const [slot, v] of Object.entries(poll.slots)) {
        if (slot.startsWith('v-') && (!v || v.poll !== id)) {
          await deleteSlot(POLL, slot).catch(() => {});
        }
      }
    } catch (err) {
      notice('Poll not started: ' + err.message);
    }
  });

  // ---- Reactions (broadcasts: sent to everyone watching, never stored) -------------

  function showReaction(emoji, from) {
    const feed = $('reaction-feed');
    const span = document.createElement('span');
    span.className = 'reaction';
    span.textContent = emoji;
    span.title = from;
    span.setAttribute('aria-label', `${from} reacted ${emoji}`);
    feed.append(span);
    while (feed.children.length > 12) feed.firstElementChild.remove();
    setTimeout(() => span.remove(), 8000);
  }

  for (const b of document.querySelectorAll('.react')) {
    b.addEventListener('click', () => {
      broadcast(CHAT, 'react', [b.dataset.emoji, myName]).catch((err) => notice('Reaction not sent: ' + err.message));
    });
  }

  function onChatMessage(m) {
    if (m.handler === 'react' && Array.isArray(m.args) && typeof m.args[0] === 'string') {
      showReaction(m.args[0].slice(0, 8), String(m.args[1] || '').slice(0, 40));
    }
  }

  // ---- Player ----------------------------------------------------------------------

  const video = $('video');

  function playerStatus(state, text) {
    const el = $('player-status');
    el.dataset.state = state;
    el.textContent = text;
    el.hidden = state === 'playing';
  }

  /** `?player=hls` (the default) or `?player=flv`: how the video is fetched. */
  const playerKind = params.get('player') === 'flv' ? 'flv' : 'hls';

  function startPlayer() {
    const choice = $('player-choice');
    choice.value = playerKind;
    choice.addEventListener('change', () => {
      const next = new URL(location.href);
      next.searchParams.set('player', choice.value);
      location.assign(next.href);
    });
    video.addEventListener('playing', () => playerStatus('playing', 'Playing'));
    video.addEventListener('waiting', () => playerStatus('buffering', 'Buffering…'));
    if (playerKind === 'flv') startFlv();
    else startHls();
  }

  // LL-HLS from the same edge (`GET /APP/NAME/index.m3u8`): hls.js in low-latency mode
  // wherever Media Source Extensions exist, the browser's own HLS elsewhere (Safari on
  // iPhone).
  function startHls() {
    const url = new URL(`/${stream}/index.m3u8`, location.href).href;
    const Hls = window.Hls;
    if (!(Hls && Hls.isSupported())) {
      if (video.canPlayType('application/vnd.apple.mpegurl')) {
        playerStatus('connecting', 'Connecting to the stream (native HLS)…');
        video.src = url;
        video.addEventListener('error', () => {
          playerStatus('waiting', 'The stream is not available. Retrying…');
          setTimeout(() => { video.src = url; video.load(); }, PLAYER_RETRY_MS);
        });
        video.play().catch(() => {});
        return;
      }
      playerStatus('error', Hls ? 'This browser cannot play HLS.' : 'The player library is missing (run npm ci in examples/webcast).');
      return;
    }
    let hls = null;
    const retry = (why) => {
      if (hls) { hls.destroy(); hls = null; }
      playerStatus('waiting', `${why} Retrying…`);
      setTimeout(start, PLAYER_RETRY_MS);
    };
    function start() {
      playerStatus('connecting', 'Connecting to the stream…');
      hls = new Hls({ lowLatencyMode: true, backBufferLength: 30 });
      hls.on(Hls.Events.ERROR, (event, data) => {
        if (!data.fatal) return; // hls.js retries those itself
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else if (data.details === Hls.ErrorDetails.MANIFEST_LOAD_ERROR && data.response && data.response.code === 404) {
          retry('Nobody is publishing this stream yet.');
        } else {
          retry(`Playback error (${data.details}).`);
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      video.play().catch(() => { /* autoplay refused: the controls remain */ });
    }
    start();
  }

  // HTTP-FLV from the same edge (`GET /APP/NAME.flv`) with mpegts.js.
  function startFlv() {
    const mpegts = window.mpegts;
    if (!mpegts) {
      playerStatus('error', 'The player library is missing (run npm ci in examples/webcast).');
      return;
    }
    if (!mpegts.getFeatureList().mseLivePlayback) {
      playerStatus('error', 'This browser cannot play live HTTP-FLV (no Media Source Extensions).');
      return;
    }
    let player = null;
    const retry = (why) => {
      if (player) { player.destroy(); player = null; }
      playerStatus('waiting', `${why} Retrying…`);
      setTimeout(start, PLAYER_RETRY_MS);
    };
    function start() {
      playerStatus('connecting', 'Connecting to the stream…');
      player = mpegts.createPlayer(
        { type: 'flv', isLive: true, url: new URL(`/${stream}.flv`, location.href).href },
        { enableWorker: false, liveBufferLatencyChasing: true, lazyLoad: false },
      );
      player.attachMediaElement(video);
      player.on(mpegts.Events.ERROR, (type, detail) => {
        retry(detail === 'HttpStatusCodeInvalid' ? 'Nobody is publishing this stream yet.' : `Playback error (${detail}).`);
      });
      player.on(mpegts.Events.LOADING_COMPLETE, () => retry('The stream ended.'));
      player.load();
      const p = player.play();
      if (p && p.catch) p.catch(() => { /* autoplay refused: the controls remain */ });
    }
    start();
  }

  // ---- Start -----------------------------------------------------------------------

  $('stream-name').textContent = stream;
  document.title = `${stream} · raftcast webcast`;
  const chat = new SharedObject(CHAT, {
    onUpdate: renderChat, onMessage: onChatMessage, onStatus: showStatus('chat-status', 'chat'),
  });
  const poll = new SharedObject(POLL, {
    onUpdate: renderPoll, onMessage: () => {}, onStatus: showStatus('poll-status', 'poll'),
  });
  startPlayer();
})();
