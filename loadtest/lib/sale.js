// The buyer's journey through a flash sale, shared by flash_sale.js, open_sale.js and mixed.js:
// arrive, (wait in the queue), read availability, hold, pay, fetch the tickets; some buyers race for
// the same seats, abandon, pay too late or try to take more than the limit, and the answer each of
// them must get is checked. What a buyer is told "sold out" stops.
//
// Knobs (defaults suit a 2-core laptop and a 60 s run):
//   BUYERS        buyers in all; each VU serves one buyer after the other        VUS
//   PICK_PCT      % of buyers who pick seats from the availability map          30
//   BEST_PCT      % of buyers who hold the best seats of the section            30
//                 (the rest hold a GA quantity; with no seats or no GA type, the other kind)
//   QTY_MAX       best seats and GA holds ask for 1..QTY_MAX (at most per_buyer_limit)   4
//   PICK_WINDOW   pickers choose among the first N free seats: they collide      8
//   PICK_RETRIES  a picker whose seats were taken re-reads and picks again N times, then holds best   2
//   ABANDON_PCT   % who hold and then leave: half release, half let the hold expire   10
//   LATE_PAY_PCT  % who pay hold_ttl_s + 1 s after holding (expected: 409 hold_expired); only when
//                 DURATION leaves the time, else they pay at once (late_pay_skipped)   5
//   GREEDY_PCT    % who hold again and again past per_buyer_limit (expected: 429 limit_exceeded),
//                 then release what they got                                    5
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import * as buyer from './buyer.js';
import { seed, seats, VUS, RAMP_S, num, remainingMs, bounded } from './seed.js';

export const BUYERS = num('BUYERS', VUS);
const PICK_PCT = num('PICK_PCT', 30);
const BEST_PCT = num('BEST_PCT', 30);
const QTY_MAX = num('QTY_MAX', 4);
const PICK_WINDOW = num('PICK_WINDOW', 8);
const PICK_RETRIES = num('PICK_RETRIES', 2);
const ABANDON_PCT = num('ABANDON_PCT', 10);
const LATE_PAY_PCT = num('LATE_PAY_PCT', 5);
const GREEDY_PCT = num('GREEDY_PCT', 5);
// The comparison shape (buyer token -> GA hold -> checkout, as other ticketing systems are measured): no
// availability read before a GA hold (READ_AVAILABILITY=0) and no order fetch after paying (FETCH_ORDER=0).
const READ_AVAILABILITY = num('READ_AVAILABILITY', 1);
const FETCH_ORDER = num('FETCH_ORDER', 1);
const LIMIT = Number(seed.per_buyer_limit || 8);
const TTL_S = Number(seed.hold_ttl_s || 600);
const GA = seed.ga_type || '';
const SECTION = seed.section || '';

export const purchases = new Counter('purchases');
export const ticketsBought = new Counter('tickets_bought');
export const purchaseMs = new Trend('purchase_ms', true);            // first hold -> paid order
export const contention = new Counter('hold_contention');           // 409 seat_unavailable: another buyer was faster
export const holdSoldOut = new Counter('hold_sold_out');            // 409 sold_out on a hold
export const limitRefused = new Counter('limit_refused');           // greedy buyer refused 429 limit_exceeded (correct)
export const latePayRefused = new Counter('late_pay_refused');      // paid after the hold expired: 409 (correct)
export const latePaySkipped = new Counter('late_pay_skipped');      // no time left in DURATION to wait for expiry
export const abandoned = new Counter('abandoned_holds');            // tagged how: released | expired
export const gaveUpPaying = new Counter('gave_up_paying');          // still 503 when DURATION ran out
export const expiredPaying = new Counter('expired_while_paying');   // 409 hold_expired after 503s were waited out
export const unexpected = new Counter('unexpected_answers');        // a wrong answer, tagged step, status, code

export const thresholds = {
  server_errors: ['count==0'],
  unexpected_answers: ['count==0'],
  'http_req_duration{step:hold}': ['p(95)<50'],
  'http_req_duration{step:availability}': ['p(95)<50'],
  'http_req_duration{step:checkout,attempt:first}': ['p(99)<1000'],
  'http_req_failed{step:hold}': ['rate<0.01'],
  'http_req_failed{step:checkout}': ['rate<0.01'],
  http_req_failed: ['rate<0.01'],
};

// The k6 scenario of the buyers: BUYERS iterations shared by VUS virtual users, bounded by DURATION.
export function buyersScenario(execName) {
  return Object.assign({ executor: 'shared-iterations', vus: Math.max(1, Math.min(VUS, BUYERS)),
                         iterations: Math.max(1, BUYERS), exec: execName }, bounded());
}

