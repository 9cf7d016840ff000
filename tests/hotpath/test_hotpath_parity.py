"""Differential tests: random operations replayed on the native module, the pure twin and a
trivially correct model (Python sets and dicts); every answer must agree."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- model -----------------------------------------------------------------------------------
class SnapshotModel:
    def __init__(self, sections):
        self.rows = []  # (section, start, stop)
        start = 0
        for s, sizes in enumerate(sections):
            for n in sizes:
                self.rows.append((s, start, start + n))
                start += n
        self.n = start
        self.n_sections = len(sections)
        self.sold, self.held, self.version = set(), set(), 0

    def load(self, sold, held, version):
        def bits(data):
            return {i for i in range(min(self.n, len(data) * 8)) if data[i >> 3] & (0x80 >> (i & 7))}
        self.sold, self.held, self.version = bits(sold), bits(held), version

    def apply(self, records):
        for version, op, seats in records:
            if version <= self.version:
                continue
            if version > self.version + 1:
                return False
            for i in seats:
                if op == 1:
                    self.held.add(i)
                elif op in (2, 5):
                    self.held.discard(i)
                elif op == 3:
                    self.held.discard(i)
                    self.sold.add(i)
                elif op == 4:
                    self.sold.discard(i)
            self.version = version
        return True

    def free(self, i):
        return i not in self.sold and i not in self.held

    def counts(self):
        out = [[0, 0, 0] for _ in range(self.n_sections)]
        for s, a, b in self.rows:
            for i in range(a, b):
                out[s][2 if i in self.sold else 1 if i in self.held else 0] += 1
        return [tuple(c) for c in out]

    def render(self):
        return b"".join(b"2" if i in self.sold else b"1" if i in self.held else b"0"
                        for i in range(self.n))

    def bitmap(self, seats):
        out = bytearray((self.n + 7) // 8)
        for i in seats:
            out[i >> 3] |= 0x80 >> (i & 7)
        return bytes(out)

    def best(self, section, count, exclude):
        for s, a, b in self.rows:
            if s != section:
                continue
            blocks = [q for q in range(a, b - count + 1)
                      if all(self.free(q + k) and q + k not in exclude for k in range(count))]
            if blocks:
                q = min(blocks, key=lambda q: (abs(2 * q + count - a - b), q))
                return list(range(q, q + count))
        return None


layouts = st.lists(st.lists(st.integers(0, 70), min_size=1, max_size=4), min_size=1, max_size=4)


@st.composite
def bitmaps(draw, n):
    n_bytes = (n + 7) // 8
    if draw(st.booleans()):
        return draw(st.binary(max_size=n_bytes + 3))
    # Sparse: a few seats set, so that free blocks exist.
    seats = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=max(n // 3, 1))) if n else []
    out = bytearray(draw(st.integers(0, n_bytes + 2)))
    for i in seats:
        if i >> 3 < len(out):
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def _same(answers):
    first = answers[0]
    assert all(a == first for a in answers[1:]), answers
    return first


@SETTINGS
@given(data=st.data(), sections=layouts)
def test_snapshot_parity(native, pure, data, sections):
    rows = [(s, n) for s, sizes in enumerate(sections) for n in sizes]
    snaps = [native.AvailabilitySnapshot(rows), pure.AvailabilitySnapshot(rows)]
    model = SnapshotModel(sections)
    n = model.n
    for _ in range(data.draw(st.integers(1, 12))):
        action = data.draw(st.sampled_from(["load", "apply", "apply", "best", "best", "seats"]))
        if action == "load":
            sold, held = data.draw(bitmaps(n)), data.draw(bitmaps(n))
            version = data.draw(st.integers(0, 50))
            for snap in snaps:
                snap.load(sold, held, version)
            model.load(sold, held, version)
        elif action == "apply" and n:
            records = []
            version = model.version
            for _ in range(data.draw(st.integers(0, 6))):
                version += data.draw(st.sampled_from([-1, 0, 1, 1, 1, 1, 2]))
                seats = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
                records.append((version, data.draw(st.integers(1, 5)), seats))
            assert _same([snap.apply_changes(records) for snap in snaps] + [model.apply(records)]) in (
                True, False)
        elif action == "best":
            section = data.draw(st.integers(0, len(sections) - 1))
            count = data.draw(st.one_of(st.integers(1, 6), st.integers(1, 72)))
            exclude = data.draw(st.lists(st.integers(0, n - 1), max_size=4)) if n else []
            _same([snap.best_available(section, count, exclude) for snap in snaps]
                  + [model.best(section, count, set(exclude))])
        elif n:
            seats = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
            for i in seats:
                _same([(s.is_free(i), s.is_sold(i), s.is_held(i), s.row_of(i), s.section_of(i))
                       for s in snaps])
                assert snaps[0].is_free(i) == model.free(i)
                assert snaps[0].is_sold(i) == (i in model.sold)
            _same([s.any_sold(seats) for s in snaps] + [any(i in model.sold for i in seats)])
        # After every step, the whole state agrees.
        _same([s.version for s in snaps] + [model.version])
        _same([s.section_counts() for s in snaps] + [model.counts()])
        _same([[s.count_free(k) for k in range(len(sections))] for s in snaps])
        _same([s.total_free() for s in snaps] + [sum(c[0] for c in model.counts())])
        _same([s.render_state() for s in snaps] + [model.render()])
        _same([s.sold_bytes() for s in snaps] + [model.bitmap(model.sold)])
        _same([s.held_bytes() for s in snaps] + [model.bitmap(model.held)])


# -- RecentSet ------------------------------------------------------------------------------
class RecentModel:
    def __init__(self, capacity, ttl):
        self.capacity, self.ttl, self.entries = capacity, ttl, []  # [key, expiry], oldest first

    def _find(self, key):
        return next((e for e in self.entries if e[0] == key), None)

    def add(self, key, now):
        entry = self._find(key)
        if entry is not None and now < entry[1]:
            return False
        if entry is not None:
            self.entries.remove(entry)
        elif len(self.entries) >= self.capacity:
            self.entries.pop(0)
        self.entries.append([key, now + self.ttl])
        return True

    def contains(self, key, now):
        entry = self._find(key)
        return entry is not None and now < entry[1]


keys = st.one_of(st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                 st.sampled_from([b"a", b"b", b"\x00", b"\xff\x00", "\u00e9"]))
steps = st.floats(-1.0, 5.0, allow_nan=False)


@SETTINGS
@given(capacity=st.integers(1, 5), ttl=st.sampled_from([0.0, 0.5, 1.0, 3.7]),
       ops=st.lists(st.tuples(st.sampled_from(["add", "contains", "len", "clear"]), keys, steps),
                    max_size=60))
def test_recent_set_parity(native, pure, capacity, ttl, ops):
    sets = [native.RecentSet(capacity, ttl), pure.RecentSet(capacity, ttl)]
    model = RecentModel(capacity, ttl)
    now = 100.0
    for op, key, step in ops:
        now += step
        raw = key.encode() if isinstance(key, str) else key
        if op == "add":
            _same([s.add(key, now) for s in sets] + [model.add(raw, now)])
        elif op == "contains":
            _same([s.contains(key, now) for s in sets] + [model.contains(raw, now)])
        elif op == "clear":
            for s in sets:
                s.clear()
            model.entries.clear()
        _same([len(s) for s in sets] + [len(model.entries)])


# -- TokenBucketTable -------------------------------------------------------------------------
class BucketModel:
    def __init__(self, rate, burst, capacity):
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self.order = []  # keys, least recently used first
        self.state = {}  # key -> [tokens, last]

    def _refilled(self, key, now):
        tokens, last = self.state[key]
        if now - last > 0.0:
            return min(self.burst, tokens + (now - last) * self.rate), now
        return tokens, last

    def allow(self, key, now, cost):
        if key not in self.state:
            if len(self.order) >= self.capacity:
                del self.state[self.order.pop(0)]
            self.state[key] = [self.burst, now]
        else:
            self.order.remove(key)
            self.state[key] = list(self._refilled(key, now))
        self.order.append(key)
        if self.state[key][0] >= cost:
            self.state[key][0] -= cost
            return True
        return False

    def retry_after(self, key, now, cost):
        tokens = self._refilled(key, now)[0] if key in self.state else self.burst
        if tokens >= cost:
            return 0.0
        if cost > self.burst or self.rate <= 0.0:
            return math.inf
        return (cost - tokens) / self.rate


@SETTINGS
@given(rate=st.floats(0.0, 50.0), burst=st.floats(0.0, 10.0), capacity=st.integers(1, 4),
       ops=st.lists(st.tuples(st.sampled_from(["allow", "allow", "retry"]), keys, steps,
                              st.sampled_from([0.0, 0.3, 1.0, 1.0, 2.5])), max_size=60))
def test_token_bucket_parity(native, pure, rate, burst, capacity, ops):
    tables = [native.TokenBucketTable(rate, burst, capacity),
              pure.TokenBucketTable(rate, burst, capacity)]
    model = BucketModel(rate, burst, capacity)
    now = 10.0
    for op, key, step, cost in ops:
        now += step
        raw = key.encode() if isinstance(key, str) else key
        if op == "allow":
            _same([t.allow(key, now, cost) for t in tables] + [model.allow(raw, now, cost)])
        else:
            _same([t.retry_after(key, now, cost) for t in tables]
                  + [model.retry_after(raw, now, cost)])
        _same([len(t) for t in tables] + [len(model.order)])


@SETTINGS
@given(keys_=st.lists(st.binary(max_size=12), min_size=1, max_size=300),
       capacity=st.integers(1, 64))
def test_recent_set_parity_many_keys(native, pure, keys_, capacity):
    """Larger tables: probe chains and backward-shift deletion under eviction."""
    sets = [native.RecentSet(capacity, 1e9), pure.RecentSet(capacity, 1e9)]
    for i, key in enumerate(keys_):
        _same([s.add(key, float(i)) for s in sets])
        probe = keys_[i // 2]
        _same([s.contains(probe, float(i)) for s in sets])
    _same([[s.contains(k, 0.0) for k in keys_] for s in sets])
