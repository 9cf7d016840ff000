"""Check a Flashgate waiting room's order from the outside, with the standard library only.

    python verify_shuffle.py https://tickets.example/v1/events/12 [--arrival 57]
    flashgate verify-shuffle https://tickets.example/v1/events/12 [--arrival 57]

It reads the event's public information (`GET /v1/events/{id}/public`: the pre-queue's commitment,
and once the sale opened its seed and size) and the public admission log
(`GET /v1/events/{id}/queue/log`: per place, the pre-queue arrival it holds and when it was admitted
or that it was skipped), then checks:

  (a) the commitment is SHA-256 of the seed text (64 lowercase hex characters, as ASCII);
  (b) the whole pre-queue order: arrivals 1..size sorted by (key(n), n), where key(n) is the first 13
      hex digits of SHA-1(seed text + ":" + decimal n) read as an integer, gives exactly the arrival the
      log names for every place (and, with --arrival, the place of that arrival: the `arrival` number
      your poll answer carries);
  (c) admissions went in place order: no place was admitted before a lower one was decided, i.e.
      admission times never decrease along the places (skipped places, which stopped polling, aside).

Prints what it checked and exits 0 when everything holds, 1 when something does not. This file
imports nothing from Flashgate: copy it anywhere (docs/verify_shuffle.py is the same file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import urllib.request

KEY_HEX_DIGITS = 13
PAGE = 10_000


def commitment_of(seed: str) -> str:
    return hashlib.sha256(seed.encode("ascii")).hexdigest()


def rank_key(seed: str, n: int) -> int:
    return int(hashlib.sha1(f"{seed}:{n}".encode("ascii")).hexdigest()[:KEY_HEX_DIGITS], 16)


def prequeue_order(seed: str, size: int) -> list[int]:
    """The pre-queue's arrival numbers in place order (element 0 has place 1)."""
    return [n for _, n in sorted((rank_key(seed, n), n) for n in range(1, size + 1))]


def _get(url: str) -> dict:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (the URL is the user's)
        return json.loads(resp.read())


def event_base(url: str) -> tuple[str, int]:
    """`https://host/v1/events/12`, `.../v1/events/12/public` or the buyer page `https://host/buy/12`."""
    m = re.match(r"^(https?://[^/]+)(?:/.*)?/(?:v1/events|buy)/(\d+)", url)
    if not m:
        raise SystemExit(f"not an event URL: {url} (expected .../v1/events/ID or .../buy/ID)")
    return m.group(1), int(m.group(2))


def fetch_log(origin: str, event_id: int) -> dict:
    """The whole admission log, page by page."""
    first = _get(f"{origin}/v1/events/{event_id}/queue/log?from=1&count={PAGE}")
    log = dict(first)
    admitted, arrivals = list(first["admitted"]), list(first.get("arrivals", []))
    while first["from"] + len(first["admitted"]) <= first["upto"] and first["admitted"]:
        first = _get(f"{origin}/v1/events/{event_id}/queue/log?from={first['from'] + len(first['admitted'])}"
                     f"&count={PAGE}")
        admitted += first["admitted"]
        arrivals += first.get("arrivals", [])
    log["admitted"], log["arrivals"] = admitted, arrivals
    return log


def verify(public: dict, log: dict, arrival: int | None = None, out=sys.stdout) -> bool:
    ok = True

    def say(good: bool, text: str) -> None:
        nonlocal ok
        ok = ok and good
        print(("ok    " if good else "FAIL  ") + text, file=out)

    order = (public.get("queue") or {}).get("order")
    if not order:
        say(True, "no pre-queue: places are arrival order")
        seed, size = "", 0
    else:
        seed, size = order.get("seed"), order.get("size")
        if not seed:
            say(False, "the seed is not revealed yet (the sale has not opened)")
            return False
        say(commitment_of(seed) == order["commitment"],
            f"(a) commitment {order['commitment'][:16]}… = SHA-256 of the revealed seed")
        if log.get("order") and (log["order"].get("seed"), log["order"].get("size")) != (seed, size):
            say(False, "the admission log names another seed or size than the public event information")
    if size:
        expected = prequeue_order(seed, size)
        claimed = log.get("arrivals", [])[:size]
        known = min(len(claimed), size)
        wrong = [p + 1 for p in range(known) if claimed[p] != expected[p]]
        say(not wrong and known == min(size, log["upto"]),
            f"(b) the order of all {size} pre-queue places ({known} in the log so far) follows from the seed"
            + (f"; differs at places {wrong[:10]}" if wrong else ""))
        if arrival is not None:
            if 1 <= arrival <= size:
                print(f"      arrival {arrival} holds place {expected.index(arrival) + 1} of {size}", file=out)
            else:
                print(f"      arrival {arrival} joined after opening: place {arrival}", file=out)
    last, inversions = None, []
    for i, t in enumerate(log["admitted"]):
        if t is None or t == "skipped":
            continue
        if last is not None and t < last[1]:
            inversions.append((last[0], log["from"] + i))
        last = (log["from"] + i, t)
    decided = len(log["admitted"])
    say(not inversions, f"(c) {decided} decided places were admitted in place order"
        + (f"; out of order: {inversions[:10]}" if inversions else ""))
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check a waiting room's published order and admission log.")
    p.add_argument("event_url", help="e.g. https://tickets.example/v1/events/12 or https://tickets.example/buy/12")
    p.add_argument("--arrival", type=int, help="your arrival number (in your poll answer): prints your place")
    args = p.parse_args(argv)
    origin, event_id = event_base(args.event_url)
    public = _get(f"{origin}/v1/events/{event_id}/public")
    log = fetch_log(origin, event_id)
    return 0 if verify(public, log, args.arrival) else 1


if __name__ == "__main__":
    sys.exit(main())
