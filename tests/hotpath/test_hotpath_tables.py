"""RecentSet and TokenBucketTable unit tests, run on both implementations ([c] / [py])."""

import math

import pytest


# -- RecentSet ---------------------------------------------------------------------------
def test_recent_set_add_and_contains(impl):
    seen = impl.RecentSet(4, 10.0)
    assert seen.add("T-1", 0.0) is True
    assert seen.add("T-1", 5.0) is False
    assert seen.contains("T-1", 9.99) is True
    assert seen.contains(b"T-1", 9.99) is True  # str keys are UTF-8: same key
    assert seen.contains("T-2", 0.0) is False
    assert len(seen) == 1


def test_recent_set_expiry_is_not_extended_by_duplicates(impl):
    seen = impl.RecentSet(4, 10.0)
    seen.add("a", 0.0)
    assert seen.add("a", 9.0) is False
    assert seen.contains("a", 10.0) is False  # expired at 0 + ttl, not 9 + ttl
    assert len(seen) == 1  # expired entries count until evicted
    assert seen.add("a", 10.0) is True
    assert seen.contains("a", 19.9) is True


def test_recent_set_evicts_oldest_when_full(impl):
    seen = impl.RecentSet(3, 100.0)
    for key in ("a", "b", "c"):
        assert seen.add(key, 0.0)
    assert seen.add("d", 1.0) is True
    assert len(seen) == 3
    assert seen.contains("a", 1.0) is False
    assert all(seen.contains(k, 1.0) for k in ("b", "c", "d"))
    # A re-added expired key becomes the newest entry.
    small = impl.RecentSet(2, 1.0)
    small.add("x", 0.0)
    small.add("y", 0.5)
    assert small.add("x", 2.0) is True
    small.add("z", 2.0)
    assert small.contains("x", 2.1) and not small.contains("y", 0.6)


def test_recent_set_clear_and_reuse(impl):
    seen = impl.RecentSet(2, 5.0)
    seen.add("a", 0.0)
    seen.add("b", 0.0)
    seen.clear()
    assert len(seen) == 0 and not seen.contains("a", 0.0)
    assert seen.add("a", 0.0) and seen.add("c", 0.0) and seen.add("d", 0.0)
    assert len(seen) == 2 and not seen.contains("a", 0.0)


def test_recent_set_many_keys_and_binary_keys(impl):
    seen = impl.RecentSet(1000, 60.0)
    keys = [bytes([i % 256, i // 256, 0]) for i in range(3000)]
    for i, key in enumerate(keys):
        assert seen.add(key, float(i)) is True
    assert len(seen) == 1000
    assert sum(seen.contains(k, 2999.0) for k in keys) == 60  # later ones expired by ttl
    assert seen.contains(keys[-1], 2999.0) and not seen.contains(keys[1999], 2000.0)
    assert seen.add("", 0.0) is True and seen.add(b"", 0.0) is False
    assert seen.add("é", 0.0) is True and seen.contains("é".encode(), 0.0)


def test_recent_set_bad_arguments(impl):
    with pytest.raises(ValueError):
        impl.RecentSet(0, 1.0)
    with pytest.raises(ValueError):
        impl.RecentSet(1, -1.0)
    with pytest.raises(ValueError):
        impl.RecentSet(1, math.nan)
    seen = impl.RecentSet(1, 1.0)
    with pytest.raises(TypeError):
        seen.add(12, 0.0)
    with pytest.raises(TypeError):
        seen.contains(bytearray(b"a"), 0.0)


# -- TokenBucketTable --------------------------------------------------------------------------
def test_bucket_burst_then_rate(impl):
    table = impl.TokenBucketTable(rate=2.0, burst=3.0, capacity=10)
    assert [table.allow("ip", 0.0) for _ in range(4)] == [True, True, True, False]
    assert table.retry_after("ip", 0.0) == 0.5
    assert table.allow("ip", 0.25) is False
    assert table.retry_after("ip", 0.25) == 0.25
    assert table.allow("ip", 0.5) is True
    assert table.allow("ip", 0.5) is False
    assert table.allow("ip", 100.0) and table.allow("ip", 100.0) and table.allow("ip", 100.0)
    assert table.allow("ip", 100.0) is False  # refill is capped at burst


def test_bucket_cost_and_retry_after(impl):
    table = impl.TokenBucketTable(rate=1.0, burst=5.0, capacity=10)
    assert table.retry_after("k", 0.0, cost=5.0) == 0.0
    assert table.retry_after("k", 0.0, cost=6.0) == math.inf
    assert len(table) == 0  # retry_after never creates a bucket
    assert table.allow("k", 0.0, cost=4.0) is True
    assert table.retry_after("k", 0.0, cost=3.0) == 2.0
    assert table.allow("k", 0.0, cost=0.0) is True
    assert table.allow("k", 0.0, cost=6.0) is False
    with pytest.raises(ValueError):
        table.allow("k", 0.0, cost=-1.0)
    with pytest.raises(ValueError):
        table.retry_after("k", 0.0, cost=-1.0)


def test_bucket_clock_going_backwards_does_not_refill(impl):
    table = impl.TokenBucketTable(rate=1.0, burst=1.0, capacity=10)
    assert table.allow("k", 10.0)
    assert table.allow("k", 5.0) is False
    assert table.allow("k", 10.5) is False
    assert table.allow("k", 11.0) is True


def test_bucket_zero_rate(impl):
    table = impl.TokenBucketTable(rate=0.0, burst=2.0, capacity=10)
    assert table.allow("k", 0.0) and table.allow("k", 1e9)
    assert table.allow("k", 2e9) is False
    assert table.retry_after("k", 2e9) == math.inf


def test_bucket_lru_eviction(impl):
    table = impl.TokenBucketTable(rate=1.0, burst=1.0, capacity=2)
    assert table.allow("a", 0.0) and table.allow("b", 0.0)
    assert table.allow("a", 0.0) is False  # touches a: b is now least recently used
    assert table.allow("c", 0.0) is True  # evicts b
    assert len(table) == 2
    assert table.allow("b", 0.0) is True  # b starts full again, evicting a
    assert table.allow("c", 0.0) is False
    assert table.allow("a", 0.0) is True


def test_bucket_bad_arguments(impl):
    for rate, burst, capacity in [(-1.0, 1.0, 1), (1.0, -1.0, 1), (1.0, 1.0, 0),
                                  (math.inf, 1.0, 1), (math.nan, 1.0, 1)]:
        with pytest.raises(ValueError):
            impl.TokenBucketTable(rate, burst, capacity)
    table = impl.TokenBucketTable(1.0, 1.0, 1)
    with pytest.raises(TypeError):
        table.allow(None, 0.0)
    table.allow("x", 0.0)
    table.clear()
    assert len(table) == 0 and table.allow("x", 0.0)


def test_times_must_be_numbers(impl):
    seen = impl.RecentSet(2, 1.0)
    table = impl.TokenBucketTable(1.0, 1.0, 2)
    for call in (lambda: seen.add("a", "1.0"), lambda: seen.contains("a", b"1"),
                 lambda: table.allow("a", "1.0"), lambda: table.retry_after("a", 0.0, "1"),
                 lambda: impl.RecentSet(2, "1.0")):
        with pytest.raises(TypeError):
            call()
    assert seen.add("a", 1) is True and table.allow("a", 1) is True  # ints are fine