let saleOver = false;  // this VU saw the event sold out: its next buyers do not come

// A wrong answer. A 5xx, a 503 still there at the end and no answer are not: send() counted them.
function wrong(res, step, code) {
  if (res && !code && (res.status === 0 || res.status >= 500)) return;
  unexpected.add(1, { step, status: String(res ? res.status : 0), code: code || buyer.errorCode(res) });
}

// One buyer, from arrival to tickets. `queue`: go through the waiting room first.
export function journey(queue) {
  const n = exec.scenario.iterationInTest;
  if (saleOver || n >= BUYERS) return;
  // Buyer n arrives at its slot of the spike: arrivals spread evenly over RAMP_S, with jitter.
  const arrive = exec.scenario.startTime + (RAMP_S * 1000 * (n + Math.random())) / Math.max(1, BUYERS);
  if (arrive - Date.now() > remainingMs()) return;  // RAMP_S longer than DURATION: arrives too late
  if (arrive > Date.now()) sleep((arrive - Date.now()) / 1000);
  buyer.newBuyer(n + 1);
  const token = buyer.buyerToken();
  if (!token) return;
  let admission = null;
  if (queue) {
    const got = buyer.waitForAdmission(token);
    if (got.soldOut) { saleOver = true; return; }
    if (got.status) wrong(null, 'join', `status_${got.status}`);
    if (!got.admission) return;
    admission = got.admission;
  }
  const r = Math.random() * 100;
  const role = r < GREEDY_PCT ? 'greedy' : r < GREEDY_PCT + LATE_PAY_PCT ? 'late'
    : r < GREEDY_PCT + LATE_PAY_PCT + ABANDON_PCT ? 'abandon' : 'buyer';
  if (role === 'greedy') { greedy(token, admission); return; }
  const k = Math.random() * 100;
  const kind = k < PICK_PCT ? 'pick' : k < PICK_PCT + BEST_PCT ? 'best' : 'ga';
  const start = Date.now();
  const held = takeHold(token, admission, kind);
  if (!held) return;
  if (role === 'abandon') {
    if (Math.random() < 0.5) {
      const res = buyer.release(token, held.hold_id);
      if (res.status === 200) abandoned.add(1, { how: 'released' });
      else wrong(res, 'release');
    } else {
      abandoned.add(1, { how: 'expired' });  // walks away: the hold expires after hold_ttl_s
    }
    return;
  }
  if (role === 'late') {
    if (remainingMs() > (TTL_S + 4) * 1000) {
      sleep(TTL_S + 1);
      const res = buyer.checkout(token, admission, held.hold_id, `k6-late-${held.hold_id}`);
      if (res.status === 409 && buyer.errorCode(res) === 'hold_expired') latePayRefused.add(1);
      else if (res.status === 201) {
        wrong(res, 'checkout', 'late_payment_accepted');
        paid(res, held, start);
      } else wrong(res, 'checkout');
      return;
    }
    latePaySkipped.add(1);
  }
  pay(token, admission, held, start);
}

// Availability, then a hold of the buyer's kind. Returns the hold (201 body) or null.
function takeHold(token, admission, kind) {
  if (!READ_AVAILABILITY && kind === 'ga' && GA) {  // straight to the hold: a sold-out hold says so (409)
    const count = 1 + Math.floor(Math.random() * Math.max(1, Math.min(QTY_MAX, LIMIT)));
    const res = buyer.hold(token, admission, { ga: { [GA]: count } });
    if (res.status === 201) return res.json();
    if (refusal(res, false) === 'sold_out') saleOver = true;
    return null;
  }
  const seen = buyer.availability(kind === 'pick');
  if (!seen) return null;
  const gaLeft = (seen.ga || []).filter((t) => t.type === GA).reduce((a, t) => a + t.available, 0);
  const gaHeld = (seen.ga || []).filter((t) => t.type === GA).reduce((a, t) => a + t.held, 0);
  const seatsLeft = (seen.sections || []).filter((s) => s.name === SECTION).reduce((a, s) => a + s.free, 0);
  const seatsHeld = (seen.sections || []).filter((s) => s.name === SECTION).reduce((a, s) => a + s.held, 0);
  if (gaLeft + seatsLeft === 0) {
    if (gaHeld + seatsHeld === 0) saleOver = true;  // nothing free and nothing that could come back
    buyer.soldOutTold.add(1);
    return null;
  }
  if (kind !== 'ga' && (!SECTION || seatsLeft === 0)) kind = 'ga';
  if (kind === 'ga' && (!GA || gaLeft === 0)) kind = 'best';
  if (kind === 'pick') {
    for (let attempt = 0; attempt <= PICK_RETRIES; attempt++) {
      const view = attempt === 0 ? seen : buyer.availability(true);
      const labels = pickSeats(view);
      if (!labels) break;
      const res = buyer.hold(token, admission, { seats: labels });
      if (res.status === 201) return res.json();
      const code = buyer.errorCode(res);
      if (res.status === 409 && code === 'seat_unavailable') { contention.add(1); continue; }
      refusal(res, false);
      return null;
    }
    kind = 'best';
  }
  const count = 1 + Math.floor(Math.random() * Math.max(1, Math.min(QTY_MAX, LIMIT)));
  const body = kind === 'ga' ? { ga: { [GA]: count } } : { best: { section: SECTION, count } };
  const res = buyer.hold(token, admission, body);
  if (res.status === 201) return res.json();
  refusal(res, false);
  return null;
}

