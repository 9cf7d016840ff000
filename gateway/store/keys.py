"""Redis key layout. Every key of one event carries the hash tag `{ev:<id>}`,
so every inventory script touches one Redis Cluster slot."""

from __future__ import annotations

import functools
import hashlib

# The order is the KEYS order every inventory script expects (lua/lib/common.lua).
EVENT_KEYS = ("meta", "sold", "held", "holds", "hdata", "seatown", "buyers", "changes", "ledger", "orders", "ga",
              "serial", "gone")


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
    """Ids of every event that ever had a ledger stream (never pruned): the ledger worker's registry,
    read in full only when a worker starts and, a few ids per round, by its background scrub."""
    return f"{prefix}:events:ledger"


def ledger_dirty_set(prefix: str) -> str:
    """Ids of events whose ledger stream may hold entries not yet in Postgres: the set the ledger
    worker polls. Every producer SADDs the event after its XADD (scripts cannot: one slot each);
    the worker removes an event once its stream is drained and it is not on sale."""
    return f"{prefix}:events:ledger:dirty"


# -- waiting room (same hash tag as the event: the queue scripts touch event keys too) --------------

def qkey(prefix: str, event_id: int, name: str) -> str:
    return event_key(prefix, event_id, "q:" + name)


def join_keys(prefix: str, event_id: int, ip: str, buyer: str) -> list[str]:
    """KEYS of lua/queue_join.lua."""
    return [event_key(prefix, event_id, "meta"), qkey(prefix, event_id, "state"), qkey(prefix, event_id, "who"),
            qkey(prefix, event_id, "seen"), qkey(prefix, event_id, "fate"), qkey(prefix, event_id, "seed"),
            qkey(prefix, event_id, "rl:ip:" + ip), qkey(prefix, event_id, "rl:b:" + buyer)]


def advance_keys(prefix: str, event_id: int) -> list[str]:
    """KEYS of lua/queue_advance.lua."""
    q = [qkey(prefix, event_id, n) for n in ("lease", "state", "seen", "fate", "seed")]
    return q + [event_key(prefix, event_id, n) for n in ("meta", "sold", "held", "holds", "ga", "buyers", "changes")]


def freeze_keys(prefix: str, event_id: int) -> list[str]:
    """KEYS of lua/queue_freeze.lua and (first two) lua/queue_prequeue.lua."""
    return [event_key(prefix, event_id, "meta"), qkey(prefix, event_id, "state"), qkey(prefix, event_id, "seed")]


# -- checkout ------------------------------------------------------------------------------------------

def checkout_records(prefix: str, event_id: int) -> str:
    """Hash `<buyer>|<idempotency key>` -> the attempt's record (started, paid, done, failed)."""
    return event_key(prefix, event_id, "checkouts")


def checkout_lock(prefix: str, event_id: int, field: str) -> str:
    """The lock one checkout attempt (buyer + key) holds while it runs."""
    return event_key(prefix, event_id, f"cklock:{hashlib.sha1(field.encode()).hexdigest()}")
