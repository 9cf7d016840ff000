// Open sale without a waiting room (the shape used to compare ticketing systems): VUS buyers race
// for a fixed GA quota; each iteration is one buyer: token, hold 1, pay (retrying 503 with the same
// Idempotency-Key after Retry-After, as the buyer page does). A VU stops when the event sold out.
//   k6 run -e BASE_URL=... -e EVENT_ID=... -e VUS=200 -e ATTEMPTS=3000 loadtest/open_sale.js
import exec from 'k6/execution';
import { buyerToken, buy } from './lib/buyer.js';

const VUS = Number(__ENV.VUS || 200);
const ATTEMPTS = Number(__ENV.ATTEMPTS || 3000);

export const options = {
  scenarios: {
    buyers: { executor: 'shared-iterations', vus: VUS, iterations: ATTEMPTS, maxDuration: __ENV.MAX_DURATION || '300s' },
  },
  thresholds: {
    server_errors: ['count==0'],
    purchase_ms: ['p(99)<1000'],
  },
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const token = buyerToken();
  if (!token) return;
  buy(token, null, __ENV.GA_TYPE || 'floor', 1, 60);
}
