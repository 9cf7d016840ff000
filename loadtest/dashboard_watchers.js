// Dashboard watchers: WATCHERS organisers keep the live dashboard of the seed's event open while the
// sale runs: the SSE stream `GET /v1/events/{id}/live` with the seed's api_key (sales role), read in
// windows of WINDOW_S seconds that resume with Last-Event-ID (k6 has no SSE client: lib/watchers.js
// says why and how). The sale they watch is flash_sale.js's buyers (lib/sale.js, through the
// waiting room when the seed's event has one), a k6 scenario of its own; BUYERS=0, or a seed
// without a GA type and a section, watches a quiet event.
// What it proves: every watcher is answered at once and gets figures at least every second during
// the sale, also across reconnections, without an error. Expected: live_updates about WATCHERS x
// DURATION figures plus the seat changes, live_reconnects = windows - WATCHERS, live_errors 0; the
// buyers' counters and thresholds as in flash_sale.js.
//
// Environment: BASE_URL, SEED_FILE (event_id, api_key, and the sale's fields), VUS, DURATION, RAMP_S;
// knobs WATCHERS (5), WINDOW_S (5) and the buyer knobs of flash_sale.js (loadtest/README.md).
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e SEED_FILE=seed.json -e VUS=50 -e WATCHERS=5 -e DURATION=60 \
//     loadtest/dashboard_watchers.js
import { seed } from './lib/seed.js';
import { BUYERS, buyersScenario, journey, thresholds as saleThresholds } from './lib/sale.js';
import { watchersScenario, watch, thresholds as watcherThresholds } from './lib/watchers.js';

const SALE = BUYERS > 0 && Boolean(seed.ga_type || seed.section);

export const options = {
  scenarios: Object.assign({ watchers: watchersScenario('watchers') },
                           SALE ? { buyers: buyersScenario('buyers') } : {}),
  thresholds: Object.assign({}, SALE ? saleThresholds : {}, watcherThresholds),
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

export function watchers() {
  watch();
}

export function buyers() {
  journey(Boolean(seed.queue));
}
