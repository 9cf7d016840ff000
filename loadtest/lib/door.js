// The door's scans, shared by door_rush.js and mixed.js: what the gates send when every ticket holder
// arrives at once. Iteration n of the scenario is one scan; which kind it is follows from n alone, so
// the mix is exact whatever the number of VUs:
//   every ticket of the seed once               expected: admitted
//   DUP_PCT % more: second scans of tickets first scanned at least RATE scans (about 1 s) earlier,
//                   spread through the rush     expected: duplicate
//   FORGED_PCT % of all scans: a seed code with one bit of its signature flipped   expected: invalid
//   OTHER_PCT %  of all scans: a ticket of another event (seed other_event_tickets)  expected: wrong_event
// Any other answer counts in unexpected_results, any 5xx or no answer in server_errors.
//
// Knobs: RATE scans per second in total (2000 in door_rush.js, 200 in mixed.js), DUP_PCT (5),
// FORGED_PCT (1), OTHER_PCT (1; 0 when the seed has no other_event_tickets). Devices: the seed's
// device_tokens, one per VU in turn.
// The rush lasts what it takes at RATE, at most DURATION.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { BASE, DURATION_S, num, tickets, otherTickets, deviceTokens, need } from './seed.js';
import { serverErrors } from './buyer.js';  // any 5xx or no answer

const DUP_PCT = num('DUP_PCT', 5);
const FORGED_PCT = num('FORGED_PCT', 1);
const OTHER_PCT = otherTickets.length ? num('OTHER_PCT', 1) : 0;
const BAD_PCT = FORGED_PCT + OTHER_PCT;
const FIRST = tickets.length;
const GOOD = FIRST + Math.round((FIRST * DUP_PCT) / 100);
const TOTAL = Math.ceil(GOOD / (1 - BAD_PCT / 100));
// Set by doorScenario() (RATE's default depends on the script: 2000 alone, less beside a sale).
let RATE = 0;
// A second scan follows its first by at least GAP scans: about a second at RATE (half the tickets when
// there are fewer), so the first scan has been answered before its duplicate is sent.
let GAP = 1;

export const serverMs = new Trend('scan_server_ms', true);     // the gateway's own time (Server-Timing)
const RESULTS = ['admitted', 'duplicate', 'invalid', 'wrong_event', 'void', 'other'];
const results = Object.fromEntries(RESULTS.map((r) => [r, new Counter(`scan_${r}`)]));
export const unexpected = new Counter('unexpected_results');    // an answer other than the one expected

export const thresholds = {
  server_errors: ['count==0'],
  unexpected_results: ['count==0'],
  scan_server_ms: ['p(99)<=10'],
  // the rush kept RATE: a scan due while no VU is free is dropped, and the rush, as long as RATE needs,
  // ends before the last tickets were scanned
  'dropped_iterations{scenario:door}': ['count==0'],
};

// The k6 scenario of the door: RATE scans per second (default `defaultRate`) for what the rush takes.
export function doorScenario(execName, defaultRate) {
  RATE = num('RATE', defaultRate || 2000);
  GAP = Math.max(1, Math.min(Math.round(RATE), Math.ceil(FIRST / 2)));
  need('the door needs tickets and device_tokens in the seed file', FIRST > 0 && deviceTokens.length > 0);
  need('FORGED_PCT + OTHER_PCT must stay below 100', BAD_PCT < 100);
  const seconds = Math.max(1, Math.min(DURATION_S, Math.ceil(TOTAL / RATE)));
  return {
    executor: 'constant-arrival-rate', rate: RATE, timeUnit: '1s', duration: `${seconds}s`, exec: execName,
    // enough VUs ready for a scan to take 100 ms at RATE: k6 allocating more during the rush lags it
    preAllocatedVUs: Math.min(1000, Math.max(deviceTokens.length, 40, Math.ceil(RATE / 10))), maxVUs: 1000,
    gracefulStop: '2s',
  };
}

// Flip one bit of the signature (the last base32 character's top bit): a code that must be refused.
function altered(code) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const i = alphabet.indexOf(code.charAt(code.length - 1));
  return code.slice(0, -1) + alphabet[i ^ 16];
}

// Spread `part` of every `whole` positions evenly: is position i one of them, and how many came before?
const spread = (i, part, whole) => Math.floor(((i + 1) * part) / whole) > Math.floor((i * part) / whole);
const before = (i, part, whole) => Math.floor((i * part) / whole);

// Scan n of the rush: the code and the answer it must get.
export function plan(n) {
  if (BAD_PCT > 0 && spread(n, BAD_PCT, 100)) {
    const j = before(n, BAD_PCT, 100);
    if (spread(j, FORGED_PCT, BAD_PCT)) return { code: altered(tickets[(j * 7919) % FIRST]), expected: 'invalid' };
    return { code: otherTickets[j % otherTickets.length], expected: 'wrong_event' };
  }
  const k = n - before(n, BAD_PCT, 100);           // good scans before this one
  if (k >= GOOD) return null;
  // second scans start after GAP first scans and are spread among the rest; the leftovers close the rush
  const dups = k < GAP ? 0 : before(k - GAP, DUP_PCT, 100 + DUP_PCT);
  const firsts = k - dups;
  const isDup = (k >= GAP && spread(k - GAP, DUP_PCT, 100 + DUP_PCT)) || firsts >= FIRST;
  if (!isDup) return { code: tickets[firsts], expected: 'admitted' };
  const seen = Math.min(firsts, FIRST);
  return { code: tickets[(k * 7919) % Math.max(1, seen - GAP)], expected: 'duplicate' };
}

export function scan() {
  const n = exec.scenario.iterationInTest;
  if (n >= TOTAL) return;
  const next = plan(n);
  if (!next) return;
  const token = deviceTokens[exec.vu.idInTest % deviceTokens.length];
  const res = http.post(`${BASE}/v1/scan`, JSON.stringify({ code: next.code }), {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    tags: { name: 'scan', step: 'scan', expected: next.expected },
  });
  if (res.status !== 200) {
    if (res.status === 0 || res.status >= 500) serverErrors.add(1, { step: 'scan' });
    else unexpected.add(1, { expected: next.expected, result: String(res.status) });
    return;
  }
  const timing = /dur=([\d.]+)/.exec(res.headers['Server-Timing'] || '');
  if (timing) serverMs.add(Number(timing[1]));
  const result = res.json('result');
  (results[result] || results.other).add(1);
  if (result !== next.expected) unexpected.add(1, { expected: next.expected, result: String(result) });
}