// 1-2 seats among the first PICK_WINDOW free ones of the map: buyers looking at the same map choose
// from the same few seats and race for them, as buyers who all want the front row do.
function pickSeats(view) {
  const map = view && view.seats;
  if (!map || map.length !== seats.length) return null;
  const free = [];
  for (let i = 0; i < map.length && free.length < PICK_WINDOW; i++) if (map[i] === '0') free.push(i);
  if (!free.length) return null;
  const want = Math.min(free.length, 1 + Math.floor(Math.random() * Math.min(2, LIMIT)));
  const chosen = [];
  while (chosen.length < want) {
    const i = free.splice(Math.floor(Math.random() * free.length), 1)[0];
    chosen.push(seats[i]);
  }
  return chosen;
}

// A refused hold: sold out stops the buyer (counted); `limitExpected` for the greedy buyer.
function refusal(res, limitExpected) {
  const code = buyer.errorCode(res);
  if (res.status === 409 && code === 'sold_out') { holdSoldOut.add(1); return 'sold_out'; }
  if (res.status === 409 && code === 'seat_unavailable') { contention.add(1); return 'taken'; }
  if (res.status === 429 && code === 'limit_exceeded' && limitExpected) return 'limit';
  if (res.status === 503 || res.status === 0 || res.status >= 500) return 'error';  // counted by send()
  wrong(res, 'hold', code);
  return 'wrong';
}

// Pay (503s retried with the same key by buyer.send) and fetch the tickets.
function pay(token, admission, held, start) {
  const res = buyer.checkout(token, admission, held.hold_id, `k6-${held.hold_id}`);
  if (res.status === 201) { paid(res, held, start); return; }
  if (res.status === 503) { gaveUpPaying.add(1); return; }
  if (res.status === 0 || res.status >= 500) return;  // counted by send()
  // The hold may expire while a 503 is waited out: a refusal the buyer page handles, not an error.
  if (res.status === 409 && buyer.errorCode(res) === 'hold_expired') { expiredPaying.add(1); return; }
  wrong(res, 'checkout');
}

function paid(res, held, start) {
  const body = res.json();
  purchases.add(1);
  ticketsBought.add(body.tickets.length);
  purchaseMs.add(Date.now() - start);
  if (body.tickets.length !== held.count) wrong(res, 'checkout', 'ticket_count');
  if (!FETCH_ORDER) return;
  const got = buyer.order(body.order_id, body.order_token);
  if (got.status !== 200) { wrong(got, 'tickets'); return; }
  if (got.json('tickets').length !== held.count) wrong(got, 'tickets', 'ticket_count');
}

// Hold min(4, limit) at a time until past the per-buyer limit: the hold that would pass it must be
// refused with 429 limit_exceeded, and none before it. Then give back what was held.
function greedy(token, admission) {
  const q = Math.min(4, LIMIT);
  const holds = [];
  let have = 0;
  for (let i = 0; i <= Math.floor(LIMIT / q); i++) {
    const body = GA ? { ga: { [GA]: q } } : { best: { section: SECTION, count: q } };
    const res = buyer.hold(token, admission, body);
    if (res.status === 201) {
      holds.push(res.json('hold_id'));
      have += q;
      continue;
    }
    const why = refusal(res, have + q > LIMIT);
    if (why === 'limit') limitRefused.add(1);
    break;
  }
  if (have > LIMIT) unexpected.add(1, { step: 'hold', status: '201', code: 'limit_not_enforced' });
  for (const id of holds) {
    const res = buyer.release(token, id);
    if (res.status !== 200) wrong(res, 'release');
  }
}
