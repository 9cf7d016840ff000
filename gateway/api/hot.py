"""Hot buyer routes answered by the edge without FastAPI.

At flash-sale rates the framework's per-request cost is larger than the work
itself (one snapshot read or one batched Lua call), so these routes parse the
path, headers and body themselves, call one service function and send its
answer. They are described for `/docs` by `routes/buyer.py` (the same
operations through FastAPI, which also serves them when the edge is not in
front).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.api.edge import BodyTooLarge, Receive, Scope, Send, send_json
from gateway.core.errors import DomainError
from gateway.sale.holds import event_of_hold
from gateway.wiring import Gateway

Handler = Callable[[Scope, Receive, Send, str, str], Awaitable[None]]
_NO_STORE = [(b"cache-control", b"no-store")]


def event_id_of(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
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


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


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


def query_int(query: bytes, name: bytes) -> int | None:
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            return int(value) if value.isdigit() else None
    return None


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
        return None

    async def availability(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        query = scope.get("query_string", b"")
        since = query_int(query, b"since") if b"since=" in query else None
        body = await self.gw.snapshots.availability(event_id_of(arg), with_seats=b"seats=0" not in query,
                                                    since=since)
        await send_json(send, 200, body, rid, _NO_STORE)

    async def create_hold(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id = event_id_of(arg)
        buyer = await self.gw.gate.admitted_buyer(event_id, bearer(scope["headers"]),
                                                  header(scope, b"x-admission-token"))
        body = parse_json(await read_body(receive, self.max_body))
        await send_json(send, 201, orjson.dumps(await self.gw.holds.create(event_id, buyer, body)), rid)

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
        await send_json(send, 201, orjson.dumps(result), rid)

    async def join(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        created, body = await self.gw.room.join(event_id_of(arg), bearer(scope["headers"]), client_ip(scope))
        await send_json(send, 201 if created else 200, orjson.dumps(body), rid, _NO_STORE)

    async def poll(self, scope: Scope, receive: Receive, send: Send, rid: str, arg: str) -> None:
        body = await self.gw.room.poll(event_id_of(arg), bearer(scope["headers"]), client_ip(scope))
        await send_json(send, 200, body, rid, _NO_STORE)
