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
from redis.exceptions import RedisError

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.metrics import IN_PROCESS_POLL, count_rate_limited
from gateway.core.tokens import TokenSigner
from gateway.store.keys import join_keys
from gateway.store.scripts import Scripts
from gateway.waiting_room.cache import QueueCache, QueueView

CATCH_UP_S = 0.05  # at most one catch-up read per event per worker this often (poll `seen`)

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

    def status(self, view: QueueView, buyer: str, place: int, now: float, arrival: int = 0) -> dict[str, Any]:
        """What a waiting buyer at `place` (0 = still in the pre-queue), who arrived `arrival`-th, sees now."""
        body = self._status(view, buyer, place, now)
        if arrival and body["status"] != "sold_out":
            body["arrival"] = arrival
            if view.pre and view.opened:  # what the buyer needs to check their own place (shuffle.py)
                body["order"] = {"commitment": view.commitment, "seed": view.seed, "size": view.pre}
        return body

    def _status(self, view: QueueView, buyer: str, place: int, now: float) -> dict[str, Any]:
        ev = view.event_id
        if place == 0:
            if view.sold_out:
                return sold_out(ev)
            return {"status": "prequeue", "event_id": ev, "position": None, "eta_s": None,
                    "poll_after_s": self.settings.queue_poll_after_s,
                    "prequeue": {"joined": view.seq, "commitment": view.commitment}}
        if place > view.upto:
            if view.sold_out:
                return sold_out(ev)
            position = max(1, place - view.shown_upto(now))
            # The ETA counts from this worker's own copy of admitted-up-to (at most `queue_cache_s` old),
            # not from the previous second's value positions are shown against: that one trails admission
            # by one to two seconds, which short waits would show as ETAs twice too long.
            eta = view.eta(max(1, place - view.upto))
            if view.epoch:  # proof of life (seconds since the queue's epoch + 1; 0 would read "never")
                # `now` may be taken just before the queue's epoch was set (a join's clock is read before
                # its script runs): that is second 0, not -1.
                self.cache.saw(ev, place, max(0, int(now) - view.epoch) + 1)
            poll = self.settings.queue_poll_after_s
            if eta is not None:
                poll = max(1.0, min(poll, eta / 2))
            body = {"status": "waiting", "event_id": ev, "position": position, "eta_s": eta, "place": place,
                    "paused": view.paused or None, "poll_after_s": poll}
            if view.free <= 0 and view.held > 0:  # sold out for now: held tickets may still come back
                body["sold_out_for_now"] = True
                body["tickets_held"] = view.held
            return body
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

    async def poll(self, event_id: int, token: str | None, ip: str, seen: int | None = None) -> bytes:
        """The poll answer (JSON) for the holder of a queue token: position and ETA, the admission
        token once admitted, or that the event sold out. Costs no Redis command once the event is
        in this worker's cache. `seen`: the position this buyer was last shown (0: admitted), which
        the buyer page sends back: a worker whose copy is behind it catches up (one read, at most
        every CATCH_UP_S per event) and never shows more."""
        if not token:
            raise DomainError("unauthorized", "Send your queue token as `Authorization: Bearer <token>`.")
        now = time.time()
        view = self.cache.views.get(event_id)
        if view is None:  # first poll of this event in this worker: verify before touching Redis
            self.queue_payload(token, event_id, now)
            view = await self.cache.view(event_id)
        else:
            IN_PROCESS_POLL.inc()  # answered from the token and the cached counter, no Redis call
        if not self.poll_ip.allow(ip, now):
            raise rate_limited(self.poll_ip.retry_after(ip, now), "ip")
        claims = self.queue_payload(token, event_id, now)
        key = f"{event_id}:{claims['n']}"
        if not self.poll_token.allow(key, now):
            raise rate_limited(self.poll_token.retry_after(key, now), "token")
        view.used_at = time.monotonic()
        n = claims["n"]
        body = self.status(view, claims["sub"], view.place(n), now, n)
        if seen is not None and body["status"] == "waiting" and body["position"] > seen:
            body = await self._catch_up(view, claims["sub"], n, now, seen, body)
        return orjson.dumps(body)

    async def _catch_up(self, view: QueueView, buyer: str, n: int, now: float, seen: int,
                        body: dict[str, Any]) -> dict[str, Any]:
        """Another worker showed this buyer less (or admitted them): this worker's copy of the queue is
        behind (its refresh is late, e.g. under CPU load). Read the queue state once, then answer with
        at most the position shown before."""
        mono = time.monotonic()
        if seen == 0 or self.cache.catching_up(view.event_id) or mono - view.caught_up_at >= CATCH_UP_S:
            view.caught_up_at = mono
            try:
                await self.cache.catch_up(view)
                if seen == 0 and view.place(n) > view.upto:
                    # Shown admitted before: the read joined may have started before that answer; one
                    # started now cannot miss it (the poll-rate limits bound what `seen=0` can cost).
                    await self.cache.catch_up(view)
            except RedisError:
                pass  # Redis away: the floor below still holds
            body = self.status(view, buyer, view.place(n), now, n)
        if body["status"] == "waiting" and body["position"] > seen:
            body["position"] = max(1, seen)
            body["eta_s"] = view.eta(max(1, min(seen, body["place"] - view.upto)))
        return body

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
        body = self.status(view, buyer, data["r"] or view.place(n), now, n)
        body["queue_token"] = token
        body["rejoined"] = bool(data["existing"])
        return not data["existing"], body


    async def admission_log(self, event_id: int, start: int, count: int) -> dict[str, Any]:
        """The public admission log (no buyer identity): for places `start`.. (at most `count`, up to the
        admitted-up-to place), when each was admitted (Unix seconds) or null when it was skipped because
        its buyer stopped polling; for pre-queue places also the arrival number each holds. With the
        seed, anyone can check the order and that admission followed it (`verify.py`)."""
        view = await self.cache.view(event_id)
        view.used_at = time.monotonic()
        start = max(1, start)
        end = min(view.upto, start + count - 1)
        admitted: list[int | None] = []
        for place in range(start, end + 1):
            fate = view.fate_of(place)
            admitted.append(view.epoch + fate - 2 if fate >= 2 else None)
        body: dict[str, Any] = {"event_id": event_id, "opened_at": view.opened_at, "upto": view.upto, "from": start,
                                "admitted": admitted}
        if view.pre and view.opened:
            body["order"] = {"commitment": view.commitment, "seed": view.seed, "size": view.pre}
            body["arrivals"] = view.order[start - 1:min(end, view.pre)]
        return body


