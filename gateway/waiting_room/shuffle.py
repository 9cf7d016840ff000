"""The verifiable pre-queue order.

Everyone who joins before the sale opens is equal: at opening, the pre-queue's
arrivals are ranked by a keyed hash of the seed and their arrival number, and
that rank is their place. Exactly (docs/waiting-room.md, "Verifying the order"):

    seed        32 random bytes, written as 64 lowercase hex characters (the *seed text*)
    commitment  SHA-256 of the seed text's ASCII bytes, as 64 lowercase hex characters
    key(n)      the first 13 hex digits (52 bits) of SHA-1(seed text + ":" + decimal n), as an integer
    order       arrivals 1..size sorted by (key(n), n); place = 1-based position in that order

The commitment is published when the pre-queue opens, the seed and the size when
the sale opens, so anyone can check that the order was fixed before anyone could
know it. Because each arrival's key depends only on the seed and its own arrival
number, adding or removing other arrivals never swaps a pair: nobody who learns
the seed can steer a place by adding joins or timing the opening.

The same key is computed by `lua/queue_join.lua` (a sorted set scored by key(n)),
so the place a rejoining buyer gets from Redis is the place computed here.
"""

from __future__ import annotations

import os
from array import array

# The order's definition lives in verify.py, which imports nothing from Flashgate so that anyone can
# run it (docs/verify_shuffle.py is the same file): one implementation for the gateway and auditors.
from gateway.waiting_room.verify import KEY_HEX_DIGITS, commitment_of, prequeue_order, rank_key

__all__ = ["KEY_HEX_DIGITS", "commitment", "new_seed", "prequeue_order", "prequeue_table", "rank_key",
           "shuffle_place"]

commitment = commitment_of  # SHA-256 of the seed text (its 64 hex characters as ASCII), in hex


def new_seed() -> str:
    return os.urandom(32).hex()


def prequeue_table(seed: str, size: int) -> tuple[list[int], array]:
    """The pre-queue's arrivals in place order, and places[n] = the place of arrival n (places[0] unused)."""
    order = prequeue_order(seed, size)
    places = array("I", bytes(4 * (size + 1)))
    for place, n in enumerate(order, start=1):
        places[n] = place
    return order, places


def shuffle_place(seed: str, size: int, n: int) -> int:
    """The place (1..size) of pre-queue arrival `n` (1..size): 1 + the arrivals ranked before it."""
    if not 1 <= n <= size:
        raise ValueError("arrival number out of the pre-queue")
    mine = (rank_key(seed, n), n)
    return 1 + sum(1 for m in range(1, size + 1) if (rank_key(seed, m), m) < mine)
