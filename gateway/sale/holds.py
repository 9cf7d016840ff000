"""Holds: a buyer takes seats or GA tickets off sale for the event's hold time.

`Holds.create` validates a hold request against the event's layout (from the
worker's snapshot), refuses fast what the snapshot already knows is sold, and
takes the seats with ONE Lua script call (batched with every other call of the
same event-loop tick). Best-available holds try a few candidate blocks per call
and retry with the losers excluded when the snapshot was behind.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from gateway.core.errors import DomainError
from gateway.sale import inventory
from gateway.sale.snapshots import EventView, SnapshotManager
from gateway.store.scripts import Scripts

if TYPE_CHECKING:
    from gateway.api.sybil import AddressKeys

BEST_ROUNDS = 3
BEST_CANDIDATES = 4
UNANSWERED_MAX = 10_000  # buyers with holds whose answer never came, kept per worker to give back
UNANSWERED_PER_BUYER = 20
KINDS = ("seats", "ga", "best")


def invalid(message: str, **details: Any) -> DomainError:
    return DomainError("validation_error", message, details=details, status=422)


_iso_second: tuple[int, str] = (-1, "")


def iso_ms(ms: int) -> str:
    """`2026-01-31T20:00:00.123Z` (the whole-second part is formatted once per second)."""
    global _iso_second
    second = ms // 1000
    if _iso_second[0] != second:
        _iso_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return "%s.%03dZ" % (_iso_second[1], ms % 1000)


def event_of_hold(hold_id: str) -> int:
    """Hold ids are `<event id>-<random>`: the event of a hold needs no lookup."""
    event_raw, _, _ = hold_id.partition("-")
    if not (event_raw.isascii() and event_raw.isdigit()) or len(event_raw) > 18:
        raise DomainError("hold_not_found", "No such hold.", details={"hold_id": hold_id})
    return int(event_raw)


class Holds:
    def __init__(self, *, scripts: Scripts, snapshots: SnapshotManager, prefix: str, max_seats: int,
                 address_keys: AddressKeys | None = None, per_address_factor: float = 0.0) -> None:
        self.scripts = scripts
        self.snapshots = snapshots
        self.prefix = prefix
        self.max_seats = max_seats
        self.address_keys = address_keys
        self.per_address_factor = per_address_factor
        self.unanswered: dict[str, list[tuple[int, str]]] = {}  # buyer -> (event, hold id) answered 503

    def _address(self, address: str | None) -> list[Any]:
        """The hold scripts' trailing arguments that count a hold against its client address's cap
        (tickets held at once per address per event), or none: no address, cap off, or exempt."""
        if address is None or self.address_keys is None or self.per_address_factor <= 0:
            return []
        key = self.address_keys.address_key(address)
        return [] if key is None else ["@" + key, self.per_address_factor]

    async def create(self, event_id: int, buyer: str, body: Any, address: str | None = None) -> dict[str, Any]:
        """Hold what `body` asks for: exactly one of `seats`, `ga` or `best`, for a client at `address`.
        Returns the hold view."""
        if not isinstance(body, dict):
            raise invalid("The body must be a JSON object with one of `seats`, `ga` or `best`.")
        kinds = [k for k in KINDS if k in body]
        if len(kinds) != 1 or len(body) != 1:
            raise invalid("Send exactly one of `seats`, `ga` or `best`.", fields=sorted(body))
        view = self.snapshots.peek(event_id) or await self.snapshots.get(event_id)
        if view.status not in ("on_sale", ""):
            raise DomainError("not_on_sale", "This event is not on sale right now.", details={"status": view.status})
        hold_id = f"{event_id}-{os.urandom(10).hex()}"
        kind = kinds[0]
        where = self._address(address)
        if buyer in self.unanswered and self.snapshots.redis_ok:
            await self.give_back(buyer)
        try:
            if kind == "seats":
                data = await self._seats(view, hold_id, buyer, body["seats"], where)
            elif kind == "ga":
                data = await self._ga(view, hold_id, buyer, body["ga"], where)
            else:
                data = await self._best(view, hold_id, buyer, body["best"], where)
        except ResponseError:
            raise
        except RedisError:  # no answer (timeout, connection lost): Redis may still make this hold
            if len(self.unanswered) < UNANSWERED_MAX or buyer in self.unanswered:
                mine = self.unanswered.setdefault(buyer, [])
                if len(mine) < UNANSWERED_PER_BUYER:
                    mine.append((event_id, hold_id))
            raise
        return hold_view(view, data)

    async def give_back(self, buyer: str) -> None:
        """Release the buyer's holds this worker answered `503` for (Redis stalled or went away with
        the call sent): Redis may have made them when it resumed, and the buyer never learnt their
        ids, so they would keep tickets and the buyer's per-buyer count until they expire. Called
        on the buyer's next hold once Redis answers again, and for every buyer after the next snapshot
        refresh that reaches Redis (give_back_all)."""
        pending = self.unanswered.pop(buyer, [])
        results = await asyncio.gather(*(inventory.release(scripts=self.scripts, prefix=self.prefix, event_id=e,
                                                           hold_id=h, buyer=buyer) for e, h in pending),
                                       return_exceptions=True)
        left = []
        for entry, result in zip(pending, results):
            if isinstance(result, RedisError):
                left.append(entry)  # away again: the buyer's next hold tries
            elif isinstance(result, BaseException) and not isinstance(result, DomainError):
                raise result  # (a DomainError: never made, expired or being paid: nothing to give back)
        if left:
            self.unanswered[buyer] = left + self.unanswered.get(buyer, [])

    async def give_back_all(self) -> None:
        """Give back every buyer's unanswered holds (after each snapshot refresh that reached Redis): the
        buyer may come back through another worker, which knows nothing of them."""
        for buyer in list(self.unanswered):
            await self.give_back(buyer)

    async def release(self, hold_id: str, buyer: str) -> dict[str, Any]:
        event_id = event_of_hold(hold_id)
        data = await inventory.release(scripts=self.scripts, prefix=self.prefix, event_id=event_id,
                                       hold_id=hold_id, buyer=buyer)
        return {"hold_id": hold_id, "released": True, "version": data["version"]}

    # -- kinds ------------------------------------------------------------------------------
    async def _seats(self, view: EventView, hold_id: str, buyer: str, seats: Any,
                     where: list[Any]) -> dict[str, Any]:
        if not isinstance(seats, list) or not seats or not all(isinstance(s, str) for s in seats):
            raise invalid("`seats` must be a non-empty list of seat labels such as \"A-1-12\".")
        if len(seats) > self.max_seats:
            raise invalid(f"At most {self.max_seats} seats per hold.", max=self.max_seats)
        if len(set(seats)) != len(seats):
            raise invalid("A seat appears twice in the request.",
                          seats=sorted({s for s in seats if seats.count(s) > 1}))
        index = view.layout.label_index
        unknown = [s for s in seats if s not in index]
        if unknown:
            raise invalid("Unknown seat label(s) for this event.", seats=unknown[:20])
        indices = [index[s] for s in seats]
        if view.snap.any_sold(indices):  # sold is final (until a refund): refuse without Redis
            taken = [s for s, i in zip(seats, indices) if view.snap.is_sold(i)]
            raise DomainError("seat_unavailable", "Some of the requested seats are no longer available.",
                              details={"seats": taken})
        try:
            return await inventory.hold_seats(scripts=self.scripts, prefix=self.prefix, event_id=view.event_id,
                                              hold_id=hold_id, buyer=buyer, seats=indices, address=where)
        except DomainError as err:
            _labels(view, err)
            raise

    async def _ga(self, view: EventView, hold_id: str, buyer: str, ga: Any, where: list[Any]) -> dict[str, Any]:
        if not isinstance(ga, dict) or len(ga) != 1:
            raise invalid("`ga` must be an object with one ticket type and a quantity, e.g. {\"floor\": 2}.")
        (code, qty), = ga.items()
        if code not in view.layout.ga:
            raise invalid("Unknown ticket type for this event.", type=code, known=sorted(view.layout.ga))
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            raise invalid("The quantity must be a positive whole number.", type=code, quantity=qty)
        if qty > self.max_seats:
            raise invalid(f"At most {self.max_seats} tickets per hold.", max=self.max_seats)
        return await inventory.hold_ga(scripts=self.scripts, prefix=self.prefix, event_id=view.event_id,
                                       hold_id=hold_id, buyer=buyer, ticket_type=code, quantity=qty,
                                       address=where)

    async def _best(self, view: EventView, hold_id: str, buyer: str, best: Any, where: list[Any]) -> dict[str, Any]:
        if not isinstance(best, dict) or set(best) - {"section", "count"}:
            raise invalid("`best` must be {\"section\": <name>, \"count\": <n>}.")
        section, count = best.get("section"), best.get("count")
        if not isinstance(section, str) or section not in view.layout.section_index:
            raise invalid("Unknown section for this event.", section=section)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= self.max_seats:
            raise invalid(f"`count` must be a whole number from 1 to {self.max_seats}.", count=count)
        s_index = view.layout.section_index[section]
        exclude: list[int] = []
        for _ in range(BEST_ROUNDS):
            groups = []
            for _ in range(BEST_CANDIDATES):
                block = view.snap.best_available(s_index, count, exclude)
                if block is None:
                    break
                groups.append(list(block))
                exclude.extend(block)
            if not groups:
                break
            reply = await inventory.hold_candidates(scripts=self.scripts, prefix=self.prefix,
                                                    event_id=view.event_id, hold_id=hold_id, buyer=buyer,
                                                    groups=groups, address=where)
            if reply.ok:
                return reply.data
            if reply.status != "seat_unavailable":
                inventory.raise_for(reply)
            # Lost the race for every candidate: the snapshot is behind; the taken seats stay excluded.
        raise DomainError("sold_out", f"No {count} adjacent seats are left in section {section}.",
                          details={"section": section, "count": count})


def _labels(view: EventView, err: DomainError) -> None:
    seats = err.details.get("seats")
    if isinstance(seats, list):
        labels = view.layout.seat_labels
        err.details["seats"] = [labels[i] if isinstance(i, int) and 0 <= i < len(labels) else i for i in seats]


def hold_view(view: EventView, data: dict[str, Any]) -> dict[str, Any]:
    layout = view.layout
    seats = data.get("seats") or []
    ga = data.get("ga") or {}
    total = sum(layout.seat_price[i] for i in seats) + sum(layout.ga[c].price_minor * n for c, n in ga.items())
    return {"hold_id": data["hold_id"], "event_id": layout.event_id,
            "seats": [layout.seat_labels[i] for i in seats], "ga": ga, "count": data["count"],
            "expires_at": iso_ms(data["expires_at_ms"]), "expires_at_ms": data["expires_at_ms"],
            "total_minor": total, "currency": layout.currency}
