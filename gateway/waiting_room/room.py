"""The virtual waiting room, buyer side: join and poll.

Joining is one Lua call (`lua/queue_join.lua`). Polling costs no Redis command:
the queue token is an HMAC token verified in-process (and remembered by the
signer), and the event's queue state comes from the worker's `QueueCache`
(cache.py). The admission leader (`gateway/workers/admission.py`) moves the
admitted-up-to counter; organiser functions (rate, pre-queue, figures) live in
`admin.py`; the check that a hold or checkout was admitted lives in `gate.py`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import hotpath
import orjson

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.tokens import TokenSigner
from gateway.store.keys import join_keys
from gateway.store.scripts import Scripts
from gateway.waiting_room.cache import QueueCache, QueueView

JOIN_WINDOW_S = 60
ADMISSIONS_MEMO = 50_000


class WaitingRoom:
    def __init__(self, *, settings: Settings, scripts: Scripts, signer: TokenSigner, cache: QueueCache) -> None:
        s = settings
        self.settings = s
        self.scripts = scripts
        self.signer = signer
        self.cache = cache
        self.prefix = s.redis_prefix
        self._admissions: dict[tuple[int, int], tuple[str, int]] = {}
        self.poll_ip = hotpath.TokenBucketTable(s.queue_poll_per_ip_per_s, 2 * s.queue_poll_per_ip_per_s, 100_000)
        self.poll_token = hotpath.TokenBucketTable(s.queue_poll_per_token_per_s, 5 * s.queue_poll_per_token_per_s,
                                                   200_000)
        self.join_ip = hotpath.TokenBucketTable(s.queue_join_per_ip_per_s, 5 * s.queue_join_per_ip_per_s, 100_000)

    def queue_payload(self, token: str, event_id: int, now: float) -> dict[str, Any]:
        payload = self.signer.verify(token, "q", now=now)
        if payload.get("ev") != event_id:
            raise DomainError("wrong_event", "This queue token belongs to another event.",
                              details={"event_id": event_id})
        return payload

    # -- buyer operations --------------------------------------------------------------
    def admission_token(self, view: QueueView, buyer: str, place: int, admitted_at: int) -> tuple[str, int]:
        key = (view.event_id, place)
        hit = self._admissions.get(key)
        if hit is not None:
            return hit
        exp = admitted_at + self.settings.queue_admission_ttl_s
        token = self.signer.sign("a", {"sub": buyer, "ev": view.event_id, "r": place, "exp": exp})
        if len(self._admissions) > ADMISSIONS_MEMO:
            self._admissions.clear()
        self._admissions[key] = (token, exp)
        return token, exp

    def status(self, view: QueueView, buyer: str, place: int, now: float) -> dict[str, Any]:
        """What a waiting buyer at `place` sees now (0 = still in the pre-queue)."""
        ev = view.event_id
        if place == 0:
            if view.sold_out:
                return {"status": "sold_out", "event_id": ev, "position": None, "eta_s": None}
            return {"status": "prequeue", "event_id": ev, "position": None, "eta_s": None,
                    "poll_after_s": self.settings.queue_poll_after_s,
                    "prequeue": {"joined": view.seq, "commitment": view.commitment}}
        if place > view.upto:
            if view.sold_out:
                return {"status": "sold_out", "event_id": ev, "position": None, "eta_s": None}
            position = place - view.upto
            eta = view.eta(position)
            rel = int(now) - view.epoch
            self.cache.saw(ev, place, rel + 1)
            poll = self.settings.queue_poll_after_s
            if eta is not None:
                poll = max(1.0, min(poll, eta / 2))
            return {"status": "waiting", "event_id": ev, "position": position, "eta_s": eta, "place": place,
                    "paused": view.paused or None, "poll_after_s": poll}
        fate = view.fate_of(place)
        if fate < 2:
            return {"status": "expired", "event_id": ev, "reason": "stalled", "position": None, "eta_s": None,
                    "message": "You stopped polling for too long and lost your place; join again."}
        admitted_at = view.epoch + fate - 2
        token, exp = self.admission_token(view, buyer, place, admitted_at)
        if now >= exp:
            return {"status": "expired", "event_id": ev, "reason": "admission_expired", "position": None,
                    "eta_s": None, "message": "Your admission has expired; join again."}
        return {"status": "admitted", "event_id": ev, "position": 0, "eta_s": 0, "place": place,
                "admission_token": token, "expires_at": exp}

    async def poll(self, event_id: int, token: str | None, ip: str) -> bytes:
        """The poll answer (JSON) for the holder of a queue token: position and ETA, the admission
        token once admitted, or that the event sold out. Costs no Redis command once the event is
        in this worker's cache."""
        if not token:
            raise DomainError("unauthorized", "Send your queue token as `Authorization: Bearer <token>`.")
        now = time.time()
        view = self.cache.views.get(event_id)
        if view is None:  # first poll of this event in this worker: verify before touching Redis
            self.queue_payload(token, event_id, now)
            view = await self.cache.view(event_id)
        if not self.poll_ip.allow(ip, now):
            raise rate_limited(self.poll_ip.retry_after(ip, now), "ip")
        claims = self.queue_payload(token, event_id, now)
        key = f"{event_id}:{claims['n']}"
        if not self.poll_token.allow(key, now):
            raise rate_limited(self.poll_token.retry_after(key, now), "token")
        view.used_at = time.monotonic()
        return orjson.dumps(self.status(view, claims["sub"], view.place(claims["n"]), now))

    async def join(self, event_id: int, buyer_token: str | None, ip: str) -> tuple[bool, dict[str, Any]]:
        """Join (or rejoin) the waiting room; returns (new place?, body with the queue token)."""
        if not buyer_token:
            raise DomainError("unauthorized", "Send your buyer token (POST /v1/buyer-token) as "
                              "`Authorization: Bearer <token>`.")
        buyer = self.signer.verify(buyer_token, "b")["sub"]
        s = self.settings
        now = time.time()
        if not self.join_ip.allow(ip, now):
            raise rate_limited(self.join_ip.retry_after(ip, now), "ip")
        reply = await self.scripts.call("queue_join", join_keys(self.prefix, event_id, ip, buyer),
                                        [buyer, s.queue_join_per_ip_per_min, s.queue_join_per_buyer_per_min,
                                         JOIN_WINDOW_S, s.queue_admission_ttl_s])
        if not reply.ok:
            raise join_error(reply.status, reply.data, event_id)
        data = reply.data
        view = await self.cache.view(event_id)
        if data["upto"] > view.upto or (data["r"] and not view.opened):
            await self.cache.refresh([view])
        view.used_at = time.monotonic()
        n = data["n"]
        token = self.signer.sign("q", {"ev": event_id, "n": n, "sub": buyer, "exp": int(now) + s.queue_token_ttl_s})
        body = self.status(view, buyer, data["r"] or view.place(n), now)
        body["queue_token"] = token
        body["rejoined"] = bool(data["existing"])
        return not data["existing"], body


def rate_limited(retry_after: float, scope: str) -> DomainError:
    wait = max(1, math.ceil(retry_after))
    return DomainError("rate_limited", "Too many requests; slow down.", details={"retry_after_s": wait,
                       "scope": scope}, headers={"Retry-After": str(wait)})


def join_error(status: str, data: dict[str, Any], event_id: int) -> DomainError:
    if status == "rate_limited":
        return rate_limited(float(data.get("retry_after", 1)), data.get("scope", "ip"))
    if status == "sold_out":
        return DomainError("sold_out", "This event is sold out.", details={"event_id": event_id})
    if status == "invalid_state":
        return DomainError("invalid_state", "This event has no waiting room; hold tickets with your buyer token.",
                           details={"event_id": event_id, **data})
    if status == "not_on_sale":
        return DomainError("not_on_sale", "The waiting room of this event is not open.",
                           details={"event_id": event_id, **data})
    return DomainError(status, status.replace("_", " ").capitalize() + ".", details=data)
