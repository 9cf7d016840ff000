// What every scenario reads from its environment and the runner's seed file.
//
// Environment (all optional; `flashgate loadtest` sets the first five):
//   BASE_URL   the gateway                                         http://127.0.0.1:8000
//   SEED_FILE  the seed file (JSON, below); a relative path is taken from the working directory
//   VUS        virtual users of the main scenario                 50
//   DURATION   seconds: the hard bound of every scenario          60
//   RAMP_S     seconds over which arrivals are spread             10
//   GRACE_S    seconds an iteration may run past DURATION before k6 cuts it off   5
//
// Seed file, written by the runner after it seeded a fresh event through the API:
//   {"event_id": 7, "queue": true, "ga_type": "floor", "ga_capacity": 500, "section": "A",
//    "seats": ["A-1-1", ...every seat label, in seat index order (the order of the availability string)],
//    "per_buyer_limit": 8, "hold_ttl_s": 20, "api_key": "fgk_... (sales role)",
//    "tickets": ["<code>", ...], "other_event_tickets": ["<code>", ...], "device_tokens": ["d....", ...]}
// Fields a scenario does not use may be absent. The lists are loaded once into SharedArrays (one
// copy for all VUs, not one per VU: 20,000 ticket codes are 2.4 MB).
// The older door file of bench/bench_scan.py, DOOR_FILE = {"codes": [...], "tokens": [...]}, is read
// as a seed file with `tickets` and `device_tokens`.
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';

// "60", "60s", "2m", "1m30s" -> seconds
export function seconds(value, fallback) {
  if (value === undefined || value === '') return fallback;
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  let total = 0;
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let m;
  let seen = 0;
  while ((m = re.exec(text)) !== null) {
    total += Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
    seen += m[0].length;
  }
  if (seen !== text.length) throw new Error(`not a duration: ${value}`);
  return total;
}

export function num(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (Number.isNaN(value)) throw new Error(`${name} must be a number, got ${raw}`);
  return value;
}

export const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8000';
export const VUS = num('VUS', 50);
export const DURATION_S = seconds(__ENV.DURATION, 60);
export const RAMP_S = seconds(__ENV.RAMP_S, 10);
export const GRACE_S = seconds(__ENV.GRACE_S, 5);

const PATH = __ENV.SEED_FILE || __ENV.DOOR_FILE || '';
let parsed = null;

function readSeed() {
  if (parsed) return parsed;
  if (!PATH) return (parsed = {});
  const file = PATH.startsWith('/') || !__ENV.PWD ? PATH : `${__ENV.PWD}/${PATH}`;
  const raw = JSON.parse(open(file));
  if (raw.codes && !raw.tickets) raw.tickets = raw.codes;           // DOOR_FILE
  if (raw.tokens && !raw.device_tokens) raw.device_tokens = raw.tokens;
  delete raw.codes;
  delete raw.tokens;
  return (parsed = raw);
}

// The scalars of the seed (event id, limits, key...), one small copy per VU.
export const seed = new SharedArray('seed', () => {
  const s = readSeed();
  return [Object.fromEntries(Object.entries(s).filter(([, v]) => !Array.isArray(v)))];
})[0];
export const seats = new SharedArray('seed.seats', () => readSeed().seats || []);
export const tickets = new SharedArray('seed.tickets', () => readSeed().tickets || []);
export const otherTickets = new SharedArray('seed.other_event_tickets', () => readSeed().other_event_tickets || []);
export const deviceTokens = new SharedArray('seed.device_tokens', () => readSeed().device_tokens || []);

export const EVENT = seed.event_id;

export function need(what, ok) {
  if (!ok) throw new Error(`${what} (SEED_FILE=${PATH || 'unset'})`);
}

// Milliseconds left before this scenario's DURATION is over (the bound every wait respects).
export function remainingMs() {
  return exec.scenario.startTime + DURATION_S * 1000 - Date.now();
}

// The k6 executor fields that bound a scenario by DURATION (+ GRACE_S for an iteration under way).
export function bounded() {
  return { maxDuration: `${DURATION_S}s`, gracefulStop: `${GRACE_S}s` };
}
