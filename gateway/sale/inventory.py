"""Inventory: every mutation is one Lua script call (lua/), atomic in Redis.

Functions take plain values and return the script's details, or raise a
DomainError whose code is the script's status word. None of them touches
Postgres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.core.errors import DomainError
from gateway.store.keys import event_keys, waitlist_keys
from gateway.store.scripts import Reply, Scripts

MESSAGES = {
    "seat_unavailable": "Some of the requested seats are no longer available.",
    "sold_out": "Not enough tickets of this type are left.",
    "limit_exceeded": "This would take you over the event's limit of tickets per buyer.",
    "address_limit_exceeded": "Too many tickets of this event are held from your network address at once; "
                              "buy or release a hold, or wait for one to expire.",
    "not_on_sale": "This event is not on sale right now.",
    "event_not_found": "No such event on sale.",
    "hold_not_found": "No such hold (it may have been released, expired or bought).",
    "hold_expired": "This hold has expired; its seats went back on sale.",
    "forbidden": "This hold belongs to another buyer.",
    "invalid_state": "The hold cannot do that in its current state.",
    "order_not_found": "No such order.",
    "bad_request": "The request does not match the event.",
}


def raise_for(reply: Reply) -> dict[str, Any]:
    if reply.ok:
        return reply.data
    code = reply.status
    status = 422 if code == "bad_request" else None
    message = MESSAGES.get(code, code.replace("_", " ").capitalize() + ".")
    if code == "bad_request" and reply.data.get("reason"):
        message = f"Invalid request: {reply.data['reason']}."
    retry = reply.data.get("retry_after_s") if code == "address_limit_exceeded" else None
    raise DomainError("validation_error" if code == "bad_request" else code, message, details=reply.data,
                      status=status, headers={"Retry-After": str(retry)} if retry else None)


async def prepare_event(*, scripts: Scripts, prefix: str, event_id: int, status: str, n_seats: int,
                        hold_ttl_s: float, per_buyer_limit: int, checkout_s: float,
                        ga: dict[str, int]) -> dict[str, Any]:
    args: list[Any] = [status, n_seats, int(hold_ttl_s * 1000), per_buyer_limit, int(checkout_s * 1000)]
    for code, capacity in ga.items():
        args += [code, capacity]
    return raise_for(await scripts.call("prepare_event", event_keys(prefix, event_id), args))


async def hold_seats(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str,
                     seats: list[int], address: Sequence[Any] = ()) -> dict[str, Any]:
    """Hold exactly these seats (all or nothing). `address`: `["@<address key>", factor]` to count the
    hold against its address's cap (address_args), or empty."""
    reply = await scripts.call("hold", event_keys(prefix, event_id), [hold_id, buyer, len(seats), *seats, *address])
    return raise_for(reply)


async def hold_candidates(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str,
                          groups: list[list[int]], address: Sequence[Any] = ()) -> Reply:
    """Hold the first group whose seats are all free; the raw reply tells which seats lost."""
    size = len(groups[0])
    flat = [idx for group in groups for idx in group]
    return await scripts.call("hold", event_keys(prefix, event_id), [hold_id, buyer, size, *flat, *address])


async def hold_ga(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str, ticket_type: str,
                  quantity: int, address: Sequence[Any] = ()) -> dict[str, Any]:
    reply = await scripts.call("hold_ga", event_keys(prefix, event_id),
                                       [hold_id, buyer, ticket_type, quantity, *address])
    return raise_for(reply)


async def release(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str) -> dict[str, Any]:
    return raise_for(await scripts.call("release", event_keys(prefix, event_id), [hold_id, buyer]))


async def begin_checkout(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str,
                         checkout_key: str) -> dict[str, Any]:
    return raise_for(await scripts.call("begin_checkout", event_keys(prefix, event_id),
                                        [hold_id, buyer, checkout_key]))


async def abort_checkout(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str,
                         checkout_key: str) -> dict[str, Any]:
    return raise_for(await scripts.call("abort_checkout", event_keys(prefix, event_id),
                                        [hold_id, buyer, checkout_key]))


async def confirm(*, scripts: Scripts, prefix: str, event_id: int, hold_id: str, buyer: str, order_id: str,
                  order: dict[str, Any]) -> dict[str, Any]:
    """Held to sold, appended to the ledger; the same order id again returns the same result."""
    return raise_for(await scripts.call("confirm", event_keys(prefix, event_id),
                                        [hold_id, buyer, order_id, orjson.dumps(order)]))


async def void(*, scripts: Scripts, prefix: str, event_id: int, order_id: str,
               refund: dict[str, Any], offer_ttl_ms: int = 600_000) -> dict[str, Any]:
    """Return a refunded order's tickets; after the final sell-out they go to the waiting list as
    offers (`offered` in the answer), in the same call."""
    return raise_for(await scripts.call("void", waitlist_keys(prefix, event_id),
                                        [order_id, orjson.dumps(refund), offer_ttl_ms]))


async def expire(*, scripts: Scripts, prefix: str, event_id: int, max_holds: int = 200) -> dict[str, Any]:
    return raise_for(await scripts.call("expire", event_keys(prefix, event_id), [max_holds]))


async def read_snapshot(*, scripts: Scripts, prefix: str, event_id: int) -> dict[str, Any]:
    sold, held, version, last_id, status, ga_flat = await scripts.raw("snapshot", event_keys(prefix, event_id), [])
    ga: dict[str, dict[str, int]] = {}
    for i in range(0, len(ga_flat), 2):
        field, _, code = ga_flat[i].decode().partition(":")
        ga.setdefault(code, {"cap": 0, "held": 0, "sold": 0})[field] = int(ga_flat[i + 1])
    return {"sold": sold, "held": held, "version": int(version), "last_id": last_id.decode()
            if isinstance(last_id, bytes) else last_id, "status": status.decode() if isinstance(status, bytes)
            else status, "ga": ga}
