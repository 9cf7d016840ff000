/* Flashgate door scanner page (docs/scanning.md, "The scanner page").
 *
 * Online, every scan goes to POST /v1/scan. When the gateway cannot be reached the page switches
 * to offline by itself and answers from the manifest (GET /v1/scan/manifest): the code's Ed25519
 * signature (WebCrypto), the revocation list, the ticket's sealed seat and holder (HKDF + AES-GCM,
 * opened with the scanned code) and its own seen-set. Offline scans wait in IndexedDB and are
 * uploaded with POST /v1/scan/batch when the gateway answers again; the gateway's answers are
 * final and shown where they differ. The same rules as the terminal client (scanner_app).
 * No third-party code; the device token never leaves this page except in the Authorization header. */
(() => {
  'use strict';

  const TOKEN_KEY = 'flashgate.scanner.token';
  const TIMEOUT_MS = 2500;      // a door cannot wait: no answer in time means offline
  const TICK_MS = 2000;         // probe / upload interval
  const REFRESH_MS = 30000;     // manifest refresh (?since=version) while online
  const BATCH = 500;            // the contract's maximum per upload
  const CAMERA_REPEAT_MS = 3000; // a code out of view this long is read again when it comes back
  const SEAL = 'hkdf-sha256/aes-256-gcm/v1';
  const WORDS = { admitted: 'ADMIT', duplicate: 'DUPLICATE', invalid: 'INVALID', wrong_event: 'WRONG EVENT',
    void: 'VOID', exited: 'OUT', not_inside: 'NOT INSIDE', refused: 'REFUSED' };
  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();

  const state = {
    token: null, db: null, manifest: null, mode: 'starting', revoked: false, lastError: null,
    keys: new Map(), revokedSet: new Set(), tickets: new Map(),
    counts: { admitted: 0, duplicate: 0, refused: 0 }, waiting: 0,
    nextProbe: 0, nextRefresh: 0, nextSync: 0, busy: Promise.resolve(),
  };

  // ------------------------------------------------------------------ small helpers
  function nowIso() { return new Date().toISOString(); }
  function randomId() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  function hexToBytes(hex) {
    if (!/^(?:[0-9a-f]{2})*$/i.test(hex)) throw new Error('bad hex');
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }
  function fnv(text) {  // a short, stable name for the per-token database (not a secret)
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
    return h.toString(16).padStart(8, '0');
  }
  const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  function base32(text) {
    const out = new Uint8Array(Math.floor(text.length * 5 / 8));
    let bits = 0, value = 0, j = 0;
    for (const ch of text) {
      value = (value << 5) | B32.indexOf(ch);
      bits += 5;
      if (bits >= 8) { out[j++] = (value >>> (bits - 8)) & 0xff; bits -= 8; }
    }
    return out;
  }
  function base64url(text) {
    const s = text.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(s + '='.repeat((4 - s.length % 4) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }
  function place(t) { return t ? (t.seat || (t.type ? 'GA ' + t.type : null)) : null; }

  // ------------------------------------------------------------------ IndexedDB
  function req(r) { return new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); }); }
  function openDb(name) {
    return new Promise((ok, fail) => {
      const r = indexedDB.open(name, 1);
      r.onupgradeneeded = () => {
        const db = r.result;
        db.createObjectStore('meta');
        db.createObjectStore('seen');
        db.createObjectStore('queue', { keyPath: 'scan_id' });
        db.createObjectStore('tickets');  // serial -> sealed entry: a refresh writes only what changed
        db.createObjectStore('revoked');  // serial -> true
      };
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
  }
  function tx(store, mode, fn) {
    return new Promise((ok, fail) => {
      const t = state.db.transaction(store, mode);
      let result;
      Promise.resolve(fn(t.objectStore(store))).then((v) => { result = v; });
      t.oncomplete = () => ok(result);
      t.onerror = () => fail(t.error);
      t.onabort = () => fail(t.error || new Error('aborted'));
    });
  }
  const db = {
    get: (store, key) => tx(store, 'readonly', (s) => req(s.get(key))),
    put: (store, value, key) => tx(store, 'readwrite', (s) => { s.put(value, key); }),
    all: (store) => tx(store, 'readonly', (s) => req(s.getAll())),
  };
  function saveManifest(body, full) {
    return new Promise((ok, fail) => {
      const t = state.db.transaction(['meta', 'tickets', 'revoked'], 'readwrite');
      const tickets = t.objectStore('tickets'), revoked = t.objectStore('revoked');
      if (full) { tickets.clear(); revoked.clear(); }
      for (const [serial, sealed] of body.tickets || []) tickets.put(sealed, Number(serial));
      for (const serial of body.revoked || []) revoked.put(true, Number(serial));
      t.objectStore('meta').put({ ...state.manifest }, 'manifest');
      t.oncomplete = () => ok();
      t.onerror = () => fail(t.error);
      t.onabort = () => fail(t.error || new Error('aborted'));
    });
  }
  function loadManifest() {  // the stored manifest as one full answer, or null
    return new Promise((ok, fail) => {
      const t = state.db.transaction(['meta', 'tickets', 'revoked'], 'readonly');
      const head = t.objectStore('meta').get('manifest');
      const serials = t.objectStore('tickets').getAllKeys(), sealed = t.objectStore('tickets').getAll();
      const revoked = t.objectStore('revoked').getAllKeys();
      t.oncomplete = () => ok(head.result ? { ...head.result, full: true, revoked: revoked.result,
        tickets: serials.result.map((serial, i) => [serial, sealed.result[i]]) } : null);
      t.onerror = () => fail(t.error);
    });
  }
  async function pending() {
    const rows = await db.all('queue');
    return rows.filter((r) => !r.server_result).sort((a, b) => a.seq - b.seq);  // in the order scanned
  }

  // ------------------------------------------------------------------ HTTP
  class Unreachable extends Error {
    constructor(message, alive) { super(message); this.alive = !!alive; }
  }
  class Refused extends Error {
    constructor(code, message) { super(message); this.code = code; }
  }
  class BadRequest extends Error {}

  async function call(method, path, body) {
    const headers = { Accept: 'application/json', Authorization: 'Bearer ' + state.token,
      'X-Scanner-Queue': String(state.waiting) };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    init.signal = abort.signal;
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new Unreachable(abort.signal.aborted ? 'no answer in time' : 'network error');
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    if (resp.status >= 500) {  // a proxy's 502/504, or the gateway's own 503 (alive, Redis is not)
      throw new Unreachable('HTTP ' + resp.status, resp.status === 503 && data && data.error);
    }
    const err = (data && data.error) || {};
    if (resp.status === 401 || resp.status === 403) throw new Refused(err.code || 'refused', err.message || 'Refused.');
    if (!resp.ok || data === null) throw new BadRequest(err.message || 'HTTP ' + resp.status);
    return data;
  }

  // ------------------------------------------------------------------ manifest and crypto
  async function applyManifest(body, full) {
    if (body.seal && body.seal !== SEAL) throw new BadRequest('unknown seal ' + body.seal);
    const keys = !full && !body.keys ? state.keys : new Map();
    for (const k of body.keys || []) {
      const raw = hexToBytes(k.public_key);
      keys.set(Number(k.key_id), await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify']));
    }
    const tickets = full || !state.manifest ? new Map() : state.tickets;
    const revoked = full || !state.manifest ? new Set() : state.revokedSet;
    for (const [serial, sealed] of body.tickets || []) tickets.set(Number(serial), sealed);
    for (const serial of body.revoked || []) revoked.add(Number(serial));
    const prev = (!full && state.manifest) || {};
    state.manifest = { event_id: body.event_id, event_name: body.event_name || prev.event_name || '',
      gate: body.gate || prev.gate, version: body.version, keys: body.keys || prev.keys,
      reentry: body.reentry || prev.reentry || { ga: [], sections: [] } };
    state.keys = keys; state.tickets = tickets; state.revokedSet = revoked;
  }
  async function refresh(full) {
    const since = full || !state.manifest ? '' : '?since=' + encodeURIComponent(state.manifest.version);
    const before = state.manifest && state.manifest.version;
    const body = await call('GET', '/v1/scan/manifest' + since);
    const isFull = !since || body.full !== false || (state.manifest && body.event_id !== state.manifest.event_id);
    await applyManifest(body, isFull);
    if (isFull || body.version !== before) await saveManifest(body, isFull);
    state.nextRefresh = Date.now() + REFRESH_MS;
    showWhere();
  }

  async function verifyCode(text) {
    // docs/ticket-codes.md: 120 characters A-Z 2-7 -> 75 bytes; version 1; then the event; then the key.
    if (text.length !== 120 || !/^[A-Z2-7]+$/.test(text)) return { result: 'invalid', reason: 'malformed' };
    const raw = base32(text);
    if (raw[0] !== 1) return { result: 'invalid', reason: 'unknown_version' };
    const view = new DataView(raw.buffer);
    const keyId = view.getUint16(1), eventId = view.getUint32(3), serial = view.getUint32(7);
    if (eventId !== state.manifest.event_id) return { result: 'wrong_event', serial };
    const key = state.keys.get(keyId);
    if (!key) return { result: 'invalid', reason: 'unknown_key' };
    const message = new Uint8Array(8 + 11);
    message.set(enc.encode('FGTICKET'), 0);
    message.set(raw.subarray(0, 11), 8);
    const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, raw.subarray(11), message);
    return ok ? { result: 'ticket', serial } : { result: 'invalid', reason: 'bad_signature' };
  }

  async function openSealed(code, sealed) {
    // docs/scanning.md, "Sealed ticket data": HKDF-SHA256(code, salt, info) -> AES-256-GCM.
    const ikm = await crypto.subtle.importKey('raw', enc.encode(code), 'HKDF', false, ['deriveKey']);
    const key = await crypto.subtle.deriveKey(
      { name: 'HKDF', hash: 'SHA-256', salt: enc.encode('flashgate-seal-v1'), info: enc.encode('ticket') },
      ikm, { name: 'AES-GCM', length: 256 }, false, ['decrypt']);
    const raw = base64url(sealed);
    const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: raw.subarray(0, 12) }, key, raw.subarray(12));
    const data = JSON.parse(new TextDecoder().decode(plain));
    const s = (k) => (typeof data[k] === 'string' ? data[k] : null);
    return { seat: s('seat'), section: s('section'), type: s('type'), holder: s('holder') };
  }

  function allowsReentry(info) {
    const rules = state.manifest.reentry || {};
    if (!info) return false;
    if (info.type) return (rules.ga || []).includes(info.type);
    return !!info.section && (rules.sections || []).includes(info.section);
  }

  // ------------------------------------------------------------------ scanning
  async function scanOnline(code, direction) {
    const scanId = randomId();
    const body = { code, scan_id: scanId, scanned_at: nowIso() };
    if (direction !== 'in') body.direction = direction;
    let answer;
    try {
      answer = await call('POST', '/v1/scan', body);
    } catch (e) {
      if (e instanceof BadRequest) return { result: 'invalid', reason: e.message };
      throw e;
    }
    setMode(answer.degraded ? 'degraded' : 'online');
    const t = answer.ticket || {};
    if (t.serial != null && answer.inside != null && (t.event_id == null || t.event_id === state.manifest.event_id)) {
      const first = answer.first_scan || {};
      await db.put('seen', { inside: !!answer.inside, at: first.at || answer.scanned_at, gate: first.gate || answer.gate },
        state.manifest.event_id + ':' + t.serial);
    }
    return { result: answer.result, seat: place(t), holder: t.holder || null, serial: t.serial,
      first: answer.first_scan, reason: answer.reason };
  }

  async function scanOffline(code, direction) {
    const v = await verifyCode(code);
    if (v.result !== 'ticket') return { result: v.result, reason: v.reason, serial: v.serial };
    const serial = v.serial;
    const out = { serial };
    if (state.revokedSet.has(serial)) out.result = 'void';
    let info = null;
    const sealed = state.tickets.get(serial);
    if (!out.result && sealed) {
      try { info = await openSealed(code, sealed); } catch (e) { return { result: 'invalid', reason: 'not_issued', serial }; }
    }
    if (!out.result) {
      const key = state.manifest.event_id + ':' + serial;
      const seen = await db.get('seen', key);
      if (!sealed) out.reason = "not in this device's manifest yet";
      if (direction === 'out') out.result = seen && seen.inside ? 'exited' : 'not_inside';
      else if (!seen) out.result = 'admitted';
      else if (!seen.inside && allowsReentry(info)) { out.result = 'admitted'; out.reason = 're-entry'; }
      else { out.result = 'duplicate'; out.first = { at: seen.at, gate: seen.gate }; }
    }
    out.seat = place(info); out.holder = info ? info.holder : null;
    const at = nowIso();
    out.queued = true;
    // seq: high-resolution time of the scan, the upload order (two scans in one millisecond stay in order).
    await db.put('queue', { scan_id: randomId(), seq: performance.timeOrigin + performance.now(), code,
      scanned_at: at, direction, local_result: out.result, seat: out.seat, serial });
    const key = state.manifest.event_id + ':' + serial;
    if (out.result === 'admitted') await db.put('seen', { inside: true, at, gate: state.manifest.gate }, key);
    if (out.result === 'exited') await db.put('seen', { inside: false, at, gate: state.manifest.gate }, key);
    state.waiting = (await pending()).length;
    return out;
  }

  async function scan(text, direction) {
    const code = String(text).trim().toUpperCase();
    if (state.revoked) return { result: 'refused', reason: state.lastError };
    if (state.mode !== 'offline') {
      // The gateway learns this phone's offline admissions before it answers a new scan.
      if (syncing || (state.waiting && Date.now() >= state.nextSync)) await syncQuietly();
      if (state.mode !== 'offline') {
        try {
          return await scanOnline(code, direction);
        } catch (e) {
          if (e instanceof Refused) { refused(e); return { result: 'refused', reason: state.lastError }; }
          goOffline(e.message);
        }
      }
    }
    return scanOffline(code, direction);
  }

  // ------------------------------------------------------------------ online / offline
  function setMode(mode) {
    state.mode = mode;
    const el = $('mode');
    el.dataset.mode = mode;
    el.textContent = state.revoked ? 'REFUSED' : mode === 'offline' ? `OFFLINE · ${state.waiting} waiting` :
      mode === 'degraded' ? 'DEGRADED' : state.waiting ? `ONLINE · uploading ${state.waiting}` : 'ONLINE';
    $('count-waiting').textContent = String(state.waiting);
  }
  function goOffline(why) {
    state.lastError = why;
    state.nextProbe = Date.now() + TICK_MS;
    setMode('offline');
  }
  function refused(e) {
    state.revoked = true;
    state.lastError = `${e.message} (${e.code})`;
    setMode(state.mode);
  }

  let syncing = null;  // the upload in flight: a scan waits for it, a second one is not started
  function syncOnce() {
    if (!syncing) syncing = sync().finally(() => { syncing = null; });
    return syncing;
  }
  async function syncQuietly() {
    try {
      return await syncOnce();
    } catch (e) {
      state.nextSync = Date.now() + TICK_MS;
      if (e instanceof Refused) refused(e);
      else if (e instanceof Unreachable && !e.alive) goOffline(e.message);
      return [];
    }
  }

  async function sync() {
    const done = [];
    let size = BATCH;
    for (;;) {
      const rows = (await pending()).slice(0, size);
      if (!rows.length) break;
      const remaining = state.waiting - rows.length;
      let answer;
      try {
        answer = await call('POST', '/v1/scan/batch', { sent_at: nowIso(), queue_length: Math.max(0, remaining),
          scans: rows.map((r) => ({ scan_id: r.scan_id, code: r.code, scanned_at: r.scanned_at, direction: r.direction,
            local_result: r.local_result })) });
      } catch (e) {
        if (!(e instanceof BadRequest)) throw e;
        if (size > 1) { size = 1; continue; }  // one scan the gateway will not take must not hold back the others
        await db.put('queue', { ...rows[0], server_result: 'invalid', server: { error: e.message }, uploaded_at: nowIso() });
        moveCount(rows[0].local_result, 'invalid');
        done.push({ serial: rows[0].serial, seat: rows[0].seat, local: rows[0].local_result, server: 'invalid' });
        state.waiting = (await pending()).length;
        continue;
      }
      const results = answer.results || [];
      let settled = 0;
      for (let i = 0; i < rows.length; i++) {
        const res = results[i];
        if (!res || (res.scan_id && res.scan_id !== rows[i].scan_id)) continue;
        await db.put('queue', { ...rows[i], server_result: res.result, server: res, uploaded_at: nowIso() });
        moveCount(rows[i].local_result, res.result);
        done.push({ serial: rows[i].serial, seat: rows[i].seat, local: rows[i].local_result, server: res.result,
          first: res.first_scan, conflict: !!res.conflict });
        settled += 1;
      }
      state.waiting = (await pending()).length;
      if (!settled) { state.nextSync = Date.now() + TICK_MS; break; }
    }
    if (done.length) showSync(done);
    setMode(state.mode);
    return done;
  }

  let ticking = false;
  async function tick() {  // runs beside the scans: a slow probe never holds up the door
    if (ticking || state.revoked || !state.manifest) return;
    ticking = true;
    try { await tickOnce(); } finally { ticking = false; }
  }
  async function tickOnce() {
    const now = Date.now();
    if (state.mode === 'offline') {
      if (now < state.nextProbe) return;
      try {
        await refresh(false);
      } catch (e) {
        if (e instanceof Refused) { refused(e); return; }
        if (!(e instanceof Unreachable && e.alive)) { goOffline(e.message); return; }
      }
      setMode('online');
    } else if (now >= state.nextRefresh) {
      try {
        await refresh(false);
      } catch (e) {
        if (e instanceof Refused) { refused(e); return; }
        if (e instanceof Unreachable && !e.alive) { goOffline(e.message); return; }
        state.nextRefresh = now + TICK_MS;
      }
    }
    if (state.waiting && now >= state.nextSync) await syncQuietly();
  }

  function serially(fn) {  // one scan at a time: the seen-set check and the queue entry are one step
    const run = state.busy.then(fn, fn);
    state.busy = run.catch(() => {});
    return run;
  }

  // ------------------------------------------------------------------ screen and sound
  function countOf(result) {
    return result === 'admitted' ? 'admitted' : result === 'duplicate' ? 'duplicate' :
      ['invalid', 'wrong_event', 'void', 'refused'].includes(result) ? 'refused' : null;
  }
  function moveCount(from, to) {
    const a = countOf(from), b = countOf(to);
    if (a === b) return;
    if (a && state.counts[a] > 0) state.counts[a] -= 1;
    if (b) state.counts[b] += 1;
    showCounts();
  }
  function showCounts() {
    for (const k of ['admitted', 'duplicate', 'refused']) $('count-' + k).textContent = String(state.counts[k]);
    $('count-waiting').textContent = String(state.waiting);
  }
  function showWhere() {
    const m = state.manifest;
    $('where').textContent = m ? `${m.event_name || 'Event ' + m.event_id} · gate ${m.gate}` : '';
  }

  function show(out) {
    const box = $('answer');
    box.dataset.result = out.result;
    box.classList.remove('flash'); void box.offsetWidth; box.classList.add('flash');
    $('answer-word').textContent = WORDS[out.result] || String(out.result).toUpperCase();
    $('answer-seat').textContent = out.seat ? out.seat : '';
    $('answer-holder').textContent = out.holder || '';
    const notes = [];
    if (out.first) notes.push(`first scanned ${new Date(out.first.at).toLocaleTimeString()} at gate ${out.first.gate}`);
    if (out.reason) notes.push(out.reason);  // why refused; for an admission: re-entry, or not in the manifest yet
    if (out.queued) notes.push('checked on this phone (offline), queued for upload');
    $('answer-note').textContent = notes.join(' · ');
    const k = countOf(out.result);
    if (k) state.counts[k] += 1;
    showCounts();
    setMode(state.mode);
    beep(out.result);
  }

  function showSync(done) {
    const changed = done.filter((d) => d.local !== d.server);
    $('sync-report').hidden = false;
    $('sync-summary').textContent = `${done.length} offline scan(s) uploaded: ${done.length - changed.length} confirmed, ` +
      `${changed.length} changed by the gateway.`;
    const list = $('sync-changes');
    for (const d of changed) {
      const li = document.createElement('li');
      const where = d.first ? ` (first at gate ${d.first.gate})` : '';
      li.textContent = `Ticket #${d.serial}${d.seat ? ' ' + d.seat : ''}: ${WORDS[d.local] || d.local} here → ` +
        `${WORDS[d.server] || d.server}${where}`;
      list.prepend(li);
    }
    if (changed.length) beep('duplicate');
  }

  let audio = null;
  const PATTERNS = { admitted: [[880, 120]], exited: [[660, 120]], duplicate: [[440, 150], [440, 150]],
    not_inside: [[440, 150], [440, 150]], wrong_event: [[300, 400], [300, 400]] };
  function beep(result) {
    const pattern = PATTERNS[result] || [[220, 90], [220, 90], [220, 90]];
    if (navigator.vibrate) navigator.vibrate(pattern.flatMap(([, ms]) => [ms, 80]));
    try {
      audio = audio || new AudioContext();
      let t = audio.currentTime;
      for (const [freq, ms] of pattern) {
        const osc = audio.createOscillator(), gain = audio.createGain();
        osc.frequency.value = freq; gain.gain.value = 0.2;
        osc.connect(gain).connect(audio.destination);
        osc.start(t); osc.stop(t + ms / 1000);
        t += (ms + 80) / 1000;
      }
    } catch (e) { /* no audio: colours and words still tell */ }
  }

  // ------------------------------------------------------------------ camera (where the browser has BarcodeDetector)
  function setupCamera() {
    if (!('BarcodeDetector' in window) || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      $('camera-note').hidden = false;
      $('camera-note').textContent = 'This browser has no built-in barcode reader: type the code, or use a scanner ' +
        'that types it (keyboard wedge).';
      return;
    }
    $('camera').hidden = false;
    let last = '', lastAt = 0;
    $('camera-btn').addEventListener('click', async () => {
      try {
        const detector = new window.BarcodeDetector({ formats: ['qr_code'] });
        const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' } });
        const video = $('video');
        video.srcObject = stream;
        await video.play();
        $('camera-btn').hidden = true;
        const loop = async () => {
          try {
            const found = await detector.detect(video);
            const value = found.length ? String(found[0].rawValue).trim().toUpperCase() : '';
            if (value) {
              // A code held in front of the camera is read once; out of view for 3 s, it is read again.
              const fresh = value !== last || Date.now() - lastAt > CAMERA_REPEAT_MS;
              last = value; lastAt = Date.now();
              if (fresh) await handle(value);
            }
          } catch (e) { /* a frame that could not be read */ }
          setTimeout(loop, 200);
        };
        loop();
      } catch (e) {
        $('camera-note').hidden = false;
        $('camera-note').textContent = 'The camera could not start (' + e.message + '). Type the code instead.';
      }
    });
  }

  // ------------------------------------------------------------------ start
  async function handle(text) {
    if (!text.trim()) return;
    const direction = $('direction-out').checked ? 'out' : 'in';
    const out = await serially(() => scan(text, direction));
    show(out);
  }

  async function start(token) {
    state.token = token;
    state.db = await openDb('flashgate-scanner-' + fnv(location.host + '\n' + token));
    const stored = await loadManifest();
    if (stored) await applyManifest(stored, true);
    state.waiting = (await pending()).length;
    try {
      await refresh(true);
      setMode('online');
    } catch (e) {
      if (e instanceof Refused || e instanceof BadRequest || !state.manifest) {
        $('setup-error').textContent = e instanceof Unreachable
          ? 'The gateway cannot be reached and this phone has no manifest yet. Try again with a network.'
          : e.message + ' Check the token and try again.';
        $('setup-error').hidden = false;
        $('setup').hidden = false; $('scanner').hidden = true;
        if (e instanceof Refused) localStorage.removeItem(TOKEN_KEY);
        setMode('offline');
        return;
      }
      goOffline(e.message);
    }
    showWhere(); showCounts();
    $('setup').hidden = true; $('scanner').hidden = false;
    $('code-input').focus();
    if (state.started) return;
    state.started = true;
    setInterval(tick, TICK_MS);
    window.addEventListener('offline', () => goOffline('the phone has no network'));
    window.addEventListener('online', () => { state.nextProbe = 0; tick(); });
  }

  function keepPageOffline() {
    // A service worker keeps this page loadable without a network (secure contexts only).
    if ('serviceWorker' in navigator) {
      navigator.serviceWorker.register('/scan/sw.js', { scope: '/scan' }).catch(() => { /* online use still works */ });
    }
  }

  function boot() {
    keepPageOffline();
    const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
    if (fromHash) {
      localStorage.setItem(TOKEN_KEY, fromHash);
      history.replaceState(null, '', location.pathname);  // the token does not stay in the address bar
    }
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('token-input').value.trim();
      if (!token) return;
      localStorage.setItem(TOKEN_KEY, token);
      $('setup-error').hidden = true;
      start(token);
    });
    $('manual-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('code-input');
      const text = input.value;
      input.value = '';
      input.focus();
      handle(text);
    });
    $('forget-btn').addEventListener('click', () => { localStorage.removeItem(TOKEN_KEY); location.reload(); });
    setupCamera();
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) start(token);
    else { $('setup').hidden = false; setMode('offline'); $('mode').textContent = 'NOT SET UP'; }
  }

  boot();
})();
