"""The virtual waiting room, as one gateway worker sees it.

Joining is one Lua call (`lua/queue_join.lua`). Polling costs no Redis command:
the queue token is an HMAC token verified in-process, and the event's queue
state (admitted-up-to place, pre-queue size and seed, measured rate, the fate of
every admitted place) is cached per worker and refreshed by one background task
every `queue_cache_s`, whatever the number of pollers. Proof of life of waiting
places (a place that stops polling for `queue_stall_s` is skipped) is collected
in memory and written to Redis in one batched command per event every
`queue_seen_flush_s`.

The admission leader (`gateway/workers/admission.py`) moves the counter;
organiser functions (rate, pre-queue, stats) live in `queue_admin.py`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis as redis_sync

import hotpath
from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime
from gateway.services.queue_shuffle import shuffle_place
from gateway.services.tokens import TokenSigner, bearer
from gateway.store.keys import event_key
from gateway.store.scripts import Scripts

log = logging.getLogger("flashgate.waiting_room")

VIEW_IDLE_S = 60.0        # a cached event nobody polled for this long is dropped
MODE_TTL_S = 1.0          # queue-mode cache entries are refreshed this often
TOKEN_CACHE = 200_000     # verified queue tokens kept per worker
SEEN_CHUNK = 512          # places per BITFIELD command when flushing liveness
JOIN_WINDOW_S = 60


def qkey(prefix: str, event_id: int, name: str) -> str:
    return event_key(prefix, event_id, "q:" + name)


def join_keys(prefix: str, event_id: int, ip: str, buyer: str) -> list[str]:
    return [event_key(prefix, event_id, "meta"), qkey(prefix, event_id, "state"), qkey(prefix, event_id, "who"),
            qkey(prefix, event_id, "seen"), qkey(prefix, event_id, "fate"), qkey(prefix, event_id, "seed"),
            qkey(prefix, event_id, "rl:ip:" + ip), qkey(prefix, event_id, "rl:b:" + buyer)]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def _f(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value not in (None, b"") else default
    except ValueError:
        return default


@dataclass
class QueueView:
    """One event's queue state in this worker (read-only copy, at most `queue_cache_s` old)."""

    event_id: int
    mode: bool = False
    status: str = ""
    prequeue: bool = False
    opened: bool = False
    pre: int = 0
    seed: str = ""
    commitment: str = ""
    epoch: int = 0
    seq: int = 0
    upto: int = 0
    sold_out: bool = False
    paused: str = ""
    rate: float = 0.0
    mrate: float = 0.0
    factor: float = 1.0
    fate: bytearray = field(default_factory=bytearray)  # u32 per place, place 0 unused
    places: dict[int, int] = field(default_factory=dict)  # pre-queue arrival -> place (memo)
    used_at: float = 0.0

    def apply(self, state: dict[bytes, bytes], meta: list[Any], fate_from: int, fate_tail: bytes) -> None:
        self.status = _s(meta[0])
        self.mode = _s(meta[1]) == "1"
        self.rate = _f(meta[2])
        get = state.get
        self.prequeue = get(b"prequeue") == b"1"
        self.opened = bool(get(b"opened"))
        self.pre = int(_f(get(b"pre")))
        self.seed = _s(get(b"seed"))
        self.commitment = _s(get(b"commitment"))
        self.epoch = int(_f(get(b"epoch")))
        self.seq = int(_f(get(b"seq")))
        self.upto = int(_f(get(b"upto")))
        self.sold_out = get(b"sold_out") == b"1"
        self.paused = _s(get(b"paused"))
        self.mrate = _f(get(b"mrate"))
        self.factor = _f(get(b"factor"), 1.0)
        if not self.fate:
            self.fate = bytearray(4)
        if len(self.fate) == fate_from:  # fates are final once written: only the new tail is read
            self.fate += fate_tail

    def place(self, n: int) -> int:
        """The place of arrival `n`: its shuffled place in the pre-queue, else `n`; 0 before opening."""
        if not self.opened:
            return 0
        if n > self.pre:
            return n
        place = self.places.get(n)
        if place is None:
            if len(self.places) > TOKEN_CACHE:
                self.places.clear()
            place = self.places[n] = shuffle_place(self.seed, self.pre, n)
        return place

    def fate_of(self, place: int) -> int:
        o = 4 * place
        raw = self.fate[o:o + 4]
        return int.from_bytes(raw, "big") if len(raw) == 4 else 0

    def eta(self, position: int) -> int | None:
        if self.paused or not self.opened:
            return None
        rate = self.mrate if self.mrate > 0.05 else self.rate * self.factor
        return math.ceil(position / rate) if rate > 0 else None


