// Open sale without a waiting room, the shape used to compare ticketing systems: BUYERS buyers
// (default VUS) race for a fixed quota from the moment the sale opens, arriving over RAMP_S. The
// buyer's journey is flash_sale.js's (lib/sale.js): availability, hold (seats picked, best seats,
// GA), pay with the same 503 rule, tickets; abandoners, late payers and greedy buyers included, with
// the same counters and thresholds. The seed's event must sell without a waiting room.
// Expected mix: as flash_sale.js, without queue_wait_ms and eta_error.
//
// Environment and knobs: as flash_sale.js (loadtest/README.md).
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e SEED_FILE=seed.json -e VUS=50 -e DURATION=60 -e RAMP_S=2 \
//     loadtest/open_sale.js
import { seed, need, EVENT } from './lib/seed.js';
import { buyersScenario, journey, thresholds } from './lib/sale.js';

need('open_sale needs a seed file with event_id', EVENT != null);
need('open_sale needs an event without a waiting room (seed "queue": false); use flash_sale.js', !seed.queue);

export const options = {
  scenarios: { buyers: buyersScenario('buyers') },
  thresholds,
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

export function buyers() {
  journey(false);
}