def sold_out(event_id: int) -> dict[str, Any]:
    """The final sell-out: the queue has ended; returned tickets go to the waiting list (waitlist.py)."""
    return {"status": "sold_out", "event_id": event_id, "position": None, "eta_s": None,
            "waitlist": f"/v1/events/{event_id}/waitlist"}


def rate_limited(retry_after: float, scope: str) -> DomainError:
    count_rate_limited("queue_" + scope)
    wait = max(1, math.ceil(retry_after))
    return DomainError("rate_limited", "Too many requests; slow down.", details={"retry_after_s": wait,
                       "scope": scope}, headers={"Retry-After": str(wait)})


def join_error(status: str, data: dict[str, Any], event_id: int) -> DomainError:
    if status == "rate_limited":
        return rate_limited(float(data.get("retry_after", 1)), data.get("scope", "ip"))
    if status == "sold_out":
        return DomainError("sold_out", "This event is sold out; join its waiting list for tickets that come back.",
                           details={"event_id": event_id, "waitlist": f"/v1/events/{event_id}/waitlist"})
    if status == "invalid_state":
        return DomainError("invalid_state", "This event has no waiting room; hold tickets with your buyer token.",
                           details={"event_id": event_id, **data})
    if status == "not_on_sale":
        return DomainError("not_on_sale", "The waiting room of this event is not open.",
                           details={"event_id": event_id, **data})
    return DomainError(status, status.replace("_", " ").capitalize() + ".", details=data)
