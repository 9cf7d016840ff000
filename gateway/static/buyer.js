/* Flashgate buyer page: waiting room -> seats or quantity -> hold -> pay -> tickets.
 * Plain JavaScript against the public buyer API (docs/buyer-demo.md). Identity, queue
 * place, hold and last order are kept in localStorage, so a reload resumes where it was. */
(() => {
  'use strict';

  const EVENT_ID = Number(location.pathname.split('/').filter(Boolean)[1]);
  const POLL_MS = 1000;            // availability refresh while choosing
  const HIDDEN_POLL_MS = 5000;     // ... while the tab is in the background
  const MAX_MAP_SEATS = 5000;      // bigger maps: best available per section only
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- storage
  const store = {
    get(key) { try { return JSON.parse(localStorage.getItem(key)); } catch (e) { return null; } },
    set(key, value) {
      try {
        if (value == null) localStorage.removeItem(key); else localStorage.setItem(key, JSON.stringify(value));
      } catch (e) { /* private mode: the page still works, a reload just starts over */ }
    },
  };
  const KEYS = {
    buyer: 'flashgate.buyer',
    queue: `flashgate.event.${EVENT_ID}.queue`,
    admission: `flashgate.event.${EVENT_ID}.admission`,
    proof: `flashgate.event.${EVENT_ID}.proof`,
    hold: `flashgate.event.${EVENT_ID}.hold`,
    order: `flashgate.event.${EVENT_ID}.order`,
    email: 'flashgate.email',
  };

  // ---------------------------------------------------------------- HTTP
  class ApiError extends Error {
    constructor(status, body, headers) {
      const err = (body && body.error) || {};
      super(err.message || `The server answered ${status}.`);
      this.status = status;
      this.code = err.code || (status ? 'http_' + status : 'network');
      this.details = err.details || {};
      const retry = headers ? Number(headers.get('Retry-After')) : NaN;
      this.retryAfter = Number.isFinite(retry) && retry > 0 ? retry : (this.details.retry_after_s || null);
    }
  }

  async function api(method, path, opts = {}) {
    const headers = { Accept: 'application/json', ...(opts.headers || {}) };
    if (opts.token) headers.Authorization = 'Bearer ' + opts.token;
    if (opts.admission) headers['X-Admission-Token'] = opts.admission;
    if (opts.proof) headers['X-Proof-Of-Work'] = opts.proof;
    const init = { method, headers, cache: 'no-store' };
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: { code: 'network', message: 'Could not reach the server. Check your connection and try again.' } });
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { /* empty or not JSON */ }
    if (!resp.ok) throw new ApiError(resp.status, data, resp.headers);
    return data;
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);  // also available on plain http (randomUUID is not)
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- state
  const state = {
    phase: 'loading',
    buyer: null,
    event: null,
    money: null,
    seatLabels: [],     // seat index -> label
    seatPrice: [],      // seat index -> price (minor units)
    seatButtons: [],    // seat index -> button (when the map is drawn)
    seatStates: '',     // availability string, one char per seat
    version: null,
    selected: new Set(),
    gaQty: {},
    gaAvailable: {},
    hold: null,
    attempt: null,      // {key, fp}: one checkout attempt, kept for its retries
    pollTimer: null,
    queueTimer: null,
    tickTimer: null,
    payBlockedUntil: 0,
    queueStart: null,
    announced: null,
  };

  // ---------------------------------------------------------------- UI helpers
  const PHASES = ['loading', 'queue', 'choose', 'hold', 'tickets'];

  function show(phase) {
    state.phase = phase;
    for (const p of PHASES) $('step-' + p).hidden = p !== phase;
    const order = ['queue', 'choose', 'hold', 'tickets'];
    const current = order.indexOf(phase);
    for (const li of $('steps').children) {
      const i = order.indexOf(li.dataset.step);
      li.classList.toggle('done', current > i);
      if (i === current) li.setAttribute('aria-current', 'step'); else li.removeAttribute('aria-current');
    }
    if (phase !== 'choose') stopPolling();
    if (phase !== 'queue') clearTimeout(state.queueTimer);
    if (phase !== 'hold') clearInterval(state.tickTimer);
  }

  function notify(message, kind = 'error') {
    $('notice-text').textContent = message;
    $('notice').classList.toggle('info', kind === 'info');
    $('notice').hidden = false;
  }

  function clearNotice() { $('notice').hidden = true; }

  function announce(text) {
    const el = $('sr-status');
    el.textContent = '';
    setTimeout(() => { el.textContent = text; }, 30);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'for') node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }

  function money(minor) {
    const fmt = state.money;
    if (!fmt) return String(minor);
    const digits = fmt.resolvedOptions().maximumFractionDigits;
    return fmt.format(minor / 10 ** digits);
  }

  function setBusy(button, busy, label) {
    button.disabled = busy;
    if (label) button.textContent = label;
    button.setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  // ---------------------------------------------------------------- identity
  async function ensureBuyer(force = false) {
    let buyer = store.get(KEYS.buyer);
    const fresh = buyer && buyer.buyer_token && (!buyer.expires_at || buyer.expires_at * 1000 > Date.now() + 60000);
    if (force || !fresh) {
      for (let attempt = 0; ; attempt++) {
        try {
          buyer = await api('POST', '/v1/buyer-token');
          break;
        } catch (e) {  // 429: many buyers share this network (Sybil limits); wait as told, a few times
          if (e.status !== 429 || attempt >= 5) throw e;
          $('who').textContent = `busy network, retrying in ${e.retryAfter || 2} s…`;
          await new Promise((resolve) => setTimeout(resolve, (e.retryAfter || 2) * 1000));
        }
      }
      store.set(KEYS.buyer, buyer);
    }
    state.buyer = buyer;
    $('who').textContent = buyer.buyer_id;
    return buyer;
  }

  function admissionToken() {
    const a = store.get(KEYS.admission);
    if (!a || !a.token) return null;
    if (a.expires_at && a.expires_at * 1000 < Date.now() + 5000) { store.set(KEYS.admission, null); return null; }
    return a.token;
  }

  // ---------------------------------------------------------------- event
  function renderEvent(ev) {
    document.title = `${ev.name} · Tickets`;
    $('event-name').textContent = ev.name;
    const parts = [];
    if (ev.venue) parts.push(ev.venue);
    if (ev.starts_at) {
      const when = new Date(ev.starts_at);
      if (!Number.isNaN(when.getTime())) {
        parts.push(new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' }).format(when));
      }
    }
    $('event-meta').textContent = parts.join(' · ');
    $('step-label-queue').hidden = !ev.queue.enabled;
    try {
      state.money = new Intl.NumberFormat(undefined, { style: 'currency', currency: ev.currency });
    } catch (e) {
      state.money = new Intl.NumberFormat(undefined, { style: 'currency', currency: 'EUR' });
    }
    state.seatLabels = [];
    state.seatPrice = [];
    for (const section of ev.sections) {
      for (const row of section.rows) {
        row.seats.forEach((seat, k) => {
          state.seatLabels[row.first_index + k] = `${section.name}-${row.label}-${seat}`;
          state.seatPrice[row.first_index + k] = row.price_minor != null ? row.price_minor : row.seat_prices[k];
        });
      }
    }
  }

  // ---------------------------------------------------------------- waiting room
  async function enterQueue() {
    show('queue');
    $('queue-position').textContent = '…';
    $('queue-eta').textContent = '…';
    const saved = store.get(KEYS.queue);
    try {
      if (saved && saved.token) {
        await pollQueue();
        return;
      }
      const body = await joinQueue();
      store.set(KEYS.queue, { token: body.queue_token });
      handleQueue(body);
    } catch (e) {
      queueError(e, true);
    }
  }

  // A waiting room may ask for a proof of work first (428 proof_of_work_required, docs/waiting-room.md
  // "Sybil protections"): find a nonce whose SHA-256 with the challenge starts with enough zero bits,
  // with WebCrypto, and join again. The proof is kept, so a reload rejoins without solving again.
  async function joinQueue() {
    const saved = store.get(KEYS.proof);
    const proof = saved && saved.buyer === state.buyer.buyer_id && saved.expires_at * 1000 > Date.now()
      ? saved.proof : null;
    try {
      return await api('POST', `/v1/events/${EVENT_ID}/queue`, { token: state.buyer.buyer_token, proof });
    } catch (e) {
      if (e.code !== 'proof_of_work_required') throw e;
      const d = e.details;
      $('queue-note').textContent = 'Checking that you are a person, not a script: this takes a few seconds…';
      performance.mark('flashgate-pow-start');
      const solved = await solveProof(d.challenge, d.difficulty_bits);
      performance.measure('flashgate-proof-of-work', 'flashgate-pow-start');  // bench/bench_pow.py reads it
      store.set(KEYS.proof, { buyer: state.buyer.buyer_id, proof: solved, expires_at: d.expires_at });
      $('queue-note').textContent = 'Keep this page open: you will move on by yourself when it is your turn.';
      return api('POST', `/v1/events/${EVENT_ID}/queue`, { token: state.buyer.buyer_token, proof: solved });
    }
  }

  function zeroBits(bytes) {
    let n = 0;
    for (const b of bytes) {
      if (b !== 0) return n + Math.clz32(b) - 24;
      n += 8;
    }
    return n;
  }

  async function solveProof(challenge, bits) {
    if (!(window.crypto && crypto.subtle)) {
      throw new ApiError(0, { error: { code: 'insecure_page', message: 'This waiting room needs the page over '
        + 'https (a secure connection) to join.' } });
    }
    const encoder = new TextEncoder();
    const BATCH = 256;  // digests in flight at once: WebCrypto answers each through a promise
    for (let base = 0; ; base += BATCH) {
      const proofs = [];
      for (let i = 0; i < BATCH; i++) proofs.push(`${challenge}:${base + i}`);
      const digests = await Promise.all(proofs.map((p) => crypto.subtle.digest('SHA-256', encoder.encode(p))));
      for (let i = 0; i < BATCH; i++) {
        if (zeroBits(new Uint8Array(digests[i])) >= bits) return proofs[i];
      }
    }
  }

  async function pollQueue() {
    const saved = store.get(KEYS.queue);
    if (!saved) { enterQueue(); return; }
    try {
      // `seen`: the position shown last; whichever gateway worker answers never shows more.
      const seen = state.lastPosition == null ? '' : `?seen=${state.lastPosition}`;
      handleQueue(await api('GET', `/v1/events/${EVENT_ID}/queue${seen}`, { token: saved.token }));
    } catch (e) {
      queueError(e, false);
    }
  }

  function queueError(e, joining) {
    if (state.phase !== 'queue') return;
    if (e.code === 'invalid_state' || (e.code === 'not_on_sale' && joining && state.event.status === 'on_sale'
        && !state.event.queue.enabled)) {
      state.event.queue.enabled = false;  // no waiting room (any more): straight to the seats
      enterChoose();
      return;
    }
    if (['token_expired', 'invalid_token', 'wrong_event', 'forbidden'].includes(e.code) && !joining) {
      store.set(KEYS.queue, null);
      enterQueue();
      return;
    }
    if (e.code === 'sold_out') {
      $('queue-title').textContent = 'Sold out';
      $('queue-note').textContent = e.message;
      return;
    }
    const wait = e.retryAfter || 3;
    if (e.status === 429 || e.status >= 500 || e.status === 0) {
      $('queue-note').textContent = `${e.message} Trying again in ${wait} s.`;
    } else {
      notify(e.message);
    }
    clearTimeout(state.queueTimer);
    state.queueTimer = setTimeout(joining ? enterQueue : pollQueue, wait * 1000);
  }

  function formatEta(s) {
    if (s == null) return '—';
    if (s < 60) return 'under a minute';
    const m = Math.round(s / 60);
    return m < 60 ? `about ${m} min` : `about ${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function handleQueue(q) {
    if (state.phase !== 'queue') return;
    clearTimeout(state.queueTimer);
    const next = Math.min(5, Math.max(1, q.poll_after_s || 2)) * 1000;
    switch (q.status) {
      case 'admitted':
        store.set(KEYS.admission, { token: q.admission_token, expires_at: q.expires_at });
        $('queue-position').textContent = '0';
        announce('It is your turn. You can choose your tickets now.');
        notify('It is your turn! Choose your tickets now.', 'info');
        enterChoose();
        return;
      case 'waiting': {
        state.lastPosition = q.position;
        $('queue-title').textContent = 'You are in the waiting room';
        $('queue-position').textContent = q.position.toLocaleString();
        $('queue-eta').textContent = q.paused ? 'paused' : formatEta(q.eta_s);
        if (state.queueStart == null || q.position > state.queueStart) state.queueStart = q.position;
        const pct = state.queueStart > 1 ? Math.round(100 * (1 - (q.position - 1) / state.queueStart)) : 50;
        $('queue-bar').style.width = pct + '%';
        $('queue-progress').setAttribute('aria-valuenow', String(pct));
        $('queue-note').textContent = q.paused
          ? 'The organiser has paused admission for a moment. Keep this page open; you keep your place.'
          : 'Keep this page open: you will move on by yourself when it is your turn. Reloading keeps your place.';
        break;
      }
      case 'prequeue':
        $('queue-title').textContent = 'The sale has not started yet';
        $('queue-position').textContent = '—';
        $('queue-eta').textContent = 'at opening';
        $('queue-note').textContent = 'Everyone who arrives before the sale opens gets a random place in line when '
          + 'it opens, so there is no need to rush. Keep this page open.';
        break;
      case 'sold_out':
        $('queue-title').textContent = 'Sold out';
        $('queue-position').textContent = '—';
        $('queue-eta').textContent = '—';
        $('queue-note').textContent = 'Every ticket has been sold. Sorry!';
        return;
      case 'expired':
        store.set(KEYS.queue, null);
        store.set(KEYS.admission, null);
        notify((q.message || 'Your place expired.') + ' You have been put back in line.', 'info');
        state.queueTimer = setTimeout(enterQueue, 500);
        return;
      default:
        break;
    }
    state.queueTimer = setTimeout(pollQueue, next);
  }

  // ---------------------------------------------------------------- choosing
  function needsQueue() {
    return state.event.queue.enabled && !admissionToken();
  }

  function enterChoose() {
    if (needsQueue()) { enterQueue(); return; }
    show('choose');
    if (!$('seatmap').dataset.drawn) drawChoice();
    updateSelection();
    startPolling();
  }

  function drawChoice() {
    const ev = state.event;
    $('seatmap').dataset.drawn = '1';
    const hasSeats = ev.sections.length > 0;
    $('seating').hidden = !hasSeats;
    if (hasSeats) {
      const tiers = ev.prices.map((p) => p.price_minor);
      const legend = $('legend');
      legend.replaceChildren();
      tiers.slice(0, 4).forEach((price, t) => {
        legend.append(el('li', {}, el('span', { class: `swatch s-t${t}`, 'aria-hidden': 'true' }), money(price)));
      });
      legend.append(el('li', {}, el('span', { class: 'swatch s-selected', 'aria-hidden': 'true' }), 'Your choice'),
        el('li', {}, el('span', { class: 'swatch s-held', 'aria-hidden': 'true' }), 'Held'),
        el('li', {}, el('span', { class: 'swatch s-sold', 'aria-hidden': 'true' }), 'Sold'));
      const drawSeats = ev.n_seats <= MAX_MAP_SEATS;
      const map = $('seatmap');
      map.replaceChildren();
      state.seatButtons = [];
      for (const section of ev.sections) {
        const count = el('small', { 'data-section-count': section.name });
        const box = el('section', { class: 'section', 'aria-label': `Section ${section.name}` },
          el('h3', {}, `Section ${section.name}`, count));
        if (drawSeats) {
          const rows = el('div', { class: 'rows' });
          for (const row of section.rows) {
            const line = el('div', { class: 'row', role: 'group', 'aria-label': `Section ${section.name}, row ${row.label}` },
              el('span', { class: 'row-label', 'aria-hidden': 'true', text: row.label }));
            row.seats.forEach((seat, k) => {
              const i = row.first_index + k;
              const price = state.seatPrice[i];
              const button = el('button', {
                type: 'button', class: 'seat', text: seat, 'data-i': String(i), 'data-label': state.seatLabels[i],
                'data-tier': String(Math.min(3, Math.max(0, tiers.indexOf(price)))), 'aria-pressed': 'false',
                'aria-label': `Seat ${state.seatLabels[i]}, ${money(price)}`,
              });
              state.seatButtons[i] = button;
              line.append(button);
            });
            rows.append(line);
          }
          box.append(rows);
        }
        map.append(box);
      }
      const select = $('best-section');
      select.replaceChildren(...ev.sections.map((s) => el('option', { value: s.name, text: `Section ${s.name}` })));
      const max = Math.min(ev.per_buyer_limit || 8, ev.max_per_hold || 50);
      $('best-count').max = String(max);
      $('best-count').value = String(Math.min(2, max));
    }
    $('ga-panel').hidden = ev.ga.length === 0;
    const list = $('ga-list');
    list.replaceChildren();
    for (const t of ev.ga) {
      state.gaQty[t.code] = 0;
      const out = el('output', { 'data-ga-qty': t.code, 'aria-live': 'polite', text: '0' });
      const minus = el('button', { type: 'button', text: '−', 'data-ga-step': t.code, 'data-delta': '-1',
        'aria-label': `One ticket fewer: ${t.name}` });
      const plus = el('button', { type: 'button', text: '+', 'data-ga-step': t.code, 'data-delta': '1',
        'aria-label': `One ticket more: ${t.name}` });
      const hold = el('button', { type: 'button', class: 'primary', 'data-ga-hold': t.code, text: 'Hold tickets', disabled: true });
      list.append(el('li', { class: 'ga-item' },
        el('div', {}, el('span', { class: 'ga-name', text: t.name }), ' ',
          el('span', { class: 'muted', text: money(t.price_minor) }),
          el('div', { class: 'muted', 'data-ga-left': t.code, text: '' })),
        el('div', { class: 'stepper', role: 'group', 'aria-label': `Quantity of ${t.name}` }, minus, out, plus),
        hold));
    }
  }

  function limit() {
    return Math.min(state.event.per_buyer_limit || 8, state.event.max_per_hold || 50);
  }

  function toggleSeat(i) {
    if (state.seatStates[i] && state.seatStates[i] !== '0') return;
    if (state.selected.has(i)) state.selected.delete(i);
    else if (state.selected.size >= limit()) {
      notify(`You can choose at most ${limit()} seats.`);
      return;
    } else state.selected.add(i);
    clearNotice();
    updateSelection();
  }

  function updateSelection() {
    for (const [i, b] of state.seatButtons.entries()) {
      if (b) b.setAttribute('aria-pressed', state.selected.has(i) ? 'true' : 'false');
    }
    const n = state.selected.size;
    $('selbar').hidden = n === 0;
    if (n) {
      const labels = [...state.selected].sort((a, b) => a - b).map((i) => state.seatLabels[i]);
      const total = [...state.selected].reduce((sum, i) => sum + state.seatPrice[i], 0);
      $('sel-summary').textContent = `${n} seat${n > 1 ? 's' : ''} · ${money(total)} — ${labels.join(', ')}`;
      $('hold-btn').textContent = `Hold ${n} seat${n > 1 ? 's' : ''}`;
    }
    for (const t of state.event.ga) {
      const q = state.gaQty[t.code] || 0;
      document.querySelector(`[data-ga-qty="${t.code}"]`).textContent = String(q);
      const hold = document.querySelector(`[data-ga-hold="${t.code}"]`);
      hold.disabled = q < 1 || !onSale();
      hold.textContent = q ? `Hold ${q} × ${t.name} · ${money(q * t.price_minor)}` : 'Choose a quantity';
    }
    $('hold-btn').disabled = !onSale();
    $('best-btn').disabled = !onSale();
  }

  function onSale() {
    return state.event.status === 'on_sale';
  }

  function stepGa(code, delta) {
    const left = state.gaAvailable[code];
    let q = (state.gaQty[code] || 0) + delta;
    q = Math.max(0, Math.min(q, limit(), left == null ? Infinity : left));
    state.gaQty[code] = q;
    updateSelection();
  }

  // ---------------------------------------------------------------- availability
  function startPolling() {
    stopPolling();
    pollAvailability();
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function pollAvailability() {
    const params = [];
    if (state.version != null) params.push('since=' + state.version);
    if (!state.event.sections.length || state.event.n_seats > MAX_MAP_SEATS) params.push('seats=0');
    try {
      const a = await api('GET', `/v1/events/${EVENT_ID}/availability${params.length ? '?' + params.join('&') : ''}`);
      if (!a.unchanged) applyAvailability(a);
    } catch (e) {
      $('sale-status').textContent = 'Live availability is paused (connection problem); retrying…';
    }
    if (state.phase === 'choose') {
      state.pollTimer = setTimeout(pollAvailability, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    }
  }

  function applyAvailability(a) {
    // Another worker may answer from a snapshot a moment older: never step back.
    if (state.version != null && a.version < state.version) return;
    state.version = a.version;
    state.event.status = a.status;
    const status = $('sale-status');
    const texts = { on_sale: 'On sale now. Tap seats to choose them.', paused: 'Sales are paused for a moment.',
      closed: 'Sales for this event are closed.', draft: 'Sales have not started yet.' };
    status.textContent = (texts[a.status] || a.status) + (a.stale ? ' (availability may be a few seconds old)' : '');
    status.classList.toggle('off', a.status !== 'on_sale');
    for (const s of a.sections || []) {
      const count = document.querySelector(`[data-section-count="${CSS.escape(s.name)}"]`);
      if (count) count.textContent = s.free ? `${s.free.toLocaleString()} free` : 'sold out';
    }
    for (const g of a.ga || []) {
      state.gaAvailable[g.type] = g.available;
      const left = document.querySelector(`[data-ga-left="${CSS.escape(g.type)}"]`);
      if (left) left.textContent = g.available ? `${g.available.toLocaleString()} left` : 'Sold out';
      if ((state.gaQty[g.type] || 0) > g.available) state.gaQty[g.type] = g.available;
    }
    if (typeof a.seats === 'string') {
      const old = state.seatStates;
      const lost = [];
      for (let i = 0; i < a.seats.length; i++) {
        const c = a.seats[i];
        if (c === old[i]) continue;
        const b = state.seatButtons[i];
        if (b) {
          b.classList.toggle('held', c === '1');
          b.classList.toggle('sold', c === '2');
          b.disabled = c !== '0';
          b.setAttribute('aria-label', `Seat ${state.seatLabels[i]}, ` + (c === '0' ? money(state.seatPrice[i]) : c === '1' ? 'held' : 'sold'));
        }
        if (c !== '0' && state.selected.has(i)) { state.selected.delete(i); lost.push(state.seatLabels[i]); }
      }
      state.seatStates = a.seats;
      if (lost.length) notify(`Just taken by someone else: ${lost.join(', ')}.`);
    }
    updateSelection();
  }

  function markTaken(labels) {
    const index = new Map(state.seatLabels.map((l, i) => [l, i]));
    const chars = state.seatStates.split('');
    for (const label of labels) {
      const i = index.get(label);
      if (i == null) continue;
      state.selected.delete(i);
      chars[i] = '1';
      const b = state.seatButtons[i];
      if (b) { b.classList.add('held'); b.disabled = true; }
    }
    state.seatStates = chars.join('');
    updateSelection();
  }

  // ---------------------------------------------------------------- hold
  async function createHold(body, button) {
    clearNotice();
    const label = button.textContent;
    setBusy(button, true, 'Holding…');
    const sent = Date.now();
    try {
      const h = await api('POST', `/v1/events/${EVENT_ID}/holds`,
        { body, token: state.buyer.buyer_token, admission: admissionToken() });
      const received = Date.now();
      // The server's clock, from the expiry it set (now + hold TTL); only corrected when clearly off.
      let skew = 0;
      if (state.event.hold_ttl_s) {
        const est = h.expires_at_ms - state.event.hold_ttl_s * 1000 - (sent + received) / 2;
        if (Math.abs(est) > 1500) skew = est;
      }
      state.hold = { ...h, skew };
      state.attempt = null;
      store.set(KEYS.hold, { hold: state.hold, attempt: null });
      state.selected.clear();
      for (const k of Object.keys(state.gaQty)) state.gaQty[k] = 0;
      enterHold();
    } catch (e) {
      holdError(e);
    } finally {
      setBusy(button, false, label);
      if (state.phase === 'choose') updateSelection();
    }
  }

  function holdError(e) {
    if (e.code === 'seat_unavailable') {
      const seats = (e.details && e.details.seats) || [];
      markTaken(seats);
      notify(seats.length ? `Sorry, just taken: ${seats.join(', ')}. Please choose other seats.` : e.message);
    } else if (e.code === 'admission_required' || (e.code === 'wrong_event' || e.code === 'forbidden')) {
      store.set(KEYS.admission, null);
      state.event.queue.enabled = true;
      notify(e.code === 'admission_required' ? 'This sale has a waiting room; you have been placed in line.' : e.message, 'info');
      enterQueue();
    } else if (['invalid_token', 'token_expired', 'unauthorized'].includes(e.code)) {
      ensureBuyer(true).then(() => notify('Your session was renewed; please try again.', 'info'));
    } else if (e.retryAfter) {
      notify(`${e.message} Try again in ${e.retryAfter} s.`);
    } else {
      notify(e.message);
    }
  }

  function holdItems(h) {
    const items = [];
    const index = new Map(state.seatLabels.map((l, i) => [l, i]));
    for (const label of h.seats || []) {
      items.push([`Seat ${label}`, money(state.seatPrice[index.get(label)] || 0)]);
    }
    for (const [code, n] of Object.entries(h.ga || {})) {
      const t = state.event.ga.find((g) => g.code === code);
      items.push([`${n} × ${t ? t.name : code}`, money(n * (t ? t.price_minor : 0))]);
    }
    return items;
  }

  function enterHold() {
    const h = state.hold;
    show('hold');
    $('hold-items').replaceChildren(...holdItems(h).map(([what, price]) =>
      el('li', {}, el('span', { text: what }), el('span', { text: price }))));
    $('hold-total').textContent = money(h.total_minor);
    $('pay-btn').textContent = `Pay ${money(h.total_minor)}`;
    $('pay-btn').disabled = false;
    const email = store.get(KEYS.email);
    if (email && !$('email').value) $('email').value = email;
    state.announced = null;
    tick();
    clearInterval(state.tickTimer);
    state.tickTimer = setInterval(tick, 250);
    announce(`Held: ${holdItems(h).map((x) => x[0]).join(', ')}. You have ${Math.round(remaining() / 60000)} minutes to pay.`);
  }

  function remaining() {
    return state.hold ? state.hold.expires_at_ms - (Date.now() + (state.hold.skew || 0)) : 0;
  }

  function tick() {
    const left = remaining();
    if (left <= 0) {
      holdGone('Your hold expired and the tickets went back on sale. Please choose again.');
      return;
    }
    const s = Math.ceil(left / 1000);
    $('countdown').textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
    document.querySelector('.timer-box').classList.toggle('urgent', s <= 60);
    // Screen readers hear milestones, not every second.
    const mark = s > 120 ? `${Math.ceil(s / 60)} minutes` : s > 60 ? '2 minutes' : s > 30 ? '1 minute' : s > 10 ? '30 seconds' : '10 seconds';
    if (state.announced !== null && state.announced !== mark) announce(`${mark} left to pay.`);
    state.announced = mark;
    const wait = Math.ceil((state.payBlockedUntil - Date.now()) / 1000);
    if (state.payBlockedUntil && wait <= 0) {
      state.payBlockedUntil = 0;
      $('pay-btn').disabled = false;
      notify('Payments may be back: you can try again now.', 'info');
    } else if (wait > 0) {
      $('notice-text').textContent = `Payments are unavailable right now. Try again in ${wait} s; your tickets stay held.`;
    }
  }

  function holdGone(message) {
    clearInterval(state.tickTimer);
    state.hold = null;
    state.attempt = null;
    state.payBlockedUntil = 0;
    store.set(KEYS.hold, null);
    notify(message);
    state.version = null;  // full refresh: our released seats are free again
    enterChoose();
  }

  async function releaseHold() {
    const h = state.hold;
    if (!h) return;
    const button = $('release-btn');
    setBusy(button, true);
    try {
      await api('DELETE', `/v1/holds/${encodeURIComponent(h.hold_id)}`, { token: state.buyer.buyer_token });
      holdGone('Released. The tickets are back on sale.');
      $('notice').classList.add('info');
    } catch (e) {
      if (e.status === 404 || e.code === 'hold_expired') holdGone('This hold had already ended.');
      else notify(e.message);
    } finally {
      setBusy(button, false);
    }
  }

  // ---------------------------------------------------------------- checkout
  async function pay(event) {
    event.preventDefault();
    const h = state.hold;
    if (!h) return;
    const email = $('email').value.trim();
    if (!/^[^\s@]+@[^\s@]+$/.test(email)) {
      notify('Please enter the e-mail address your tickets should go to.');
      $('email').focus();
      return;
    }
    store.set(KEYS.email, email);
    const method = document.querySelector('input[name="method"]:checked').value;
    const body = { email, payment_method: method };
    const fp = JSON.stringify(body);
    // One Idempotency-Key per attempt: a retry of the same attempt (network error, 503) sends the same key
    // and can never pay twice; a new attempt (after a decline, or with other details) gets a new one.
    if (!state.attempt || state.attempt.fp !== fp) state.attempt = { key: randomKey(), fp };
    store.set(KEYS.hold, { hold: h, attempt: state.attempt });
    clearNotice();
    const button = $('pay-btn');
    const label = button.textContent;
    setBusy(button, true, 'Paying…');
    let blocked = false;
    try {
      const order = await api('POST', `/v1/holds/${encodeURIComponent(h.hold_id)}/checkout`, {
        body, token: state.buyer.buyer_token, admission: admissionToken(),
        headers: { 'Idempotency-Key': state.attempt.key },
      });
      store.set(KEYS.hold, null);
      state.hold = null;
      state.attempt = null;
      const saved = { order_id: order.order_id, order_token: order.order_token, total_minor: order.total_minor,
        currency: order.currency, tickets: order.tickets };
      store.set(KEYS.order, saved);
      enterTickets(saved);
      return;
    } catch (e) {
      if (e.code === 'payment_declined') {
        state.attempt = null;
        notify(`${e.message} Your tickets are still held — choose another payment method and pay again.`);
        announce('Payment declined.');
      } else if (e.code === 'hold_expired' || e.code === 'hold_not_found') {
        holdGone(e.message);
        return;
      } else if (e.code === 'payments_unavailable' || e.code === 'busy' || e.code === 'unavailable') {
        const wait = e.retryAfter || 5;
        state.payBlockedUntil = Date.now() + wait * 1000;
        blocked = true;
        notify(`Payments are unavailable right now. Try again in ${wait} s; your tickets stay held.`);
      } else if (e.code === 'idempotency_conflict') {
        state.attempt = null;
        notify('Please press Pay again.');
      } else if (e.code === 'admission_required') {
        holdError(e);
      } else {
        notify(e.message);  // network errors keep the attempt: pressing Pay again retries it safely
      }
    } finally {
      if (state.phase === 'hold') {
        button.textContent = label;
        button.setAttribute('aria-busy', 'false');
        button.disabled = blocked;
      }
    }
  }

  // ---------------------------------------------------------------- tickets
  async function enterTickets(saved) {
    show('tickets');
    clearNotice();
    let order = saved;
    try {
      order = await api('GET', `/v1/orders/${encodeURIComponent(saved.order_id)}`, { token: saved.order_token });
    } catch (e) {
      if (e.status === 404 || e.status === 401 || e.status === 403) {
        store.set(KEYS.order, null);
        enterChoose();
        return;
      }
      // otherwise show what checkout answered
    }
    const n = order.tickets.length;
    $('order-summary').textContent = `Paid ${money(order.total_minor != null ? order.total_minor : saved.total_minor)}`
      + ` · ${n} ticket${n === 1 ? '' : 's'} · order ${order.order_id}`;
    $('ticket-list').replaceChildren(...order.tickets.map((t) => el('li', { class: 'ticket', 'data-code': t.code },
      el('span', { class: 'what', text: t.seat ? `Seat ${t.seat}` : (state.event.ga.find((g) => g.code === t.type) || {}).name || t.type }),
      el('code', { text: t.code }))));
    // The order page opens with a short-lived link of its own (the order token never goes into a URL).
    const url = order.order_page_url || 'about:blank';
    $('order-link').href = url;
    const frame = $('order-frame');
    frame.onload = () => {
      try {
        const doc = frame.contentDocument;
        frame.style.height = (doc.documentElement.scrollHeight + 4) + 'px';
      } catch (e) { /* keep the default height */ }
    };
    frame.src = url;
    announce(`Payment complete. ${n} ticket${n === 1 ? '' : 's'} ready.`);
    $('tickets-title').setAttribute('tabindex', '-1');
    $('tickets-title').focus();
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $('notice-close').addEventListener('click', clearNotice);
    $('seatmap').addEventListener('click', (e) => {
      const b = e.target.closest('.seat');
      if (b && !b.disabled) toggleSeat(Number(b.dataset.i));
    });
    $('clear-btn').addEventListener('click', () => { state.selected.clear(); updateSelection(); });
    $('hold-btn').addEventListener('click', () => {
      const seats = [...state.selected].sort((a, b) => a - b).map((i) => state.seatLabels[i]);
      if (seats.length) createHold({ seats }, $('hold-btn'));
    });
    $('best-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const count = Number($('best-count').value);
      if (!Number.isInteger(count) || count < 1 || count > limit()) {
        notify(`Choose from 1 to ${limit()} seats.`);
        return;
      }
      createHold({ best: { section: $('best-section').value, count } }, $('best-btn'));
    });
    $('ga-list').addEventListener('click', (e) => {
      const step = e.target.closest('[data-ga-step]');
      if (step) { stepGa(step.dataset.gaStep, Number(step.dataset.delta)); return; }
      const hold = e.target.closest('[data-ga-hold]');
      if (hold && !hold.disabled) {
        const code = hold.dataset.gaHold;
        createHold({ ga: { [code]: state.gaQty[code] } }, hold);
      }
    });
    $('pay-form').addEventListener('submit', pay);
    $('release-btn').addEventListener('click', releaseHold);
    $('again-btn').addEventListener('click', () => {
      store.set(KEYS.order, null);
      $('order-frame').src = 'about:blank';
      state.version = null;
      enterChoose();
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.phase === 'choose') startPolling();
    });
  }

  async function start() {
    wire();
    if (!Number.isInteger(EVENT_ID) || EVENT_ID < 1) {
      $('event-name').textContent = 'No such event';
      $('step-loading').hidden = true;
      return;
    }
    try {
      await ensureBuyer();
      state.event = await api('GET', `/v1/events/${EVENT_ID}/public`);
    } catch (e) {
      $('event-name').textContent = e.code === 'event_not_found' ? 'No such event' : 'Could not load this event';
      $('step-loading').replaceChildren(el('p', { text: e.code === 'event_not_found'
        ? 'This event does not exist or is not on sale.' : `${e.message} Reload the page to try again.` }));
      return;
    }
    renderEvent(state.event);
    const order = store.get(KEYS.order);
    if (order && order.order_id) { enterTickets(order); return; }
    const saved = store.get(KEYS.hold);
    if (saved && saved.hold && saved.hold.expires_at_ms - (Date.now() + (saved.hold.skew || 0)) > 1000) {
      state.hold = saved.hold;
      state.attempt = saved.attempt;
      drawChoice();
      enterHold();
      return;
    }
    store.set(KEYS.hold, null);
    enterChoose();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
