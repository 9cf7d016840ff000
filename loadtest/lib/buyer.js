// The buyer's steps, shared by the k6 scenarios: what the buyer page does, over the public API.
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

export const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8000';
export const EVENT = __ENV.EVENT_ID;
const JSON_HEADERS = { 'Content-Type': 'application/json' };

export const purchaseMs = new Trend('purchase_ms', true);          // admitted (or start) -> paid order
export const queueWaitMs = new Trend('queue_wait_ms', true);       // joined -> admitted
export const paid = new Counter('purchases');
export const soldOutTold = new Counter('told_sold_out');
export const gaveUp = new Counter('gave_up_waiting');
export const retried503 = new Counter('retried_503');
export const serverErrors = new Counter('server_errors');          // any 5xx other than a 503 with Retry-After
export const refused = new Counter('hold_refused');

function note(res) {
  if (res.status >= 500 && !(res.status === 503 && res.headers['Retry-After'])) serverErrors.add(1);
  return res;
}

export function buyerToken() {
  const res = note(http.post(`${BASE}/v1/buyer-token`, null, { tags: { step: 'buyer_token' } }));
  return res.status === 201 ? res.json('buyer_token') : null;
}

export function auth(token, extra) {
  return Object.assign({ Authorization: `Bearer ${token}` }, JSON_HEADERS, extra || {});
}

// Join and poll until admitted; returns {admission} or {soldOut} or {gaveUp}.
export function waitForAdmission(token, giveUpS) {
  const start = Date.now();
  let res = note(http.post(`${BASE}/v1/events/${EVENT}/queue`, null, { headers: auth(token), tags: { step: 'join' } }));
  while (res.status === 429 || res.status === 503) {
    sleep(Number(res.headers['Retry-After'] || 1));
    res = note(http.post(`${BASE}/v1/events/${EVENT}/queue`, null, { headers: auth(token), tags: { step: 'join' } }));
  }
  if (res.status === 409) { soldOutTold.add(1); return { soldOut: true }; }
  if (res.status !== 200 && res.status !== 201) return { gaveUp: true };
  const queueToken = res.json('queue_token');
  let body = res.json();
  while (true) {
    if (body.status === 'admitted') { queueWaitMs.add(Date.now() - start); return { admission: body.admission_token }; }
    if (body.status === 'sold_out') { soldOutTold.add(1); return { soldOut: true }; }
    if (body.status === 'expired') return { gaveUp: true };
    if ((Date.now() - start) / 1000 > giveUpS) { gaveUp.add(1); return { gaveUp: true }; }
    sleep(Math.min(Number(body.poll_after_s || 2), 2));
    const poll = note(http.get(`${BASE}/v1/events/${EVENT}/queue`, { headers: auth(queueToken), tags: { step: 'poll' } }));
    if (poll.status === 200) body = poll.json();
    else if (poll.status === 429) sleep(Number(poll.headers['Retry-After'] || 1));
  }
}

// Hold `count` GA tickets of `type`, then pay, retrying 503 after Retry-After with the same key.
export function buy(token, admission, type, count, giveUpS) {
  const start = Date.now();
  const headers = auth(token, admission ? { 'X-Admission-Token': admission } : {});
  let hold = note(http.post(`${BASE}/v1/events/${EVENT}/holds`, JSON.stringify({ ga: { [type]: count } }),
    { headers, tags: { step: 'hold' } }));
  while (hold.status === 503) {
    retried503.add(1);
    sleep(Number(hold.headers['Retry-After'] || 1));
    hold = note(http.post(`${BASE}/v1/events/${EVENT}/holds`, JSON.stringify({ ga: { [type]: count } }),
      { headers, tags: { step: 'hold' } }));
  }
  if (hold.status !== 201) {
    refused.add(1, { code: String(hold.status) });
    if (hold.status === 409) soldOutTold.add(1);
    return { soldOut: hold.status === 409 };
  }
  const holdId = hold.json('hold_id');
  const key = `k6-${holdId}`;
  while (true) {
    const res = note(http.post(`${BASE}/v1/holds/${holdId}/checkout`, JSON.stringify({}),
      { headers: Object.assign({ 'Idempotency-Key': key }, headers), tags: { step: 'checkout' } }));
    if (res.status === 201) { paid.add(1); purchaseMs.add(Date.now() - start); return { paid: true }; }
    if (res.status === 503 && (Date.now() - start) / 1000 < giveUpS) {
      retried503.add(1);
      sleep(Number(res.headers['Retry-After'] || 1));
      continue;
    }
    return { failed: res.status };
  }
}
