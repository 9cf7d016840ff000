"""Waiting-room routes answered by the edge (no FastAPI): join and poll.

`POST /v1/events/{id}/queue` (buyer token) joins or finds the buyer's place;
`GET /v1/events/{id}/queue` (queue token) answers the position and ETA, the
admission token once admitted, or that the event sold out. A poll costs no
Redis command (see gateway/services/waiting_room.py).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.api.edge import Receive, Send, send_json
from gateway.core.errors import DomainError
from gateway.services.tokens import bearer
from gateway.services.waiting_room import WaitingRoom

_NO_STORE = [(b"cache-control", b"no-store")]


def _event_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise DomainError("event_not_found", "No such event.", details={"event_id": raw})
    return int(raw)


def _ip(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


class QueueRoutes:
    def __init__(self, room: WaitingRoom) -> None:
        self.room = room

    def match(self, method: str, arg: str) -> Any:
        if method == "GET":
            return self.poll, arg
        if method == "POST":
            return self.join, arg
        return None

    async def join(self, scope: dict[str, Any], receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id = _event_id(arg)
        token = bearer(scope["headers"])
        if token is None:
            raise DomainError("unauthorized", "Send your buyer token (POST /v1/buyer-token) as "
                              "`Authorization: Bearer <token>`.")
        buyer = self.room.signer.verify(token, "b")["sub"]
        created, body = await self.room.join(event_id, buyer, _ip(scope))
        await send_json(send, 201 if created else 200, orjson.dumps(body), rid, _NO_STORE)

    async def poll(self, scope: dict[str, Any], receive: Receive, send: Send, rid: str, arg: str) -> None:
        event_id = _event_id(arg)
        token = bearer(scope["headers"])
        if token is None:
            raise DomainError("unauthorized", "Send your queue token as `Authorization: Bearer <token>`.")
        room = self.room
        view = room.views.get(event_id)
        now = time.time()
        if view is None:  # first poll of this event in this worker: verify before touching Redis
            room.queue_payload(token, event_id, now)
            view = await room.view(event_id)
        await send_json(send, 200, room.poll(event_id, token, _ip(scope), now, view), rid, _NO_STORE)
