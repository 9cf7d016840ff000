// Flash sale: BUYERS buyers (default VUS) arrive in a spike over RAMP_S at one event; each gets a
// buyer token, joins the waiting room when the event has one (polling at poll_after_s), reads
// availability, holds (PICK_PCT pick seats and collide on purpose, BEST_PCT hold the best seats,
// the rest a GA quantity), pays through checkout (a 503 retried after Retry-After with the same
// Idempotency-Key) and fetches the tickets. Some abandon (release, or let the hold expire), some pay
// after their hold expired (expected: 409 hold_expired), some try to take more than the per-buyer
// limit (expected: 429 limit_exceeded). A buyer told "sold out" stops.
// What it proves: the sale sells under a spike without a 5xx, every refusal is the right one, holds
// and availability stay fast (p95 < 50 ms) and a first checkout attempt answers within 1 s (p99).
// Expected mix: purchases until sold out, hold_contention > 0 (pickers race), limit_refused =
// greedy buyers, late_pay_refused = late payers (when DURATION > hold_ttl_s), zero
// unexpected_answers and server_errors.
//
// Environment: BASE_URL, SEED_FILE, VUS, DURATION, RAMP_S, GRACE_S (lib/seed.js); the buyer knobs
// BUYERS, PICK_PCT, BEST_PCT, PICK_WINDOW, PICK_RETRIES, ABANDON_PCT, LATE_PAY_PCT, GREEDY_PCT
// (lib/sale.js); defaults in loadtest/README.md.
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e SEED_FILE=seed.json -e VUS=50 -e DURATION=60 loadtest/flash_sale.js
import { seed, need, EVENT } from './lib/seed.js';
import { buyersScenario, journey, thresholds } from './lib/sale.js';

need('flash_sale needs a seed file with event_id', EVENT != null);

export const options = {
  scenarios: { buyers: buyersScenario('buyers') },
  thresholds,
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

export function buyers() {
  journey(Boolean(seed.queue));
}
