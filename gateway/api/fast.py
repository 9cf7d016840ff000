"""Hot buyer routes answered by the edge without FastAPI.

At flash-sale rates the framework's per-request cost is larger than the work
itself (one snapshot read or one batched Lua call), so these routes parse the
path and body themselves. They call the same service functions as any route
and answer in the same error shape.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from gateway.api.edge import BodyTooLarge, Receive, Send, send_json
from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.services import inventory
from gateway.services.snapshots import EventView, SnapshotManager
from gateway.services.tokens import TokenSigner, bearer
from gateway.store.keys import event_keys

BEST_ROUNDS = 3
BEST_CANDIDATES = 4


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def _event_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise DomainError("event_not_found", "No such event.", details={"event_id": raw})
    return int(raw)


async def read_body(receive: Receive, limit: int = 1 << 20) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge()
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DomainError("malformed_json", "The request body is not valid JSON.", details={"error": str(exc)},
                          status=400) from None


def invalid(message: str, **details: Any) -> DomainError:
    return DomainError("validation_error", message, details=details, status=422)


class FastRoutes:
    def __init__(self, runtime: Runtime, snapshots: SnapshotManager, signer: TokenSigner) -> None:
        self.runtime = runtime
        self.snapshots = snapshots
        self.signer = signer
        self.scripts = runtime.extras["scripts"]
        self.prefix = runtime.settings.redis_prefix
        self.max_seats = runtime.settings.max_seats_per_hold
        self.max_body_bytes = runtime.settings.max_body_bytes
        self.stale_after = runtime.settings.snapshot_stale_after_s
        self.checkout_service: Any = None  # gateway.services.checkout.Checkout, set in the app lifespan
        self.buyer_of = None  # set by the waiting room: (scope, event_id) -> buyer id
        self.queue: Any = None  # gateway.api.queue_routes.QueueRoutes, set by the waiting room

    def match(self, method: str, path: str) -> Any:
        parts = path.split("/")
        n = len(parts)
        if n == 5 and parts[1] == "v1" and parts[2] == "events":
            if parts[4] == "availability" and method == "GET":
                return self.availability, parts[3]
            if parts[4] == "holds" and method == "POST":
                return self.create_hold, parts[3]
            if parts[4] == "queue" and self.queue is not None:
                return self.queue.match(method, parts[3])
        elif n == 4 and parts[1] == "v1" and parts[2] == "holds" and method == "DELETE":
            return self.release_hold, parts[3]
        elif n == 5 and parts[1] == "v1" and parts[2] == "holds" and parts[4] == "checkout" and method == "POST":
            return self.checkout, parts[3]
        return None

    # -- buyer identity -----------------------------------------------------------
    def buyer(self, scope: dict[str, Any], event_id: int) -> str:
        if self.buyer_of is not None:
            return self.buyer_of(scope, event_id)
        token = bearer(scope["headers"])
        if token is None:
            raise DomainError("unauthorized", "Send your buyer token as `Authorization: Bearer <token>`.")
        return self.signer.verify(token, "b")["sub"]

    # -- routes -------------------------------------------------------------------------
    async def availability(self, scope: dict[str, Any], receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id = _event_id(arg)
        view = await self.snapshots.get(event_id)
        stale = view.age() > max(1.0, 5 * self.snapshots.refresh_s)
        if view.age() > self.stale_after:
            raise DomainError("unavailable", "Availability is temporarily unavailable; try again in a moment.",
                              headers={"Retry-After": "2"})
        query = scope.get("query_string", b"")
        with_seats = b"seats=0" not in query
        if b"since=" in query:
            since = _query_int(query, b"since")
            if since == view.snap.version and not stale:
                await send_json(send, 200, b'{"event_id":%d,"version":%d,"unchanged":true}'
                                % (event_id, since), rid)
                return
        await send_json(send, 200, view.availability(with_seats=with_seats, stale=stale), rid,
                        [(b"cache-control", b"no-store")])

    async def create_hold(self, scope: dict[str, Any], receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id = _event_id(arg)
        buyer = self.buyer(scope, event_id)
        body = parse_json(await read_body(receive, self.max_body_bytes))
        if not isinstance(body, dict):
            raise invalid("The body must be a JSON object with one of `seats`, `ga` or `best`.")
        kinds = [k for k in ("seats", "ga", "best") if k in body]
        extra = set(body) - {"seats", "ga", "best"}
        if len(kinds) != 1 or extra:
            raise invalid("Send exactly one of `seats`, `ga` or `best`.", fields=sorted(body))
        view = self.snapshots.peek(event_id) or await self.snapshots.get(event_id)
        if view.status not in ("on_sale", ""):
            raise DomainError("not_on_sale", "This event is not on sale right now.", details={"status": view.status})
        hold_id = f"{event_id}-{os.urandom(10).hex()}"
        kind = kinds[0]
        if kind == "seats":
            data = await self._hold_seats(view, event_id, hold_id, buyer, body["seats"])
        elif kind == "ga":
            data = await self._hold_ga(view, event_id, hold_id, buyer, body["ga"])
        else:
            data = await self._hold_best(view, event_id, hold_id, buyer, body["best"])
        await send_json(send, 201, orjson.dumps(self._hold_view(view, data)), rid)

    async def release_hold(self, scope: dict[str, Any], receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_raw, _, _ = arg.partition("-")
        if not event_raw.isdigit():
            raise DomainError("hold_not_found", "No such hold.", details={"hold_id": arg})
        event_id = int(event_raw)
        buyer = self.buyer(scope, event_id)
        data = await inventory.release(scripts=self.scripts, prefix=self.prefix, event_id=event_id, hold_id=arg,
                                       buyer=buyer)
        await send_json(send, 200, orjson.dumps({"hold_id": arg, "released": True, "version": data["version"]}),
                        rid)

    async def checkout(self, scope: dict[str, Any], receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_raw, _, _ = arg.partition("-")
        if not event_raw.isdigit():
            raise DomainError("hold_not_found", "No such hold.", details={"hold_id": arg})
        event_id = int(event_raw)
        buyer = self.buyer(scope, event_id)
        key = None
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                key = value.decode("latin-1").strip()
        if not key:
            raise invalid("Send an Idempotency-Key header (any unique string per checkout attempt, 8-200 "
                          "characters); repeating it returns the same order.")
        raw = await read_body(receive, self.max_body_bytes)
        body = parse_json(raw) if raw.strip() else {}
        if not isinstance(body, dict) or set(body) - {"email", "payment_method"}:
            raise invalid("The body may contain `email` and `payment_method` only.")
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email or len(email) > 254):
            raise invalid("`email` must be an e-mail address.", email=email)
        result = await self.checkout_service.checkout(event_id=event_id, hold_id=arg, buyer=buyer, key=key,
                                                      body=body)
        await send_json(send, 201, orjson.dumps(result), rid)

    # -- hold kinds ----------------------------------------------------------------------
    async def _hold_seats(self, view: EventView, event_id: int, hold_id: str, buyer: str, seats: Any
                          ) -> dict[str, Any]:
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
            return inventory.raise_for(await self.scripts.call_batched(
                "hold", event_keys(self.prefix, event_id), [hold_id, buyer, len(indices), *indices]))
        except DomainError as err:
            self._labels(view, err)
            raise

    async def _hold_ga(self, view: EventView, event_id: int, hold_id: str, buyer: str, ga: Any) -> dict[str, Any]:
        if not isinstance(ga, dict) or len(ga) != 1:
            raise invalid("`ga` must be an object with one ticket type and a quantity, e.g. {\"floor\": 2}.")
        (code, qty), = ga.items()
        if code not in view.layout.ga:
            raise invalid("Unknown ticket type for this event.", type=code, known=sorted(view.layout.ga))
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            raise invalid("The quantity must be a positive whole number.", type=code, quantity=qty)
        if qty > self.max_seats:
            raise invalid(f"At most {self.max_seats} tickets per hold.", max=self.max_seats)
        return await inventory.hold_ga(scripts=self.scripts, prefix=self.prefix, event_id=event_id,
                                       hold_id=hold_id, buyer=buyer, ticket_type=code, quantity=qty)

    async def _hold_best(self, view: EventView, event_id: int, hold_id: str, buyer: str, best: Any
                         ) -> dict[str, Any]:
        if not isinstance(best, dict) or set(best) - {"section", "count"}:
            raise invalid("`best` must be {\"section\": <name>, \"count\": <n>}.")
        section, count = best.get("section"), best.get("count")
        if section not in view.layout.section_index:
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
            reply = await inventory.hold_candidates(scripts=self.scripts, prefix=self.prefix, event_id=event_id,
                                                    hold_id=hold_id, buyer=buyer, groups=groups)
            if reply.ok:
                return reply.data
            if reply.status != "seat_unavailable":
                inventory.raise_for(reply)
            # Lost the race for every candidate: the snapshot is behind; the taken seats stay excluded.
        raise DomainError("sold_out", f"No {count} adjacent seats are left in section {section}.",
                          details={"section": section, "count": count})

    # -- views ------------------------------------------------------------------------------
    def _labels(self, view: EventView, err: DomainError) -> None:
        seats = err.details.get("seats")
        if isinstance(seats, list):
            labels = view.layout.seat_labels
            err.details["seats"] = [labels[i] if isinstance(i, int) and 0 <= i < len(labels) else i for i in seats]

    def _hold_view(self, view: EventView, data: dict[str, Any]) -> dict[str, Any]:
        layout = view.layout
        seats = data.get("seats") or []
        ga = data.get("ga") or {}
        total = sum(layout.seat_price[i] for i in seats) + sum(layout.ga[c].price_minor * n for c, n in ga.items())
        return {"hold_id": data["hold_id"], "event_id": layout.event_id,
                "seats": [layout.seat_labels[i] for i in seats], "ga": ga, "count": data["count"],
                "expires_at": _iso(data["expires_at_ms"]), "expires_at_ms": data["expires_at_ms"],
                "total_minor": total, "currency": layout.currency}


def _query_int(query: bytes, name: bytes) -> int | None:
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            return int(value) if value.isdigit() else None
    return None
