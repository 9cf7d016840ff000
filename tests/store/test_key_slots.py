"""Every key the application builds, mapped to its Redis Cluster slot.

A script call, a MULTI or a multi-key command whose keys span slots fails on a Cluster (CROSSSLOT).
Each group below is the KEYS of one script, or the keys of one MULTI / multi-key command, as the code
builds them, including the waiting room's queue and rate-limit keys (per client address and per
buyer), the checkout keys and the notification keys; each must map to one slot, for odd inputs too
(IPv6 addresses, braces in buyer ids or checkout keys). A new key builder in `gateway/store/keys.py`
that returns a group must be listed here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from gateway.store import keys as K
from gateway.store.keys import event_key, qkey, scan_key
from gateway.sale.checkout import checkout_keys

PREFIXES = ("fg", "t1a2b3c4", "shop:eu")
EVENTS = (1, 42, 10**12 + 7)
ADDRESSES = ("203.0.113.9", "2001:db8::1", "2001:db8:0:0:0:0:0:0/64", "unknown")
BUYERS = ("b_0123456789abcdef01234567", "b_{evil}", "b_}{")
FIELDS = ("b_1|key-00000001", "b_2|{ev:9}", "b_3|}")


def _event_groups(prefix: str, event_id: int) -> dict[str, list[str]]:
    """Every multi-key group of one event, by what uses it."""
    def ev(*names: str) -> list[str]:
        return [event_key(prefix, event_id, n) for n in names]

    groups = {
        "inventory scripts (hold, hold_ga, release, confirm, expire, snapshot, ...)": K.event_keys(prefix, event_id),
        "queue_advance": K.advance_keys(prefix, event_id),
        "waitlist_* and void": K.waitlist_keys(prefix, event_id),
        "queue_freeze, queue_prequeue": K.freeze_keys(prefix, event_id),
        "live_fold": K.live_keys(prefix, event_id),
        "scan_checkin": K.scan_keys(prefix, event_id),
        "queue_resign": [qkey(prefix, event_id, "lease")],
        # MULTIs and pipelines on one event (organisers/history.py, organisers/live.py, scanning/events.py)
        "audit end state (MULTI)": ev("sold", "held", "ga", "buyers", "hdata", "meta", "changes"),
        "live inventory (MULTI with live_fold)": K.live_keys(prefix, event_id) + ev(
            "sold", "held", "ga", "live", "live:min", "meta", "holds", "changes", "ledger:dead"),
        "door catch-up (MULTI)": ev("meta", "ledger"),
        "door event load": ev("info", "layout") + [scan_key(prefix, event_id, "revoked"),
                                                   scan_key(prefix, event_id, "rules")],
    }
    for ip in ADDRESSES:
        for buyer in BUYERS:
            groups[f"queue_join ip={ip} buyer={buyer}"] = K.join_keys(prefix, event_id, ip, buyer)
    for field in FIELDS:
        # checkout_begin / _abort / _confirm, and the paid record written just before checkout_confirm
        groups[f"checkout field={field}"] = checkout_keys(prefix, event_id, field) + [
            K.checkout_records(prefix, event_id), K.checkout_lock(prefix, event_id, field)]
    return groups


def _global_groups(prefix: str) -> dict[str, list[str]]:
    groups = {"notification MULTIs (sent, retry, dead, replay)": [K.notify_key(prefix), K.notify_key(prefix, "retry"),
                                                                  K.notify_key(prefix, "dead")]}
    for address in ADDRESSES:
        # one MGET: the revocation counter and this address's failed key checks
        groups[f"API key check address={address}"] = [K.api_keys_version(prefix),
                                                       K.api_key_failures(prefix, address, 29_000_000)]
    return groups


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_multi_key_group_maps_to_one_slot(prefix: str) -> None:
    for event_id in EVENTS:
        for what, group in {**_event_groups(prefix, event_id), **_global_groups(prefix)}.items():
            slots = {key_slot(k.encode()) for k in group}
            assert len(slots) == 1, f"{what} spans slots {sorted(slots)}: {group}"


def test_each_event_has_its_own_slot_and_events_spread() -> None:
    """The hash tag is the event, not the prefix: events spread over the shards."""
    slots = {key_slot(event_key("fg", e, "meta").encode()) for e in range(1, 201)}
    assert len(slots) > 150
    ranges = ((0, 5460), (5461, 10922), (10923, 16383))  # a 3-master Cluster's usual split
    assert all(any(lo <= s <= hi for s in slots) for lo, hi in ranges)
    for e in EVENTS:  # and the waiting room's keys live with their event
        assert key_slot(qkey("fg", e, "state").encode()) == key_slot(event_key("fg", e, "meta").encode())


def test_every_key_group_builder_is_mapped_here() -> None:
    """Builders returning several keys (`*_keys`) are the KEYS of scripts: each must be checked above."""
    builders: dict[str, Callable] = {name: fn for name, fn in inspect.getmembers(K, inspect.isfunction)
                                     if fn.__module__ == K.__name__ and not name.startswith("_")}
    groups = {name for name in builders if name.endswith("_keys")}
    checked = {"event_keys", "join_keys", "advance_keys", "waitlist_keys", "freeze_keys", "live_keys", "scan_keys"}
    assert groups == checked, f"new key groups to map to a slot: {sorted(groups - checked)}"
