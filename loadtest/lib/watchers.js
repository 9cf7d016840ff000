// Organisers watching the live dashboard, shared by dashboard_watchers.js and mixed.js: each watcher
// keeps `GET /v1/events/{id}/live` (Server-Sent Events, `Authorization: Bearer <api_key>`) open for
// the whole run and counts what it receives.
//
// k6 has no SSE client, and its http module returns a response only once the body is complete, which
// a live stream never is. What it does with a `timeout` (k6 1.1, tried against this gateway): the
// request ends with status 0, error_code 1050 ("request timeout"), no headers, but `body` keeps
// everything received until then, and `timings.waiting` is the time to the first byte. So a watcher
// reads the stream in windows: one request with `timeout` = WINDOW_S, its body parsed into events,
// then at once the next request with `Last-Event-ID` = the last id received, which the gateway
// answers with exactly the seat changes missed (docs/dashboard.md), as the page does when it
// reconnects. An event cut by the end of a window is left out; its id is not resumed from.
// The timeout is declared an expected answer (`responseCallback`), so windows do not count in
// http_req_failed; k6 still logs one "Request Failed ... request timeout" warning per window.
//
// Knobs: WATCHERS dashboards open (5), WINDOW_S seconds per request (5).
// Metrics: live_updates (figures and seats events, tagged type), live_reconnects (windows after the
// first), live_resyncs (a resumed window that got the whole seat map again instead of the changes),
// live_first_event_ms (request -> first event, per window, tagged connect: first | resume),
// live_gap_ms (between consecutive `figures` events, by their server time now_ms, across windows:
// what the watcher sees, reconnections included), live_errors (no event within a window, or an
// error answer, tagged reason).
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { BASE, EVENT, num, seed, remainingMs, bounded, need } from './seed.js';
import { serverErrors } from './buyer.js';

export const WATCHERS = num('WATCHERS', 5);
const WINDOW_S = num('WINDOW_S', 5);
const EXPECTED = http.expectedStatuses(0, 200);  // 0: the window's own timeout (checked below)

export const updates = new Counter('live_updates');
export const reconnects = new Counter('live_reconnects');
export const resyncs = new Counter('live_resyncs');
export const firstEventMs = new Trend('live_first_event_ms', true);
export const gapMs = new Trend('live_gap_ms', true);
export const errors = new Counter('live_errors');

export const thresholds = {
  live_errors: ['count==0'],
  server_errors: ['count==0'],
  live_updates: ['count>0'],
  live_first_event_ms: ['p(95)<1000'],
  live_gap_ms: ['p(99)<2000'],  // the gateway sends figures at least once a second
};

export function watchersScenario(execName) {
  need('dashboard watchers need event_id and api_key in the seed file', EVENT != null && !!seed.api_key);
  return Object.assign({ executor: 'per-vu-iterations', vus: Math.max(1, WATCHERS), iterations: 1, exec: execName },
                       bounded());
}

// Parse the complete events of one window's body: [{id, event, data}].
function events(body) {
  const blocks = body.split('\n\n');
  blocks.pop();  // empty, or an event the window cut
  return blocks.map((block) => {
    const out = { id: null, event: 'message', data: '' };
    for (const line of block.split('\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;  // a comment (": keep-alive") or nothing
      const value = line.slice(colon + 1).replace(/^ /, '');
      const name = line.slice(0, colon);
      if (name === 'id') out.id = value;
      else if (name === 'event') out.event = value;
      else if (name === 'data') out.data += value;
    }
    return out;
  });
}

// One organiser: windows of the stream until DURATION is over.
export function watch() {
  const url = `${BASE}/v1/events/${EVENT}/live`;
  let lastId = null;
  let lastNow = null;
  let windows = 0;
  sleep(Math.random());  // dashboards are not opened at the very same instant
  while (remainingMs() > 1500) {
    const windowMs = Math.min(WINDOW_S * 1000, remainingMs() - 1000);
    const headers = { Authorization: `Bearer ${seed.api_key}` };
    if (lastId) headers['Last-Event-ID'] = lastId;
    const res = http.get(url, { headers, timeout: `${windowMs}ms`, responseCallback: EXPECTED,
                                tags: { step: 'live', connect: windows ? 'resume' : 'first' } });
    if (windows++) reconnects.add(1);
    if (res.status !== 200 && res.status !== 0) {
      errors.add(1, { reason: `status_${res.status}` });
      if (res.status >= 500) serverErrors.add(1, { step: 'live' });
      if (res.status >= 400 && res.status < 500 && res.status !== 429) return;  // a wrong key stays wrong
      sleep(1);
      continue;
    }
    const got = events(res.body || '');
    if (!got.length) {  // nothing within the window: the stream is down or silent
      errors.add(1, { reason: res.status === 0 && res.error_code !== 1050 ? `transport_${res.error_code}` : 'silent' });
      if (res.status === 0 && res.error_code !== 1050) serverErrors.add(1, { step: 'live' });
      sleep(1);
      continue;
    }
    firstEventMs.add(res.timings.waiting, { connect: windows > 1 ? 'resume' : 'first' });
    for (const ev of got) {
      if (ev.id) lastId = ev.id;
      if (ev.event === 'seatmap' && windows > 1) resyncs.add(1);
      if (ev.event !== 'figures' && ev.event !== 'seats') continue;
      updates.add(1, { type: ev.event });
      if (ev.event === 'figures') {
        const now = /"now_ms":(\d+)/.exec(ev.data);
        if (now) {
          if (lastNow !== null) gapMs.add(Math.max(0, Number(now[1]) - lastNow));
          lastNow = Number(now[1]);
        }
      }
    }
  }
}
