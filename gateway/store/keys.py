"""Redis key layout. Every key of one event carries the hash tag `{ev:<id>}`,
so every inventory script touches one Redis Cluster slot."""

from __future__ import annotations

import functools

# The order is the KEYS order every inventory script expects (lua/lib/common.lua).
EVENT_KEYS = ("meta", "sold", "held", "holds", "hdata", "seatown", "buyers", "changes", "ledger", "orders", "ga",
              "serial")


def event_tag(prefix: str, event_id: int) -> str:
    return f"{prefix}:{{ev:{event_id}}}"


@functools.lru_cache(maxsize=4096)
def _event_keys(prefix: str, event_id: int) -> tuple[str, ...]:
    tag = event_tag(prefix, event_id)
    return tuple(f"{tag}:{name}" for name in EVENT_KEYS)


def event_keys(prefix: str, event_id: int) -> list[str]:
    return list(_event_keys(prefix, event_id))


def event_key(prefix: str, event_id: int, name: str) -> str:
    return f"{event_tag(prefix, event_id)}:{name}"


def on_sale_set(prefix: str) -> str:
    """Ids of events that are open or paused (workers sweep and snapshot these)."""
    return f"{prefix}:events:active"


LEDGER_GROUP = "ledger"


def ledger_set(prefix: str) -> str:
    """Ids of every event that ever sold (ledger workers drain these streams)."""
    return f"{prefix}:events:ledger"
