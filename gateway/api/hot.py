"""Hot buyer routes answered by the edge without FastAPI.

At flash-sale rates the framework's per-request cost is larger than the work
itself (one snapshot read or one batched Lua call), so these routes parse the
path, headers and body themselves, call one service function and send its
answer. They are described for `/docs` by `routes/buyer.py` (the same
operations through FastAPI, which also serves them when the edge is not in
front).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from gateway.api.edge import BodyTooLarge, Receive, Scope, Send, send_json
from gateway.core.errors import DomainError
from gateway.core.metrics import count_scan
from gateway.sale.holds import event_of_hold
from gateway.waiting_room.pow import HEADER as HEADER_POW
from gateway.wiring import Gateway

Handler = Callable[[Scope, Receive, Send, str, str], Awaitable[None]]
_NO_STORE = [(b"cache-control", b"no-store")]
_ORDER_HEADERS = [*_NO_STORE, (b"referrer-policy", b"no-referrer")]  # as routes/orders.py TOKEN_HEADERS


def event_id_of(raw: str) -> int:
    # isascii: str.isdigit() also accepts digits int() refuses ("²"); 18 digits stay within bigint.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise DomainError("event_not_found", "No such event.", details={"event_id": raw})
    return int(raw)


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of `Authorization: Bearer <token>`, if any."""
    for name, value in headers:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                token = value[7:].strip()
                return token.decode("latin-1") if token else None
            return None
    return None


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip() or None
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
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


def query_int(query: bytes, name: str, low: int, high: int) -> int | None:
    """The whole number `name` of the query string (None when absent), as the framework route reads it:
    anything else, or a number outside [low, high], is refused with 422."""
    value = None
    for key, val in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == name:
            value = val
    if value is None:
        return None
    digits = value[1:] if value[:1] in ("-", "+") else value
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18 or not low <= int(value) <= high:
        raise DomainError("validation_error", f"Invalid request: {name}: must be a whole number from {low} to "
                          f"{high}.", details={"errors": [{"loc": ["query", name], "msg": "out of range or not a "
                                                           "whole number", "type": "int_parsing"}]}, status=422)
    return int(value)


class HotRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.max_body = gateway.settings.max_body_bytes

    def match(self, method: str, path: str) -> tuple[Handler, str] | None:
        parts = path.split("/")
        n = len(parts)
        if n == 5 and parts[1] == "v1":
            if parts[2] == "events":
                leaf = parts[4]
                if leaf == "availability" and method == "GET":
                    return self.availability, parts[3]
                if leaf == "holds" and method == "POST":
                    return self.create_hold, parts[3]
                if leaf == "queue":
                    if method == "GET":
                        return self.poll, parts[3]
                    if method == "POST":
                        return self.join, parts[3]
            elif parts[2] == "holds" and parts[4] == "checkout" and method == "POST":
                return self.checkout, parts[3]
        elif n == 4 and parts[1] == "v1" and parts[2] == "holds" and method == "DELETE":
            return self.release_hold, parts[3]
        elif n == 4 and parts[1] == "v1" and parts[2] == "orders" and method == "GET":
            return self.order, parts[3]  # every buyer fetches their order right after paying
        elif n == 3 and parts[1] == "v1" and parts[2] == "buyer-token" and method == "POST":
            return self.buyer_token, ""  # every buyer's first request: at a flash sale's rate
        elif parts[1:3] == ["v1", "scan"]:  # door devices (docs/scanning.md)
            if n == 3 and method == "POST":
                return self.scan, ""
            if n == 4 and parts[3] == "batch" and method == "POST":
                return self.scan_batch, ""
            if n == 4 and parts[3] == "manifest" and method == "GET":
                return self.scan_manifest, ""
        return None

    async def buyer_token(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        await read_body(receive, self.max_body)  # no body is needed; one is read (and bounded), not parsed
        self.gw.mint.check(self.gw.addresses.of_scope(scope))
        await send_json(send, 201, orjson.dumps(self.gw.gate.issue()), rid, _NO_STORE)

    async def availability(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        query = scope.get("query_string", b"")
        seats, since = (query_int(query, "seats", 0, 1), query_int(query, "since", 0, 10**18)) if query else (1, None)
        body = await self.gw.snapshots.availability(event_id_of(arg), with_seats=seats != 0, since=since)
        await send_json(send, 200, body, rid, _NO_STORE)

    async def create_hold(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id = event_id_of(arg)
        buyer = await self.gw.gate.admitted_buyer(event_id, bearer(scope["headers"]),
                                                  header(scope, b"x-admission-token"))
        body = parse_json(await read_body(receive, self.max_body))
        hold = await self.gw.holds.create(event_id, buyer, body, self.gw.addresses.of_scope(scope))
        await send_json(send, 201, orjson.dumps(hold), rid)

    async def release_hold(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        buyer = self.gw.gate.buyer(bearer(scope["headers"]))  # giving inventory back never needs admission
        await send_json(send, 200, orjson.dumps(await self.gw.holds.release(arg, buyer)), rid)

    async def checkout(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        buyer = await self.gw.gate.admitted_buyer(event_of_hold(arg), bearer(scope["headers"]),
                                                  header(scope, b"x-admission-token"))
        raw = await read_body(receive, self.max_body)
        body = parse_json(raw) if raw.strip() else {}
        result = await self.gw.checkout.checkout_request(hold_id=arg, buyer=buyer,
                                                         key=header(scope, b"idempotency-key"), body=body)
        await send_json(send, 201, orjson.dumps(result), rid, _NO_STORE)  # carries the order token

    async def order(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        if len(arg) > 64:  # as the framework route refuses it (Path(max_length=64))
            raise DomainError("validation_error", "Invalid request: order_id: at most 64 characters.",
                              details={"errors": [{"loc": ["path", "order_id"], "msg": "too long",
                                                   "type": "string_too_long"}]}, status=422)
        order = await self.gw.orders.for_buyer(arg, bearer(scope["headers"]))
        await send_json(send, 200, orjson.dumps(order), rid, _ORDER_HEADERS)

    async def join(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id, token = event_id_of(arg), bearer(scope["headers"])
        if self.gw.pow.enabled:
            self.gw.pow.check(event_id, token, header(scope, HEADER_POW))
        created, body = await self.gw.room.join(event_id, token, self.gw.addresses.of_scope(scope))
        await send_json(send, 201 if created else 200, orjson.dumps(body), rid, _NO_STORE)

    async def poll(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        seen = None
        query = scope.get("query_string", b"")
        if query:
            for part in query.split(b"&"):
                key, _, value = part.partition(b"=")
                if key == b"seen":  # as the framework route: a whole number 0..10^9 (Query(ge=0, le=10**9))
                    if not (value.isdigit() and len(value) <= 10 and int(value) <= 10**9):
                        raise DomainError("validation_error", "Invalid request: seen: a whole number from 0 to "
                                          "1000000000.", details={"errors": [{"loc": ["query", "seen"],
                                                                              "msg": "not a valid position",
                                                                              "type": "int_parsing"}]}, status=422)
                    seen = int(value)
        body = await self.gw.room.poll(event_id_of(arg), bearer(scope["headers"]), self.gw.addresses.of_scope(scope),
                                       seen)
        await send_json(send, 200, body, rid, _NO_STORE)

    # -- door devices: one service call each (gateway/scanning/service.py) ---------------------------
    async def scan(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        started = time.perf_counter()
        body = parse_json(await read_body(receive, self.max_body))
        result = await self.gw.scanning.scan(bearer(scope["headers"]), body, header(scope, b"x-scanner-queue"))
        count_scan(result.get("result", "other"))
        took = b"scan;dur=%.3f" % ((time.perf_counter() - started) * 1000)  # server-side latency (bench, k6)
        await send_json(send, 200, orjson.dumps(result), rid, [*_NO_STORE, (b"server-timing", took)])

    async def scan_batch(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        body = parse_json(await read_body(receive, self.max_body))
        result = await self.gw.scanning.batch(bearer(scope["headers"]), body, header(scope, b"x-scanner-queue"))
        for answer in result.get("results", ()):
            count_scan(answer.get("result", "other"))
        await send_json(send, 200, orjson.dumps(result), rid, _NO_STORE)

    async def scan_manifest(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        since = None
        for part in scope.get("query_string", b"").split(b"&"):
            key, _, value = part.partition(b"=")
            if key == b"since":
                since = value.decode("latin-1")
                if len(value) > 20:  # as the framework route (Query(max_length=20)) refuses it
                    raise DomainError("validation_error", "Invalid request: since: at most 20 characters.",
                                      details={"errors": [{"loc": ["query", "since"], "msg": "too long",
                                                           "type": "string_too_long"}]}, status=422)
        result = await self.gw.scanning.manifest(bearer(scope["headers"]), since, header(scope, b"x-scanner-queue"))
        await send_json(send, 200, orjson.dumps(result), rid, _NO_STORE)
