// Everything at once, in one k6 run: the flash sale's buyers (lib/sale.js), the door rush
// (lib/door.js) and organisers watching the live dashboard (lib/watchers.js), each a k6 scenario
// with its own executor, started together. The seed needs what all three need: the sale's fields
// and the api_key for event_id, tickets and device_tokens (bought before the run) for the door,
// whose event may be event_id or another one.
// What it proves: the three paths do not hurt each other: the thresholds of each scenario hold
// while the others run (hold and availability p95 < 50 ms, first checkout attempt p99 < 1 s, scan
// server time p99 <= 10 ms, figures at least every second on every dashboard), with no wrong answer
// and no 5xx anywhere.
// Expected mix: the union of flash_sale.js, door_rush.js and dashboard_watchers.js.
//
// Environment and knobs: those of the three scenarios (loadtest/README.md): VUS/BUYERS and the buyer
// percentages, RATE (here 200 scans/s by default: the door shares the machine with the sale),
// DUP_PCT, FORGED_PCT, OTHER_PCT, WATCHERS, WINDOW_S; DURATION bounds all three.
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e SEED_FILE=seed.json -e VUS=50 -e DURATION=60 loadtest/mixed.js
import { seed, need, EVENT } from './lib/seed.js';
import { buyersScenario, journey, thresholds as saleThresholds } from './lib/sale.js';
import { doorScenario, scan, thresholds as doorThresholds } from './lib/door.js';
import { watchersScenario, watch, thresholds as watcherThresholds } from './lib/watchers.js';

need('mixed needs a seed file with event_id', EVENT != null);

export const options = {
  scenarios: {
    buyers: buyersScenario('buyers'),
    door: doorScenario('door', 200),
    watchers: watchersScenario('watchers'),
  },
  thresholds: Object.assign({}, saleThresholds, doorThresholds, watcherThresholds),
  summaryTrendStats: ['med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function buyers() {
  journey(Boolean(seed.queue));
}

export function door() {
  scan();
}

export function watchers() {
  watch();
}
