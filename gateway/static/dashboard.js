// Organiser dashboard: the event's figures live from GET /v1/events/{id}/live (Server-Sent Events).
// EventSource cannot send an Authorization header, so the stream is read with fetch() and parsed here;
// the API key lives in sessionStorage (this tab only) and never in a URL. On any break the page
// reconnects by itself with Last-Event-ID, so it receives exactly the seat changes it missed.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const KEY_STORE = "flashgate.dashboard.key";
  const SILENT_MS = 5000;
  const eventId = Number(location.pathname.split("/").filter(Boolean)[1]);
  const $ = (id) => document.getElementById(id);

  const st = {
    key: sessionStorage.getItem(KEY_STORE), lastId: null, layout: null, seats: null, seatEls: null,
    figures: null, abort: null, retryMs: 1000, everLive: false,
  };

  // -- helpers ---------------------------------------------------------------------------------------
  const nf = new Intl.NumberFormat(undefined);
  const num = (n) => (n === null || n === undefined ? "–" : nf.format(n));
  function money(minor, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(minor / 100);
    } catch (e) {
      return `${(minor / 100).toFixed(2)} ${currency}`;
    }
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(id, value) { $(id).textContent = value; }
  function setConn(state, label) {
    const c = $("conn");
    c.dataset.state = state;
    c.textContent = label;
  }

  // -- log-in ----------------------------------------------------------------------------------------
  function showLogin(message) {
    $("board").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    text("login-event", `#${eventId}`);
    $("login-error").hidden = !message;
    text("login-error", message || "");
    setConn("idle", "Not connected");
    $("key").focus();
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    st.key = $("key").value.trim();
    $("key").value = "";
    sessionStorage.setItem(KEY_STORE, st.key);
    st.lastId = null;
    start();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    st.key = null;
    if (st.abort) st.abort.abort();
    showLogin();
  });

  // -- the stream --------------------------------------------------------------------------------------
  function start() {
    $("login").hidden = true;
    $("logout").hidden = false;
    connect();
  }

  async function connect() {
    if (st.abort) st.abort.abort();
    const abort = new AbortController();
    st.abort = abort;
    setConn(st.everLive ? "reconnecting" : "connecting", st.everLive ? "Reconnecting…" : "Connecting…");
    const headers = { Authorization: `Bearer ${st.key}`, Accept: "text/event-stream" };
    if (st.lastId) headers["Last-Event-ID"] = st.lastId;
    let resp;
    const answerTimer = setTimeout(() => abort.abort(), SILENT_MS * 2);  // a server that accepts but never answers
    try {
      resp = await fetch(`/v1/events/${eventId}/live`, { headers, signal: abort.signal, cache: "no-store" });
    } catch (e) {
      if (st.abort === abort && st.key) retry();
      return;
    } finally {
      clearTimeout(answerTimer);
    }
    if (resp.status === 401 || resp.status === 403 || resp.status === 404) {
      let message = "This key cannot show this event.";
      try { message = (await resp.json()).error.message; } catch (e) { /* keep the default */ }
      sessionStorage.removeItem(KEY_STORE);
      st.key = null;
      showLogin(message);
      return;
    }
    if (!resp.ok || !resp.body) { retry(); return; }
    try {
      await read(resp.body.getReader(), abort);
    } catch (e) { /* the connection broke: reconnect below */ }
    if (st.abort === abort && st.key) retry();
  }

  function retry() {
    setConn("reconnecting", "Reconnecting…");
    const wait = st.retryMs;
    st.retryMs = Math.min(st.retryMs * 2, 5000);
    setTimeout(() => { if (st.key) connect(); }, wait);
  }

  async function read(reader, abort) {
    const decoder = new TextDecoder();
    let buffer = "";
    // The server writes at least once a second; silence for SILENT_MS means the connection is dead
    // without having said so (a frozen server, a dropped network): give up on it and reconnect.
    let heard = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - heard > SILENT_MS) { clearInterval(watchdog); abort.abort(); }
    }, 1000);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || abort.signal.aborted) return;
        heard = Date.now();
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } finally {
      clearInterval(watchdog);
    }
  }

  function dispatch(block) {
    let name = "message", id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    const body = JSON.parse(data.join("\n"));
    if (name === "layout") onLayout(body);
    else if (name === "seatmap") onSeatmap(body);
    else if (name === "seats") onSeats(body);
    else if (name === "figures") onFigures(body);
    if (id) st.lastId = id;
  }

  // -- events --------------------------------------------------------------------------------------------
  function onLayout(layout) {
    const same = st.layout && st.layout.n_seats === layout.n_seats;
    st.layout = layout;
    text("event-name", layout.name || `Event #${layout.event_id}`);
    document.title = `${layout.name || "Event"} · live dashboard`;
    if (!same) drawSeatmap();
    $("board").hidden = false;
    st.retryMs = 1000;
    st.everLive = true;
    setConn("live", "Live");
  }

  function onSeatmap(body) {
    st.seats = body.seats.split("");
    paintAll();
  }

  function onSeats(body) {
    if (!st.seats) return;
    const to = { 1: "1", 2: "0", 3: "2", 4: "0", 5: "0" };
    for (const [op, seats] of body.changes) {
      for (const i of seats) {
        st.seats[i] = to[op];
        if (st.seatEls && st.seatEls[i]) st.seatEls[i].setAttribute("class", `seat s${to[op]}`);
      }
    }
  }

  function onFigures(f) {
    st.figures = f;
    const t = f.totals;
    text("h-sold", num(t.sold));
    text("h-sold-of", `of ${num(t.capacity)}`);
    text("h-held", num(t.held));
    text("h-available", num(t.available));
    text("h-pct", t.capacity ? `${Math.round((100 * t.available) / t.capacity)} % left` : "");
    text("h-revenue", money(f.revenue.net_minor, f.revenue.currency));
    text("h-orders", `${num(f.revenue.orders)} orders` + (f.revenue.refunds ? `, ${num(f.revenue.refunds)} refunded` : ""));
    text("h-spm", num(Math.round(f.sales.tickets_per_minute)));
    const a = f.admission;
    text("h-queue", a.queue_enabled ? num(a.length) : "–");
    const wl = f.queue && f.queue.waitlist;  // after the final sell-out: the waiting list
    text("h-eta", !a.queue_enabled ? "no waiting room" : a.sold_out && wl
      ? `sold out · waiting list ${num(wl.length)}, ${num(wl.open_offers)} offered`
      : (a.eta_s !== null ? `all in ≈ ${duration(a.eta_s)}` : ""));
    const status = $("event-status");
    status.dataset.status = f.status;
    status.textContent = f.status.replace("_", " ");
    text("updated", `updated ${new Date(f.now_ms).toLocaleTimeString()}`);
    drawSpm(f.sales.per_minute, f.now_ms);
    drawSections(f);
    drawFunnel(f);
    drawProviders(f);
    drawDoor(f.scans);
  }

  // -- drawing --------------------------------------------------------------------------------------------
  function drawSpm(rows, nowMs) {
    const svg = $("spm-chart");
    svg.replaceChildren();
    const W = 1000, H = 170, L = 34, B = 18, T = 8;
    const now = Math.floor(nowMs / 60000);
    const byMin = new Map(rows.map((r) => [r.minute / 60000, r.tickets]));
    const values = [];
    for (let m = now - 59; m <= now; m++) values.push(byMin.get(m) || 0);
    const max = Math.max(1, ...values);
    const bw = (W - L) / 60;
    el("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }, svg);
    for (const frac of [0.5, 1]) {
      const y = H - B - frac * (H - B - T);
      el("line", { x1: L, y1: y, x2: W, y2: y, class: "axis" }, svg);
      el("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, svg).textContent = num(Math.round(max * frac));
    }
    values.forEach((v, i) => {
      if (!v) return;
      const h = (v / max) * (H - B - T);
      const bar = el("rect", { x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2), height: h, class: "bar" }, svg);
      el("title", {}, bar).textContent = `${v} tickets`;
    });
    el("text", { x: L, y: H - 4 }, svg).textContent = "−60 min";
    el("text", { x: W, y: H - 4, "text-anchor": "end" }, svg).textContent = "now";
    svg.dataset.total = String(values.reduce((x, y) => x + y, 0));
  }

  function drawSeatmap() {
    const svg = $("seatmap");
    svg.replaceChildren();
    st.seatEls = null;
    const layout = st.layout;
    if (!layout.seat_view) {
      svg.hidden = true;
      $("map-note").hidden = false;
      text("map-note", layout.n_seats ?
        `${num(layout.n_seats)} seats: more than the ${num(layout.max_seat_view)} drawn seat by seat; figures per section below.` :
        "General admission only: figures per ticket type below.");
      return;
    }
    svg.hidden = false;
    $("map-note").hidden = true;
    const S = 9, GAP = 28;
    let x = 0, height = 0;
    const els = new Array(layout.n_seats);
    for (const section of layout.sections) {
      const width = Math.max(...section.rows.map((r) => r.seats), 1);
      const g = el("g", { transform: `translate(${x},0)` }, svg);
      el("text", { x: 0, y: 11, class: "sec-label" }, g).textContent = section.name;
      section.rows.forEach((row, r) => {
        for (let i = 0; i < row.seats; i++) {
          const rect = el("rect", { x: i * S, y: 16 + r * S, width: S - 1.5, height: S - 1.5, rx: 1.5,
            class: "seat s0", "data-seat": String(row.first + i) }, g);
          els[row.first + i] = rect;
        }
      });
      height = Math.max(height, 16 + section.rows.length * S);
      x += width * S + GAP;
    }
    svg.setAttribute("viewBox", `0 0 ${Math.max(1, x - GAP)} ${height}`);
    st.seatEls = els;
    paintAll();
  }

  function paintAll() {
    if (!st.seats || !st.seatEls) return;
    st.seatEls.forEach((rect, i) => rect && rect.setAttribute("class", `seat s${st.seats[i] || "0"}`));
  }

  function drawSections(f) {
    const body = $("sections").tBodies[0];
    body.replaceChildren();
    const rows = [...f.sections.map((s) => ({ ...s, label: `Section ${s.name}` })),
      ...f.ga.map((g) => ({ ...g, label: g.name }))];
    for (const s of rows) {
      const tr = document.createElement("tr");
      tr.dataset.name = s.type || s.name;
      for (const v of [s.label, num(s.sold), num(s.held), num(s.available)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const stack = document.createElement("div");
      stack.className = "stack";
      for (const part of ["sold", "held"]) {
        const seg = document.createElement("span");
        seg.className = part;
        seg.style.width = `${s.capacity ? (100 * s[part]) / s.capacity : 0}%`;
        stack.appendChild(seg);
      }
      td.appendChild(stack);
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function drawFunnel(f) {
    const a = f.admission, fu = f.funnel;
    text("q-phase", a.queue_enabled ? a.phase + (a.paused ? " (paused)" : "") : "not used for this event");
    text("q-length", a.queue_enabled ? num(a.length) : "–");
    text("q-admitted", a.queue_enabled ? num(a.admitted) : "–");
    text("q-rate", a.queue_enabled ? `${a.rate_per_s} / s (measured ${a.measured_per_s} / s)` : "–");
    text("q-eta", a.queue_enabled ? duration(a.eta_s) : "–");
    const steps = [["Admitted", fu.admitted], ["Holds", fu.holds], ["Paid", fu.paid]].filter(([, v]) => v !== null);
    const svg = $("funnel");
    svg.replaceChildren();
    const max = Math.max(1, ...steps.map(([, v]) => v));
    steps.forEach(([label, v], i) => {
      const y = 8 + i * 46, w = Math.max(2, (v / max) * 340);
      el("rect", { x: 0, y, width: w, height: 30, rx: 4, class: label === "Paid" ? "f-bar paid" : "f-bar" }, svg);
      el("text", { x: w + 6, y: y + 19, class: "f-label" }, svg).textContent = `${label} ${num(v)}`;
    });
    const d = fu.dropped;
    text("funnel-drops", `Dropped: ${num(d.expired)} holds expired, ${num(d.released)} released` +
      (d.admitted_without_hold !== null ? `, ${num(d.admitted_without_hold)} admitted without a hold` : "") +
      `; ${num(fu.in_progress)} in checkout now; ${num(fu.refunded)} refunded.`);
  }

  function drawProviders(f) {
    const list = $("providers");
    list.replaceChildren();
    const breakers = [["Payments", f.providers.payments.breaker],
      ...Object.entries(f.providers.notifications).map(([k, v]) => [k === "smtp" ? "E-mail" : "Webhooks", v])];
    for (const [name, b] of breakers) {
      if (!b) continue;
      const li = document.createElement("li");
      li.dataset.state = b.state;
      li.textContent = `${name}: ${b.state}` + (b.failures ? ` (${b.failures} failures)` : "");
      list.appendChild(li);
    }
    const p = f.providers.payments.pacing;
    text("pacing", p.workers ? `limit ${num(p.limit)} over ${p.workers} workers, ${num(p.in_flight)} in flight, ` +
      `${num(p.queued)} waiting, ${num(p.shed)} shed` + (p.rtt_ms !== null ? `, ${p.rtt_ms} ms` : "") : "no figures yet");
    text("dead", `${num(f.dead_letters.notifications)} notifications, ${num(f.dead_letters.ledger)} ledger`);
  }

  function drawDoor(scans) {
    const body = $("gates").tBodies[0];
    body.replaceChildren();
    text("door-inside", scans ? num(scans.inside) : "–");
    text("door-admitted", scans ? num(scans.admitted) : "–");
    if (!scans) return;
    for (const [gate, g] of Object.entries(scans.gates || {})) {
      const tr = document.createElement("tr");
      tr.dataset.gate = gate;
      for (const v of [gate, num(g.admitted), num(g.duplicates), num(g.invalid)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  // -- go --------------------------------------------------------------------------------------------------
  if (!Number.isInteger(eventId) || eventId < 1) {
    showLogin("This address names no event.");
  } else if (st.key) {
    start();
  } else {
    showLogin();
  }
})();
