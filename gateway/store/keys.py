"""Redis key layout. Every key of one event carries the hash tag `{ev:<id>}`,
so every inventory script touches one Redis Cluster slot."""

from __future__ import annotations

import functools
import hashlib

# The order is the KEYS order every inventory script expects (lua/lib/common.lua).
EVENT_KEYS = ("meta", "sold", "held", "holds", "hdata", "seatown", "buyers", "changes", "ledger", "orders", "ga",
              "serial", "gone", "addrs")


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
            qkey(prefix, event_id, "rl:ip:" + ip), qkey(prefix, event_id, "rl:b:" + buyer),
            qkey(prefix, event_id, "pre")]


def advance_keys(prefix: str, event_id: int) -> list[str]:
    """KEYS of lua/queue_advance.lua."""
    q = [qkey(prefix, event_id, n) for n in ("lease", "state", "seen", "fate", "seed")]
    return (q + [event_key(prefix, event_id, n) for n in ("meta", "sold", "held", "holds", "ga", "buyers", "changes")]
            + [qkey(prefix, event_id, n) for n in ("acted", "who", "pre")])


WAITLIST_KEYS = ("wl:list", "wl:who", "wl:offers", "wl:state", "wl:mail")


def waitlist_keys(prefix: str, event_id: int) -> list[str]:
    """KEYS of lua/waitlist_*.lua and lua/void.lua: the event keys, the queue state, the waiting list's
    keys (lua/lib/waitlist.lua finds the last ones by name)."""
    return (event_keys(prefix, event_id) + [qkey(prefix, event_id, "state")]
            + [event_key(prefix, event_id, name) for name in WAITLIST_KEYS])


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


# -- live figures (organiser dashboard) ------------------------------------------------------------------

def live_keys(prefix: str, event_id: int) -> list[str]:
    """KEYS of lua/live_fold.lua: the two streams it reads, its totals and its per-minute buckets."""
    return [event_key(prefix, event_id, "changes"), event_key(prefix, event_id, "ledger"),
            event_key(prefix, event_id, "live"), event_key(prefix, event_id, "live:min")]


# -- notifications (one hash tag: an entry moves between them in one MULTI, also on a Redis Cluster) ----------

def notify_key(prefix: str, name: str = "") -> str:
    """`<prefix>:{notify}` (the send stream), `...:retry` (sorted set of retries), `...:dead` (dead letters)."""
    return f"{prefix}:{{notify}}" + (f":{name}" if name else "")


def breaker_key(prefix: str, name: str) -> str:
    """A provider's shared circuit-breaker hash (`payments`, `smtp`, `webhook:<host>`)."""
    return f"{prefix}:breaker:{name}"


def pacing_key(prefix: str, provider: str) -> str:
    """HASH worker id -> JSON of that worker's adaptive-limit figures (per process, published each second)."""
    return f"{prefix}:pacing:{provider}"


# -- organiser API keys ----------------------------------------------------------------------------------

def api_keys_version(prefix: str) -> str:
    """A counter raised by every key revocation: a worker whose cached copy is older drops its key cache.
    The key-check keys share one hash tag, so one MGET reads the counter and an address's failures."""
    return f"{prefix}:{{apikeys}}:version"


def api_key_failures(prefix: str, address: str, window: int) -> str:
    """Failed API-key checks from one client address in one minute (`window` = unix minute)."""
    return f"{prefix}:{{apikeys}}:fail:{address}:{window}"


# -- door scanning (docs/scanning.md; same hash tag as the event: the check-in reads its orders) --------

# The KEYS order of lua/scan_checkin.lua.
SCAN_KEYS = ("scan:revoked", "scan:contact", "scan:checkin", "scan:ids", "scan:stats", "scan:rules", "orders",
             "ledger")


def scan_key(prefix: str, event_id: int, name: str) -> str:
    """One scanning key of an event: revoked, contact, checkin, ids, stats, rules, sealed."""
    return event_key(prefix, event_id, "scan:" + name)


@functools.lru_cache(maxsize=4096)
def _scan_keys(prefix: str, event_id: int) -> tuple[str, ...]:
    return tuple(event_key(prefix, event_id, name) for name in SCAN_KEYS)


def scan_keys(prefix: str, event_id: int) -> list[str]:
    """KEYS of lua/scan_checkin.lua."""
    return list(_scan_keys(prefix, event_id))


def schedule_lease(prefix: str) -> str:
    """Held by the one process running a round of scheduled sale openings and closings."""
    return f"{prefix}:schedule:lease"