class WaitingRoom:
    def __init__(self, runtime: Runtime, signer: TokenSigner, scripts: Scripts | None = None) -> None:
        s = runtime.settings
        self.settings = s
        self.redis = runtime.redis
        self.scripts: Scripts = scripts or runtime.extras["scripts"]
        self.signer = signer
        self.prefix = s.redis_prefix
        self.views: dict[int, QueueView] = {}
        self._loading: dict[int, asyncio.Future] = {}
        self.seen: dict[int, dict[int, int]] = {}
        self.modes: dict[int, tuple[bool | None, float]] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._admissions: dict[tuple[int, int], tuple[str, int]] = {}
        self._sync: redis_sync.Redis | None = None
        self._task: asyncio.Task | None = None
        self.poll_ip = hotpath.TokenBucketTable(s.queue_poll_per_ip_per_s, 2 * s.queue_poll_per_ip_per_s, 100_000)
        self.poll_token = hotpath.TokenBucketTable(s.queue_poll_per_token_per_s, 5 * s.queue_poll_per_token_per_s,
                                                   200_000)
        self.join_ip = hotpath.TokenBucketTable(s.queue_join_per_ip_per_s, 5 * s.queue_join_per_ip_per_s, 100_000)

    # -- cache ----------------------------------------------------------------------
    async def view(self, event_id: int) -> QueueView:
        view = self.views.get(event_id)
        if view is not None:
            return view
        pending = self._loading.get(event_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(event_id))
            self._loading[event_id] = pending
            pending.add_done_callback(lambda _: self._loading.pop(event_id, None))
        return await asyncio.shield(pending)

    async def _load(self, event_id: int) -> QueueView:
        view = QueueView(event_id=event_id, used_at=time.monotonic())
        await self._refresh([view])
        if not view.mode and not view.prequeue:
            raise DomainError("not_on_sale", "This event has no open waiting room.",
                              details={"event_id": event_id, "status": view.status or "draft"})
        self.views[event_id] = view
        return view

    async def _refresh(self, views: list[QueueView]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        offsets = []
        for v in views:
            offsets.append(max(len(v.fate), 4))
            pipe.hgetall(qkey(self.prefix, v.event_id, "state"))
            pipe.hmget(event_key(self.prefix, v.event_id, "meta"), "status", "queue_mode", "admission_rate")
            pipe.getrange(qkey(self.prefix, v.event_id, "fate"), offsets[-1], -1)
        results = await pipe.execute()
        for i, v in enumerate(views):
            v.apply(results[3 * i], results[3 * i + 1], offsets[i], results[3 * i + 2])
            self.modes[v.event_id] = (v.mode, time.monotonic() + MODE_TTL_S)

    async def refresh_all(self) -> None:
        now = time.monotonic()
        for event_id in [e for e, v in self.views.items() if now - v.used_at > VIEW_IDLE_S]:
            self.views.pop(event_id, None)
        if self.views:
            await self._refresh(list(self.views.values()))

    async def event_changed(self, event_id: int) -> None:
        """An organiser changed the event (status, rate, pre-queue): refresh this worker's copy at once."""
        self.modes.pop(event_id, None)
        await self.scripts.raw("queue_freeze", [event_key(self.prefix, event_id, "meta"),
                                                qkey(self.prefix, event_id, "state"),
                                                qkey(self.prefix, event_id, "seed")], [])
        if event_id in self.views:
            await self._refresh([self.views[event_id]])

    # -- liveness -------------------------------------------------------------------
    async def flush_seen(self) -> int:
        """Write the places polled since the last flush (one BITFIELD per event per chunk)."""
        batch, self.seen = self.seen, {}
        if not batch:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for event_id, places in batch.items():
            items = list(places.items())
            for i in range(0, len(items), SEEN_CHUNK):
                args: list[Any] = []
                for place, value in items[i:i + SEEN_CHUNK]:
                    args += ["SET", "u32", f"#{place}", value]
                pipe.execute_command("BITFIELD", qkey(self.prefix, event_id, "seen"), *args)
                n += 1
        await pipe.execute()
        return n

    # -- background -----------------------------------------------------------------
    async def run(self) -> None:
        s = self.settings
        next_flush = time.monotonic() + s.queue_seen_flush_s
        failing = False
        while True:
            await asyncio.sleep(s.queue_cache_s)
            try:
                await self.refresh_all()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + s.queue_seen_flush_s
                    await self.flush_seen()
                    await self._refresh_modes()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep serving the cached copy
                if not failing:
                    log.warning("waiting room refresh failed; serving the cached state", extra={"error": repr(exc)})
                failing = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.flush_seen()
        except Exception:
            pass
        if self._sync is not None:
            self._sync.close()

    # -- verification ---------------------------------------------------------------
    def queue_payload(self, token: str, event_id: int, now: float) -> dict[str, Any]:
        payload = self._tokens.get(token)
        if payload is None:
            payload = self.signer.verify(token, "q", now=now)
            if len(self._tokens) >= TOKEN_CACHE:
                self._tokens.clear()
            self._tokens[token] = payload
        elif now >= payload["exp"]:
            raise DomainError("token_expired", "The queue token has expired; join the queue again.",
                              details={"expired_at": payload["exp"]})
        if payload.get("ev") != event_id:
            raise DomainError("wrong_event", "This queue token belongs to another event.",
                              details={"event_id": event_id})
        return payload

    # -- hook for holds and checkout --------------------------------------------------
    def queue_mode(self, event_id: int) -> bool:
        hit = self.modes.get(event_id)
        now = time.monotonic()
        if hit is not None and (hit[1] > now or hit[0] is not None):
            return bool(hit[0])
        # First sight of this event in this worker: one blocking read, then cached and refreshed in
        # the background. The hook is synchronous, and guessing either way would be wrong: "off"
        # lets buyers past the queue, "on" refuses buyers of events without one.
        if self._sync is None:
            self._sync = redis_sync.Redis.from_url(self.settings.redis_url or "", socket_timeout=0.5,
                                                   socket_connect_timeout=0.5)
        try:
            raw = self._sync.hget(event_key(self.prefix, event_id, "meta"), "queue_mode")
        except redis_sync.RedisError:
            raise DomainError("unavailable", "The sale is temporarily unavailable; try again in a moment.",
                              headers={"Retry-After": "1"}) from None
        mode = None if raw is None else raw == b"1"
        self.modes[event_id] = (mode, now + MODE_TTL_S)
        return bool(mode)

    async def _refresh_modes(self) -> None:
        ids = list(self.modes)
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.hget(event_key(self.prefix, event_id, "meta"), "queue_mode")
        until = time.monotonic() + MODE_TTL_S + self.settings.queue_seen_flush_s
        for event_id, raw in zip(ids, await pipe.execute()):
            self.modes[event_id] = (None if raw is None else raw == b"1", until)
        if len(self.modes) > 10_000:
            self.modes.clear()

    def buyer_of(self, scope: dict[str, Any], event_id: int) -> str:
        """The buyer of a hold or checkout request. In queue mode: the buyer token in `Authorization`
        plus an admission token for this event and this buyer in `X-Admission-Token`."""
        token = bearer(scope["headers"])
        if token is None:
            raise DomainError("unauthorized", "Send your buyer token as `Authorization: Bearer <token>`.")
        buyer = self.signer.verify(token, "b")["sub"]
        if scope["method"] == "DELETE" or not self.queue_mode(event_id):
            return buyer  # giving inventory back never needs an admission
        admission = None
        for name, value in scope["headers"]:
            if name == b"x-admission-token":
                admission = value.decode("latin-1").strip()
                break
        if not admission:
            raise DomainError("admission_required", "This sale has a waiting room: join it with POST "
                              f"/v1/events/{event_id}/queue and send the admission token you get as "
                              "`X-Admission-Token`.", details={"event_id": event_id})
        claims = self.signer.verify(admission, "a")
        if claims.get("ev") != event_id:
            raise DomainError("wrong_event", "This admission token belongs to another event.",
                              details={"event_id": event_id})
        if claims.get("sub") != buyer:
            raise DomainError("forbidden", "This admission token was issued to another buyer.")
        return buyer

    # -- buyer operations --------------------------------------------------------------
    def admission_token(self, view: QueueView, buyer: str, place: int, admitted_at: int) -> tuple[str, int]:
        key = (view.event_id, place)
        hit = self._admissions.get(key)
        if hit is not None:
            return hit
        exp = admitted_at + self.settings.queue_admission_ttl_s
        token = self.signer.sign("a", {"sub": buyer, "ev": view.event_id, "r": place, "exp": exp})
        if len(self._admissions) > 50_000:
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
            self.seen.setdefault(ev, {})[place] = rel + 1
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

    def poll(self, event_id: int, token: str, ip: str, now: float, view: QueueView) -> bytes:
        if not self.poll_ip.allow(ip, now):
            raise rate_limited(self.poll_ip.retry_after(ip, now), "ip")
        claims = self.queue_payload(token, event_id, now)
        key = f"{event_id}:{claims['n']}"
        if not self.poll_token.allow(key, now):
            raise rate_limited(self.poll_token.retry_after(key, now), "token")
        view.used_at = time.monotonic()
        return orjson.dumps(self.status(view, claims["sub"], view.place(claims["n"]), now))

    async def join(self, event_id: int, buyer: str, ip: str) -> tuple[bool, dict[str, Any]]:
        """Join (or rejoin) the waiting room; returns (new place?, body with the queue token)."""
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
        view = await self.view(event_id)
        if data["upto"] > view.upto or (data["r"] and not view.opened):
            await self._refresh([view])
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


async def queue_stats(runtime: Runtime, event_id: int) -> dict[str, Any]:
    """The queue figures of one event, for `GET /v1/events/{id}/stats` (see queue_admin.queue_stats)."""
    from gateway.services.queue_admin import queue_stats as figures

    return await figures(runtime, event_id)
