// The buyer's steps, shared by the k6 scenarios: what the buyer page does, over the public API.
// Every request is tagged `step` (buyer_token, join, poll, availability, hold, release, checkout,
// tickets) and `attempt` (first, or retry: the same request again after a 503 with Retry-After).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { BASE, EVENT, remainingMs } from './seed.js';

const JSON_HEADERS = { 'Content-Type': 'application/json' };
const TIMEOUT = '10s';
// Answers of the buyer API that are not failures: refusals a sale gives on purpose (sold out, seat
// taken, limit, hold expired, declined card) and the honest 503 + Retry-After that is retried.
const EXPECTED = http.expectedStatuses({ min: 200, max: 299 }, 402, 409, 429, 503);

export const STEPS = ['buyer_token', 'join', 'poll', 'availability', 'hold', 'release', 'checkout', 'tickets'];
// Why a 503 came: the payment guard's reason (busy = shed by the pacing queue or the key's attempt
// still running, timeout, breaker_open, throttled = the provider's 429) or the sale's own
// `unavailable` (Redis away).
export const REASONS = ['busy', 'timeout', 'breaker_open', 'throttled', 'unavailable', 'other'];

export const serverErrors = new Counter('server_errors');        // any 5xx but a 503 with Retry-After; no answer
export const retried503 = new Counter('retried_503');            // all 503 retries, tagged step and reason
const retried503Step = Object.fromEntries(STEPS.map((s) => [s, new Counter(`retried_503_${s}`)]));
const retried503Reason = Object.fromEntries(REASONS.map((r) => [r, new Counter(`retried_503_${r}`)]));
export const rateLimited = new Counter('retried_429');           // 429 rate_limited, waited out and retried
export const queueWaitMs = new Trend('queue_wait_ms', true);     // joined -> admitted
export const etaError = new Trend('eta_error');                  // (waited - eta_s at join) / max(eta_s, 1 s)
export const soldOutTold = new Counter('told_sold_out');         // by the waiting room or availability
export const gaveUp = new Counter('gave_up_waiting');            // still waiting when DURATION ran out

// Every buyer is someone else on an address of their own. The load comes from one machine, so the
// buyer names its address in X-Forwarded-For (10.x.y.z from its number); the gateway believes it
// only when started with FLASHGATE_TRUSTED_PROXIES covering the load generator (the runner and
// bench/bench_flash_sale.py do). Without that every buyer shares 127.0.0.1 and the per-address
// limits apply to all of them.
let buyerNumber = 0;

export function newBuyer(n) {
  buyerNumber = n;
}

