// Flash sale with the waiting room on: BUYERS buyers arrive within ARRIVAL_S seconds for one GA
// event; each joins, polls, holds 1 ticket with its admission token, pays (retrying 503 with the
// same Idempotency-Key after Retry-After), and gives up after GIVE_UP_S.
//   k6 run -e BASE_URL=... -e EVENT_ID=... -e BUYERS=3000 loadtest/flash_sale_queue.js
import { sleep } from 'k6';
import exec from 'k6/execution';
import { buyerToken, waitForAdmission, buy } from './lib/buyer.js';

const BUYERS = Number(__ENV.BUYERS || 3000);
const VUS = Number(__ENV.VUS || BUYERS);  // one VU per buyer: every buyer arrives within ARRIVAL_S
const ARRIVAL_S = Number(__ENV.ARRIVAL_S || 10);
const GIVE_UP_S = Number(__ENV.GIVE_UP_S || 240);

export const options = {
  scenarios: {
    buyers: { executor: 'per-vu-iterations', vus: Math.min(VUS, BUYERS), iterations: Math.ceil(BUYERS / Math.min(VUS, BUYERS)),
              maxDuration: `${GIVE_UP_S + ARRIVAL_S + 120}s` },
  },
  thresholds: {
    server_errors: ['count==0'],
    purchase_ms: ['p(99)<1000'],
  },
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  // Buyers of one VU arrive one after the other; all buyers arrive spread over ARRIVAL_S.
  const n = exec.scenario.iterationInTest;
  if (n >= BUYERS) return;
  if (exec.vu.iterationInScenario === 0) sleep(Math.random() * ARRIVAL_S);
  const token = buyerToken();
  if (!token) return;
  const admitted = waitForAdmission(token, GIVE_UP_S);
  if (!admitted.admission) return;
  buy(token, admitted.admission, __ENV.GA_TYPE || 'floor', 1, 60);
}
