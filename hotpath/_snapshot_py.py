"""Pure-Python twin of ``hotpath._snapshot_c``: same classes, same algorithms, same answers.

Used when the extension is not built or ``FLASHGATE_PURE_PYTHON=1``. Every answer must
match the native module bit for bit; ``tests/hotpath`` replays random operations on both.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from operator import index, or_

from hotpath._layout import key_bytes, parse_rows

__all__ = [
    "OP_HOLD", "OP_RELEASE", "OP_SELL", "OP_VOID", "OP_EXPIRE",
    "AvailabilitySnapshot", "RecentSet", "TokenBucketTable",
]

OP_HOLD = 1  # set held
OP_RELEASE = 2  # clear held
OP_SELL = 3  # clear held, set sold
OP_VOID = 4  # clear sold
OP_EXPIRE = 5  # clear held (a hold that timed out)

_HELD = 1
_SOLD = 2
# Per-seat state byte = sold bit << 1 | held bit; its class (0 free, 1 held, 2 sold).
_CLASS = (0, 1, 2, 2)
_RENDER = bytes.maketrans(b"\x00\x01\x02\x03", b"0122")
# Redis bit order: bit 0 of a string is the most significant bit of its byte 0.
_UNPACK_HELD = [bytes((b >> (7 - j)) & 1 for j in range(8)) for b in range(256)]
_UNPACK_SOLD = [bytes(((b >> (7 - j)) & 1) << 1 for j in range(8)) for b in range(256)]


def _float(x: float) -> float:
    """float() as a C ``double`` argument converts it: numbers only, never text."""
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {type(x).__name__}")
    return float(x)


def _unpack(data: bytes | None, table: list[bytes], n: int) -> bytes:
    if not data:
        return bytes(n)
    bits = b"".join([table[b] for b in bytes(data[: (n + 7) // 8])])
    return bits[:n].ljust(n, b"\0")


class AvailabilitySnapshot:
    """Read-only, in-process copy of one event's seat bitmaps.

    Costs: one byte per seat plus O(rows + sections) ints. is_* O(1); row_of /
    section_of O(log rows); section_counts O(sections); apply_changes O(log sections)
    per changed seat; load / render_state / sold_bytes O(seats); best_available
    O(seats of the section) in the worst case.
    """

    __slots__ = (
        "_n", "_row_start", "_row_section", "_sec_row_start", "_sec_start",
        "_state", "_version", "_free", "_held", "_sold",
    )

    def __init__(self, rows: Iterable[tuple[int, int]]) -> None:
        row_start, row_section, sec_row_start = parse_rows(rows)
        self._n = row_start[-1]
        self._row_start = row_start
        self._row_section = row_section
        self._sec_row_start = sec_row_start
        # Seat index where each section starts, plus the seat count.
        self._sec_start = [row_start[r] for r in sec_row_start]
        self._state = bytearray(self._n)
        self._version = 0
        n_sections = len(sec_row_start) - 1
        self._free = [self._sec_start[s + 1] - self._sec_start[s] for s in range(n_sections)]
        self._held = [0] * n_sections
        self._sold = [0] * n_sections

    # -- shape -------------------------------------------------------------------------
    @property
    def n_seats(self) -> int:
        return self._n

    @property
    def n_sections(self) -> int:
        return len(self._sec_row_start) - 1

    @property
    def n_rows(self) -> int:
        return len(self._row_section)

    @property
    def version(self) -> int:
        return self._version

    def _seat(self, i: int) -> int:
        i = index(i)
        if i < 0 or i >= self._n:
            raise IndexError(f"seat index {i} out of range 0..{self._n - 1}")
        return i

    def _section(self, section: int) -> int:
        section = index(section)
        if section < 0 or section >= len(self._free):
            raise IndexError(f"section {section} out of range 0..{len(self._free) - 1}")
        return section

    def row_of(self, i: int) -> int:
        return bisect_right(self._row_start, self._seat(i)) - 1

    def section_of(self, i: int) -> int:
        return bisect_right(self._sec_start, self._seat(i)) - 1

    def row_range(self, row: int) -> tuple[int, int]:
        row = index(row)
        if row < 0 or row >= len(self._row_section):
            raise IndexError(f"row {row} out of range 0..{len(self._row_section) - 1}")
        return self._row_start[row], self._row_start[row + 1]

    # -- state -------------------------------------------------------------------------
    def load(self, sold: bytes | None, held: bytes | None, version: int) -> None:
        n = self._n
        version = index(version)
        state = bytearray(map(or_, _unpack(sold, _UNPACK_SOLD, n), _unpack(held, _UNPACK_HELD, n)))
        self._state = state
        self._version = version
        starts = self._sec_start
        for s in range(len(self._free)):
            a, b = starts[s], starts[s + 1]
            self._free[s] = state.count(0, a, b)
            self._held[s] = state.count(_HELD, a, b)
            self._sold[s] = (b - a) - self._free[s] - self._held[s]

    def is_free(self, i: int) -> bool:
        return self._state[self._seat(i)] == 0

    def is_sold(self, i: int) -> bool:
        return bool(self._state[self._seat(i)] & _SOLD)

    def is_held(self, i: int) -> bool:
        return bool(self._state[self._seat(i)] & _HELD)

    def any_sold(self, indices: Iterable[int]) -> bool:
        state = self._state
        for i in indices:
            if state[self._seat(i)] & _SOLD:
                return True
        return False

    def section_counts(self) -> list[tuple[int, int, int]]:
        return list(zip(self._free, self._held, self._sold))

    def count_free(self, section: int) -> int:
        return self._free[self._section(section)]

    def total_free(self) -> int:
        return sum(self._free)

    def _set(self, i: int, new: int) -> None:
        old = self._state[i]
        if old == new:
            return
        self._state[i] = new
        before, after = _CLASS[old], _CLASS[new]
        if before != after:
            s = bisect_right(self._sec_start, i) - 1
            counters = (self._free, self._held, self._sold)
            counters[before][s] -= 1
            counters[after][s] += 1

    def apply_changes(self, records: Iterable[tuple[int, int, Sequence[int]]]) -> bool:
        state = self._state
        for version, op, seats in records:
            version = index(version)
            if version <= self._version:
                continue
            if version > self._version + 1:
                return False
            op = index(op)
            if op < OP_HOLD or op > OP_EXPIRE:
                raise ValueError(f"unknown change op {op}")
            checked = [self._seat(i) for i in seats]
            for i in checked:
                old = state[i]
                if op == OP_HOLD:
                    new = old | _HELD
                elif op == OP_SELL:
                    new = _SOLD
                elif op == OP_VOID:
                    new = old & _HELD
                else:  # OP_RELEASE, OP_EXPIRE
                    new = old & _SOLD
                self._set(i, new)
            self._version = version
        return True

    def best_available(self, section: int, count: int, exclude: Iterable[int] = ()) -> list[int] | None:
        section = self._section(section)
        count = index(count)
        if count < 1:
            raise ValueError("count must be at least 1")
        excluded = {self._seat(i) for i in exclude}
        state = self._state
        row_start = self._row_start
        for r in range(self._sec_row_start[section], self._sec_row_start[section + 1]):
            s, e = row_start[r], row_start[r + 1]
            if e - s < count:
                continue
            # Block centre vs row centre, doubled to stay in integers: |2q + count - s - e|.
            target2 = s + e - count
            best, best_d = -1, 0
            run = 0
            for i in range(s, e):
                if state[i] or i in excluded:
                    run = 0
                    continue
                run += 1
                if run >= count:
                    q = i - count + 1
                    d = abs(2 * q - target2)
                    if best < 0 or d < best_d:
                        best, best_d = q, d
                    elif 2 * q > target2:
                        break  # past the centre: later blocks only get farther
            if best >= 0:
                return list(range(best, best + count))
        return None

    # -- export ------------------------------------------------------------------------
    def render_state(self) -> bytes:
        return bytes(self._state).translate(_RENDER)

    def _pack(self, bit: int) -> bytes:
        state, n = self._state, self._n
        out = bytearray((n + 7) // 8)
        for i in range(n):
            if state[i] & bit:
                out[i >> 3] |= 0x80 >> (i & 7)
        return bytes(out)

    def sold_bytes(self) -> bytes:
        return self._pack(_SOLD)

    def held_bytes(self) -> bytes:
        return self._pack(_HELD)


class RecentSet:
    """Bounded set of recently seen keys with a fixed time to live.

    Costs: a dict in insertion order (O(1) add / contains / eviction), one entry per key
    (the key bytes plus a float), at most ``capacity`` entries; when full, the entry
    added longest ago is evicted.
    """

    __slots__ = ("_capacity", "_ttl", "_expiry")

    def __init__(self, capacity: int, ttl: float) -> None:
        capacity = index(capacity)
        ttl = _float(ttl)
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not ttl >= 0.0 or math.isinf(ttl):
            raise ValueError("ttl must be a finite number >= 0")
        self._capacity = capacity
        self._ttl = ttl
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ttl(self) -> float:
        return self._ttl

    def add(self, key: str | bytes, now: float) -> bool:
        key = key_bytes(key)
        now = _float(now)
        expiry = self._expiry.get(key)
        if expiry is not None:
            if now < expiry:
                return False
            # Expired: recorded again as if new, so it becomes the newest entry.
            self._expiry.move_to_end(key)
        elif len(self._expiry) >= self._capacity:
            self._expiry.popitem(last=False)
        self._expiry[key] = now + self._ttl
        return True

    def contains(self, key: str | bytes, now: float) -> bool:
        key = key_bytes(key)
        now = _float(now)
        expiry = self._expiry.get(key)
        return expiry is not None and now < expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def clear(self) -> None:
        self._expiry.clear()


class TokenBucketTable:
    """Token buckets per key (``rate`` tokens/s, up to ``burst``), bounded to ``capacity`` keys.

    Costs: a dict in recency order (O(1) allow / retry_after / eviction), one entry per
    key (the key bytes plus two floats). When a new key arrives and the table is full,
    the least recently used bucket is dropped; a dropped key starts full again.
    """

    __slots__ = ("_rate", "_burst", "_capacity", "_buckets")

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        rate = _float(rate)
        burst = _float(burst)
        capacity = index(capacity)
        if not rate >= 0.0 or math.isinf(rate):
            raise ValueError("rate must be a finite number >= 0")
        if not burst >= 0.0 or math.isinf(burst):
            raise ValueError("burst must be a finite number >= 0")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._rate = rate
        self._burst = burst
        self._capacity = capacity
        # key -> [tokens, last refill time]
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def capacity(self) -> int:
        return self._capacity

    def allow(self, key: str | bytes, now: float, cost: float = 1.0) -> bool:
        key = key_bytes(key)
        now = _float(now)
        cost = _float(cost)
        if not cost >= 0.0:
            raise ValueError("cost must be >= 0")
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._capacity:
                self._buckets.popitem(last=False)
            bucket = [self._burst, now]
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0.0:
                tokens = bucket[0] + elapsed * self._rate
                bucket[0] = self._burst if tokens > self._burst else tokens
                bucket[1] = now
        if bucket[0] >= cost:
            bucket[0] -= cost
            return True
        return False

    def retry_after(self, key: str | bytes, now: float, cost: float = 1.0) -> float:
        """Seconds until ``allow(key, ...)`` would pass; does not consume or refresh."""
        now = _float(now)
        cost = _float(cost)
        if not cost >= 0.0:
            raise ValueError("cost must be >= 0")
        bucket = self._buckets.get(key_bytes(key))
        if bucket is None:
            tokens = self._burst
        else:
            tokens = bucket[0]
            elapsed = now - bucket[1]
            if elapsed > 0.0:
                tokens = tokens + elapsed * self._rate
                if tokens > self._burst:
                    tokens = self._burst
        if tokens >= cost:
            return 0.0
        if cost > self._burst or self._rate <= 0.0:
            return math.inf
        return (cost - tokens) / self._rate

    def __len__(self) -> int:
        return len(self._buckets)

    def clear(self) -> None:
        self._buckets.clear()
