// Door rush: the doors open and every ticket holder arrives at once. The seed's door devices (one
// token per VU in turn) scan at a constant RATE of scans per second in total: every ticket of the
// seed once (expected: admitted), DUP_PCT % second scans of tickets scanned about a second before
// (expected: duplicate, with when and where the first scan was), FORGED_PCT % altered codes
// (expected: invalid) and OTHER_PCT % tickets of another event (expected: wrong_event). Any other
// answer, any 5xx and any error is counted against the run. The rush lasts what it takes at RATE,
// at most DURATION.
// What it proves: first scan wins under load, and the server answers fast: the scan route reports its
// own time in `Server-Timing` (scan_server_ms), thresholds p99 <= 10 ms, no wrong answer, and RATE
// kept (no scan dropped by k6 for want of a free VU).
//
// Environment: BASE_URL, SEED_FILE (tickets, device_tokens, other_event_tickets), DURATION; knobs
// RATE (2000), DUP_PCT (5), FORGED_PCT (1), OTHER_PCT (1) (lib/door.js). DOOR_FILE, the older
// {"codes": [...], "tokens": [...]} file of bench/bench_scan.py --k6, is still read in place of SEED_FILE.
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e SEED_FILE=seed.json -e RATE=2000 -e DURATION=60 loadtest/door_rush.js
import { doorScenario, scan, thresholds } from './lib/door.js';

export const options = {
  scenarios: { door: doorScenario('door') },
  thresholds,
  summaryTrendStats: ['med', 'p(90)', 'p(99)', 'max'],
};

export function door() {
  scan();
}
