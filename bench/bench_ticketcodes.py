"""Ticket-code throughput: signing and verifying per second on this machine.

Run: python bench/bench_ticketcodes.py [N]
"""

from __future__ import annotations

import sys
import time

from gateway.orders import ticketcodes as tc


def main(n: int = 20_000) -> None:
    private, public = tc.generate_keypair()
    keys = {1: public}
    started = time.perf_counter()
    codes = [tc.encode(private_key=private, key_id=1, event_id=42, serial=i) for i in range(n)]
    signed = time.perf_counter() - started
    started = time.perf_counter()
    for code in codes:
        tc.verify(code, keys)
    verified = time.perf_counter() - started
    print(f"encode: {n / signed:,.0f} codes/s ({signed / n * 1e6:.1f} us each)")
    print(f"verify: {n / verified:,.0f} codes/s ({verified / n * 1e6:.1f} us each)")
    print(f"code length: {len(codes[0])} characters")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
