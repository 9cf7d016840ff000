"""The batched figures of the hot routes (gateway/core/metrics.py) come out exactly as prometheus-client
would have recorded each observation itself: same buckets, count and sum."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.core import metrics

def text(registry: CollectorRegistry) -> list[bytes]:
    """The exposition without the `_created` timestamps (the two children were made at different times)."""
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


VALUES = [0.0, 0.0004, 0.0005, 0.0007, 0.003, 0.003, 0.2, 1.0, 4.0, 12.5, 99.0]


def test_a_flushed_histogram_equals_one_fed_directly() -> None:
    batched_registry, direct_registry = CollectorRegistry(), CollectorRegistry()
    buckets = metrics._LATENCY_BUCKETS
    batched = metrics._Histogram(Histogram("h_seconds", "h", ("route",), buckets=buckets,
                                           registry=batched_registry).labels("/r"))
    direct = Histogram("h_seconds", "h", ("route",), buckets=buckets, registry=direct_registry).labels("/r")
    for value in VALUES:
        batched.observe(value)
        direct.observe(value)
    assert b'h_seconds_count{route="/r"} 0.0' in generate_latest(batched_registry)  # nothing before a flush
    batched.flush()
    batched.flush()  # a second flush adds nothing
    assert text(batched_registry) == text(direct_registry)


def test_a_flushed_counter_equals_one_fed_directly() -> None:
    registry = CollectorRegistry()
    batched = metrics._Counter(Counter("c", "c", registry=registry))
    for _ in range(7):
        batched.inc()
    batched.flush()
    batched.inc(3)
    batched.flush()
    assert b"c_total 10.0" in generate_latest(registry)
