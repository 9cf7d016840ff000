"""Plain factories for inventory tests."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.sale import inventory
from gateway.store.keys import event_key
from gateway.store.scripts import Scripts


def new_id() -> str:
    return uuid.uuid4().hex


async def open_event(scripts: Scripts, prefix: str, event_id: int, *, n_seats: int = 100, ttl_s: float = 60,
                     limit: int = 8, ga: dict[str, int] | None = None, checkout_s: float = 120) -> None:
    await inventory.prepare_event(scripts=scripts, prefix=prefix, event_id=event_id, status="on_sale",
                                  n_seats=n_seats, hold_ttl_s=ttl_s, per_buyer_limit=limit,
                                  checkout_s=checkout_s, ga=ga or {})


def bits(raw: bytes, n: int) -> set[int]:
    return {i for i in range(n) if i // 8 < len(raw) and raw[i // 8] >> (7 - i % 8) & 1}


async def state(scripts: Scripts, prefix: str, event_id: int, n: int) -> dict[str, Any]:
    snap = await inventory.read_snapshot(scripts=scripts, prefix=prefix, event_id=event_id)
    return {"sold": bits(snap["sold"], n), "held": bits(snap["held"], n), "ga": snap["ga"],
            "version": snap["version"]}


def key(prefix: str, event_id: int, name: str) -> str:
    return event_key(prefix, event_id, name)