export function address() {
  const n = buyerNumber || exec.vu.idInTest;
  return `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
}

export function auth(token, extra) {
  return Object.assign({ Authorization: `Bearer ${token}`, 'X-Forwarded-For': address() }, JSON_HEADERS, extra || {});
}

export function errorCode(res) {
  try {
    const err = res.json('error');
    return (err && err.code) || '';
  } catch (e) {
    return '';  // not JSON
  }
}

function reason503(res) {
  let why = 'other';
  try {
    const err = res.json('error');
    why = (err.details && err.details.reason) || err.code;
  } catch (e) { /* not JSON */ }
  return REASONS.includes(why) ? why : 'other';
}

// One request of `step`. A 503 with Retry-After and a 429 rate_limited are waited out and sent again,
// the very same request (same Idempotency-Key), while the scenario has time; so is a request that got
// no answer when `idempotent` (a GET, or a checkout with its key), as the buyer page does.
export function send(step, method, url, body, headers, idempotent) {
  let attempt = 'first';
  while (true) {
    const res = http.request(method, url, body, { headers, timeout: TIMEOUT, responseCallback: EXPECTED,
                                                   tags: { step, attempt } });
    const honest503 = res.status === 503 && res.headers['Retry-After'];
    if (res.status === 0 || (res.status >= 500 && !honest503)) serverErrors.add(1, { step });
    let wait = 0;
    if (honest503) {
      const why = reason503(res);
      retried503.add(1, { step, reason: why });
      retried503Step[step].add(1);
      retried503Reason[why].add(1);
      wait = Number(res.headers['Retry-After']) || 1;
    } else if (res.status === 429 && errorCode(res) === 'rate_limited') {
      rateLimited.add(1, { step });
      wait = Number(res.headers['Retry-After']) || 1;
    } else if (res.status === 0 && idempotent) {
      wait = 1;
    } else {
      return res;
    }
    if (remainingMs() < wait * 1000 + 500) return res;
    sleep(wait);
    attempt = 'retry';
  }
}

export function buyerToken() {
  const res = send('buyer_token', 'POST', `${BASE}/v1/buyer-token`, null, { 'X-Forwarded-For': address() }, false);
  return res.status === 201 ? res.json('buyer_token') : null;
}

// Join and poll at `poll_after_s` (clamped to 1-5 s, as the buyer page does) until admitted.
// Returns {admission}, {soldOut} or {gaveUp}. Records the wait and how far the ETA shown at join was off.
export function waitForAdmission(token) {
  const start = Date.now();
  const url = `${BASE}/v1/events/${EVENT}/queue`;
  let rejoins = 0;
  let res = send('join', 'POST', url, null, auth(token), false);
  while (true) {
    if (res.status === 409 && errorCode(res) === 'sold_out') { soldOutTold.add(1); return { soldOut: true }; }
    if (res.status !== 200 && res.status !== 201) return { gaveUp: true, status: res.status };
    const queueToken = res.json('queue_token');
    let body = res.json();
    const eta = body.status === 'waiting' && typeof body.eta_s === 'number' ? body.eta_s : null;
    while (true) {
      if (body.status === 'admitted') {
        const waited = Date.now() - start;
        queueWaitMs.add(waited);
        if (eta !== null) etaError.add((waited / 1000 - eta) / Math.max(eta, 1));
        return { admission: body.admission_token };
      }
      if (body.status === 'sold_out') { soldOutTold.add(1); return { soldOut: true }; }
      if (body.status === 'expired') break;
      const pause = Math.min(5, Math.max(1, Number(body.poll_after_s || 2)));
      if (remainingMs() < pause * 1000 + 500) { gaveUp.add(1); return { gaveUp: true }; }
      sleep(pause);
      // `seen`: the position shown last, as the buyer page sends it (no worker then shows more).
      const seen = body.status === 'waiting' && body.position != null ? `?seen=${body.position}` : '';
      const poll = send('poll', 'GET', url + seen, null, auth(queueToken), true);
      if (poll.status === 200) body = poll.json();
      else if (poll.status !== 429) return { gaveUp: true, status: poll.status };
    }
    if (++rejoins > 2) return { gaveUp: true };  // expired place: join again, at the back
    res = send('join', 'POST', url, null, auth(token), false);
  }
}

// The availability the buyer page shows: counts, and (withSeats) one character per seat.
export function availability(withSeats) {
  const res = send('availability', 'GET', `${BASE}/v1/events/${EVENT}/availability${withSeats ? '' : '?seats=0'}`,
                   null, { 'X-Forwarded-For': address() }, true);
  return res.status === 200 ? res.json() : null;
}

export function hold(token, admission, body) {
  return send('hold', 'POST', `${BASE}/v1/events/${EVENT}/holds`, JSON.stringify(body), admitted(token, admission),
              false);
}

export function release(token, holdId) {
  return send('release', 'DELETE', `${BASE}/v1/holds/${holdId}`, null, auth(token), true);
}

// Pay for a hold; a 503 is retried after Retry-After with the SAME Idempotency-Key (send()).
export function checkout(token, admission, holdId, key) {
  return send('checkout', 'POST', `${BASE}/v1/holds/${holdId}/checkout`, JSON.stringify({}),
              admitted(token, admission, { 'Idempotency-Key': key }), true);
}

// The order and its tickets, with the order token checkout answered.
export function order(orderId, orderToken) {
  return send('tickets', 'GET', `${BASE}/v1/orders/${orderId}`, null, auth(orderToken), true);
}

function admitted(token, admission, extra) {
  return auth(token, Object.assign(admission ? { 'X-Admission-Token': admission } : {}, extra || {}));
}
