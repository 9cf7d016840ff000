"""The waiting list after an event's final sell-out (docs/waiting-room.md, "Waiting list").

Once the admission leader has seen the event sold out for good (nothing free, nothing held), the
queue ends and buyers may join the event's waiting list instead. Tickets that come back (a refund,
or a hold given back after the sell-out) are offered to listed buyers in list order: an offer is a
hold of that buyer, so the tickets it carries are off sale for everyone else; the buyer takes up to
all of them as an ordinary hold before the offer's deadline, or it lapses and passes to the next
listed buyer. Every change is one Lua call (`lua/waitlist_*.lua`, `lua/lib/waitlist.lua`, and
`lua/void.lua` for refunds); the leader's tick (`step`) lapses offers and mails new ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.tokens import TokenSigner
from gateway.sale.holds import hold_view, iso_ms
from gateway.sale.snapshots import SnapshotManager
from gateway.store.keys import event_key, waitlist_keys
from gateway.store.scripts import Scripts

EMAIL_MAX = 254


def _entry_error(status: str, data: dict[str, Any], event_id: int) -> DomainError:
    if status == "not_sold_out":
        return DomainError("not_sold_out", "This event is not sold out: join its waiting room "
                           f"(POST /v1/events/{event_id}/queue) instead.", details={"event_id": event_id},
                           status=409)
    if status == "invalid_state":
        return DomainError("invalid_state", "This event has no waiting room, hence no waiting list.",
                           details={"event_id": event_id, **data})
    if status == "event_not_found":
        return DomainError("event_not_found", "No such event.", details={"event_id": event_id})
    if status == "not_listed":
        return DomainError("not_found", "You are not on this event's waiting list.",
                           details={"event_id": event_id})
    if status == "no_offer":
        return DomainError("no_offer", "You have no open offer from this waiting list.",
                           details={"event_id": event_id, **data}, status=409)
    if status == "offer_lapsed":
        return DomainError("offer_lapsed", "Your offer has lapsed and passed to the next buyer on the list.",
                           details={"event_id": event_id, **data}, status=409)
    if status == "not_on_sale":
        return DomainError("not_on_sale", "This event is not on sale right now.",
                           details={"event_id": event_id, **data})
    if status == "bad_request":
        return DomainError("validation_error", f"Invalid request: {data.get('reason', 'bad input')}.",
                           details=data, status=422)
    return DomainError(status, status.replace("_", " ").capitalize() + ".", details=data)


def _email(body: Any) -> str:
    """The optional `email` of a join body ('' when absent); anything unusable is refused with 422."""
    if body is None:
        return ""
    if not isinstance(body, dict) or set(body) - {"email"}:
        raise DomainError("validation_error", "Invalid request: the body may only carry `email`.",
                          details={"allowed": ["email"]}, status=422)
    email = body.get("email")
    if email is None:
        return ""
    if (not isinstance(email, str) or len(email) > EMAIL_MAX or email.count("@") != 1
            or any(c.isspace() for c in email) or "." not in email.rpartition("@")[2]):
        raise DomainError("validation_error", "Invalid request: email: not an e-mail address.",
                          details={"field": "email"}, status=422)
    return email


def _count(body: Any) -> int:
    """The `count` of an accept body (0 = every offered ticket)."""
    if body is None:
        return 0
    if not isinstance(body, dict) or set(body) - {"count"}:
        raise DomainError("validation_error", "Invalid request: the body may only carry `count`.",
                          details={"allowed": ["count"]}, status=422)
    count = body.get("count")
    if count is None:
        return 0
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
        raise DomainError("validation_error", "Invalid request: count: a whole number of tickets from 1.",
                          details={"field": "count"}, status=422)
    return count


class WaitingList:
    """The buyer side: join, status, accept, leave. Stateless; built per request from the gateway's services."""

    def __init__(self, *, settings: Settings, scripts: Scripts, redis: Redis, signer: TokenSigner,
                 snapshots: SnapshotManager) -> None:
        self.settings = settings
        self.scripts = scripts
        self.redis = redis
        self.signer = signer
        self.snapshots = snapshots
        self.prefix = settings.redis_prefix

    @property
    def offer_ms(self) -> int:
        return self.settings.waitlist_offer_ttl_s * 1000

    async def join(self, event_id: int, buyer: str, body: Any) -> tuple[bool, dict[str, Any]]:
        """Put the buyer on the list (or find their entry); returns (new entry?, status)."""
        email = _email(body)
        reply = await self.scripts.call("waitlist_join", waitlist_keys(self.prefix, event_id),
                                        [buyer, email, self.offer_ms])
        if not reply.ok:
            raise _entry_error(reply.status, reply.data, event_id)
        return not reply.data["existing"], await self.status(event_id, buyer)

    async def status(self, event_id: int, buyer: str) -> dict[str, Any]:
        """The buyer's entry: place in the list while waiting, the offer while it is open, the hold once taken."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(event_key(self.prefix, event_id, "wl:who"), buyer)
        pipe.zrank(event_key(self.prefix, event_id, "wl:list"), buyer)
        pipe.zcard(event_key(self.prefix, event_id, "wl:list"))
        raw, rank, length = await pipe.execute()
        if raw is None:
            raise _entry_error("not_listed", {}, event_id)
        entry = orjson.loads(raw)
        status = entry.get("st", "waiting")
        body: dict[str, Any] = {"event_id": event_id, "status": status, "number": entry.get("n"),
                                "position": rank + 1 if rank is not None else None, "length": length,
                                "email": bool(entry.get("em")), "poll_after_s": self.settings.queue_poll_after_s}
        if status == "offered":
            now_ms = int(time.time() * 1000)
            if entry["dl"] <= now_ms:  # the leader passes it on at its next tick
                body["status"] = "lapsed"
            else:
                body["offer"] = await self._offer(event_id, entry)
        elif status == "accepted":
            body["hold_id"] = entry.get("ah")
            body["accepted_count"] = entry.get("k")
        return body

    async def _offer(self, event_id: int, entry: dict[str, Any]) -> dict[str, Any]:
        raw = await self.redis.hget(event_key(self.prefix, event_id, "hdata"), entry["h"])
        seats: list[int] = []
        ga: dict[str, int] = {}
        if raw is not None:
            rec = orjson.loads(raw)
            seats = rec.get("s") or []
            ga = rec.get("g") or {}
        view = self.snapshots.peek(event_id) or await self.snapshots.get(event_id)
        labels = view.layout.seat_labels
        return {"count": entry["q"], "seats": [labels[i] for i in seats if 0 <= i < len(labels)],
                "ga": ga if isinstance(ga, dict) else {}, "expires_at": iso_ms(entry["dl"]),
                "expires_at_ms": entry["dl"]}

    async def accept(self, event_id: int, buyer: str, body: Any) -> dict[str, Any]:
        """Take up to the offered tickets as an ordinary hold (the event's hold time), with an admission
        token for its checkout (the event is in queue mode)."""
        count = _count(body)
        hold_id = f"{event_id}-{os.urandom(10).hex()}"
        reply = await self.scripts.call("waitlist_accept", waitlist_keys(self.prefix, event_id),
                                        [buyer, count, hold_id, self.offer_ms])
        if not reply.ok:
            raise _entry_error(reply.status, reply.data, event_id)
        view = self.snapshots.peek(event_id) or await self.snapshots.get(event_id)
        hold = hold_view(view, reply.data)
        exp = int(time.time()) + self.settings.queue_admission_ttl_s
        hold["admission_token"] = self.signer.sign("a", {"sub": buyer, "ev": event_id, "r": 0, "exp": exp})
        return hold

    async def leave(self, event_id: int, buyer: str) -> dict[str, Any]:
        """Leave the list; an open offer passes to the next listed buyer at once."""
        reply = await self.scripts.call("waitlist_leave", waitlist_keys(self.prefix, event_id), [buyer, self.offer_ms])
        if not reply.ok:
            raise _entry_error(reply.status, reply.data, event_id)
        return {"event_id": event_id, "status": reply.data["entry"].get("st")}


async def step(scripts: Scripts, settings: Settings, event_id: int) -> dict[str, Any]:
    """The leader's tick after the final sell-out: lapsed offers pass on, returned free tickets are offered.
    Returns {lapsed, offered, mail: [offer, ...]} (the offers to tell by e-mail)."""
    reply = await scripts.call("waitlist_step", waitlist_keys(settings.redis_prefix, event_id),
                               [settings.waitlist_offer_ttl_s * 1000])
    data = reply.data if reply.ok else {}
    mail = data.get("mail") or []
    data["mail"] = [orjson.loads(m) for m in mail] if isinstance(mail, list) else []
    return data


def offer_email(*, to: str, event_id: int, event_name: str, count: int, deadline_ms: int) -> dict[str, Any]:
    """The e-mail telling a listed buyer about their offer."""
    tickets = "1 ticket" if count == 1 else f"{count} tickets"
    return {"to": to, "subject": f"Tickets for {event_name} are waiting for you",
            "text": f"{tickets} for {event_name} came back and are offered to you until {iso_ms(deadline_ms)}.\n"
                    f"Take them with POST /v1/events/{event_id}/waitlist/accept (your buyer token); after that "
                    f"time they pass to the next buyer on the waiting list.\n"}


def queue_waitlist_reads(pipe: Any, prefix: str, event_id: int) -> None:
    """Add the reads of the organiser's waiting-list figures to a pipeline (three commands; see `figures`)."""
    pipe.hgetall(event_key(prefix, event_id, "wl:state"))
    pipe.zcard(event_key(prefix, event_id, "wl:list"))
    pipe.zcard(event_key(prefix, event_id, "wl:offers"))


def figures(state: dict[bytes, bytes], length: int, open_offers: int) -> dict[str, int]:
    """The organiser's figures: buyers who joined and still wait, open offers, offers made, accepted,
    lapsed and declined (and their tickets)."""
    g = {k.decode(): int(float(v)) for k, v in state.items()}
    return {"joined": g.get("seq", 0), "length": length, "open_offers": open_offers,
            "offers": g.get("offers", 0), "offered_tickets": g.get("offered_tickets", 0),
            "accepted": g.get("accepted", 0), "accepted_tickets": g.get("accepted_tickets", 0),
            "lapsed": g.get("lapsed", 0), "declined": g.get("declined", 0)}
