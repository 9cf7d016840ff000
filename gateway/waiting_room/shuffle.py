"""The verifiable pre-queue shuffle.

Everyone who joins before the sale opens is equal. At opening, arrival number
`n` (1-based, among the `size` pre-queue arrivals) gets place
`shuffle_place(seed, size, n)`: a keyed permutation of `1..size` (a 6-round
Feistel network over SHA-1 with cycle walking, the same algorithm as
`lua/queue_join.lua`). The seed is drawn when the pre-queue opens; its SHA-256
(the commitment) is published then, the seed itself when the sale opens, so
anyone can check that the order was fixed before anyone could know it.

Costs: one place is 6 SHA-1 per Feistel pass, fewer than 4 passes on average
(the Feistel domain is under 4x the size); no table of `size` entries.
"""

from __future__ import annotations

import hashlib
import os

ROUNDS = 6


def new_seed() -> str:
    return os.urandom(32).hex()


def commitment(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _half_bits(size: int) -> int:
    h = 1
    while 4 ** h < size:
        h += 1
    return h


def shuffle_place(seed: str, size: int, n: int) -> int:
    """The place (1..size) of pre-queue arrival `n` (1..size)."""
    if not 1 <= n <= size:
        raise ValueError("arrival number out of the pre-queue")
    h = _half_bits(size)
    m = 1 << h
    x = n - 1
    sha1 = hashlib.sha1
    while True:
        left, right = divmod(x, m)
        for i in range(ROUNDS):
            f = int(sha1(f"{seed}:{i}:{right}".encode()).hexdigest()[:8], 16) % m
            left, right = right, left ^ f
        x = left * m + right
        if x < size:
            return x + 1
