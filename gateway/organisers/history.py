"""The audit's replay of an event's history: its `changes` stream, record by record (docs/audit.md).

Every inventory script writes one record per change (lua/lib/common.lua, `record_change`): the
version `v`, the `op` (1 hold, 2 release, 3 sell, 4 void, 5 expire), the seats `s` and GA tickets
`g`, and, for this replay, the hold `h`, the buyer `b`, the ticket count `n`, the script's clock `t`,
the hold's expiry in force `e` (a sale's includes the payment window; a void has none) and, for
the sale of a paying hold, when its payment began `p`.

`Replay` keeps what the scripts keep — which hold holds each seat (the held bitmap), which seats are
sold, each GA type's held and sold counts, each buyer's tickets (held + bought), each live hold's
expiry — and checks every record against that state at the instant the script acted. At the end,
the replayed state is compared with Redis's own counters, read in one MULTI with the stream's last
id, so a script that changes counters differently from what it records is caught too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.store.keys import event_key
from gateway.store.cluster import ready_for_transaction

OP_HOLD, OP_RELEASE, OP_SELL, OP_VOID, OP_EXPIRE = 1, 2, 3, 4, 5
OP_NAMES = {OP_RELEASE: "release", OP_SELL: "sale", OP_VOID: "void", OP_EXPIRE: "expiry"}
PAGE = 5000          # records per XRANGE
SHOWN = 5            # violations quoted per check
IDENTITY = (b"h", b"b", b"n", b"t")

#: The audit check of each kind of violation, in report order.
CHECKS: dict[str, str] = {
    "granted_while_sold": "history: no seat granted while sold",
    "granted_while_held": "history: no seat granted while another hold held it",
    "expired_early": "history: no hold expired before its expiry",
    "sold_after_expiry": "history: no hold sold after its expiry",
    "released_after_expiry": "history: no hold released after its expiry",
    "ga_over_capacity": "history: GA held + sold within capacity after every change",
    "buyer_over_limit": "history: no buyer over the per-buyer limit after any change",
    "sequence": "history: every give-back, sale and void follows its grant",
    "end_state": "history: replayed end state equals Redis (seat bitmaps, GA counters, buyers, holds)",
}
COMPLETE_CHECK = "history: change stream complete from version 1, every record with identities"


def at(ms: int | None) -> str:
    """A script's clock as `t=<ms> (ISO time)`."""
    if ms is None:
        return "t=?"
    return "t=%d (%s.%03dZ)" % (ms, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)), ms % 1000)


@dataclass(slots=True)
class Violation:
    kind: str          # a key of CHECKS
    stream_id: str     # the record's id in the `changes` stream ("" for the end-state comparison)
    t: int | None      # the script's clock when it acted
    message: str

    def __str__(self) -> str:
        return f"[{self.stream_id}] {self.message}" if self.stream_id else self.message


@dataclass(slots=True)
class Hold:
    """A grant as the replay remembers it."""

    buyer: str
    n: int
    expiry: int
    seats: tuple[int, ...]
    ga: dict[str, int]
    stream_id: str


@dataclass(slots=True)
class EndState:
    """Redis's own counters of an event, read in one MULTI with the stream's last id."""

    sold: set[int]
    held: set[int]
    ga: dict[str, dict[str, int]]      # type -> {cap, held, sold}
    buyers: dict[str, int]
    holds: set[str]                    # ids of the hold records (hdata)
    version: int
    limit: int | None
    last_id: str | None


def _int(raw: bytes) -> int:
    try:
        return int(raw)
    except ValueError:  # a Lua number written as a float
        return int(float(raw))


def _seats(raw: bytes) -> tuple[int, ...]:
    return tuple(int(x) for x in raw.split(b",")) if raw else ()


def _ga(raw: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    if raw:
        for part in raw.decode().split(","):
            code, _, delta = part.rpartition(":")
            out[code] = out.get(code, 0) + int(delta)
    return out


def bits(raw: bytes | None) -> set[int]:
    """The indices of the set bits of a Redis bitmap (bit 0 = the high bit of byte 0)."""
    out: set[int] = set()
    for byte_index, byte in enumerate(raw or b""):
        if byte:
            base = byte_index * 8
            out.update(base + bit for bit in range(8) if byte >> (7 - bit) & 1)
    return out


class Replay:
    """The sale replayed from its change records (fed in stream order)."""

    def __init__(self, *, caps: dict[str, int], limit: int | None) -> None:
        self.caps = caps
        self.limit = limit
        self.held: dict[int, str] = {}           # seat -> hold whose grant set its held bit
        self.sold: dict[int, str] = {}           # seat -> hold that bought it
        self.ga_held: dict[str, int] = {}
        self.ga_sold: dict[str, int] = {}
        self.buyers: dict[str, int] = {}         # buyer -> tickets held + bought
        self.live: dict[str, Hold] = {}          # granted, not yet released, expired or sold
        self.orders: dict[str, Hold] = {}        # sold and not voided (by hold id)
        self.ended: dict[str, str] = {}          # hold id -> how it ended ("released at <id>", ...)
        self.violations: list[Violation] = []
        self.records = 0
        self.version = 0
        self.first_version: int | None = None
        self.incomplete = ""                     # why the history cannot be replayed ("" = it can)

    # -- feeding ----------------------------------------------------------------------------------
    def feed(self, stream_id: str, fields: dict[bytes, bytes]) -> None:
        if self.incomplete:
            return
        v = _int(fields.get(b"v", b"0"))
        if self.first_version is None:
            self.first_version = v
            if v != 1:
                self.incomplete = (f"the stream starts at version {v}: the first {v - 1} record(s) were trimmed "
                                   f"(the stream keeps about the last 100,000), so the history cannot be replayed")
                return
        elif v != self.version + 1:
            self.incomplete = f"record {stream_id} has version {v} after {self.version}: records are missing"
            return
        if any(k not in fields for k in IDENTITY):
            self.incomplete = (f"record {stream_id} (version {v}) has no hold, buyer, count or clock: it was "
                               f"written by scripts older than the replay")
            return
        self.version = v
        self.records += 1
        op = _int(fields[b"op"])
        h = fields[b"h"].decode()
        buyer = fields[b"b"].decode()
        n = _int(fields[b"n"])
        t = _int(fields[b"t"])
        e = _int(fields[b"e"]) if fields.get(b"e") else None
        seats = _seats(fields.get(b"s", b""))
        ga = _ga(fields.get(b"g", b""))
        if op == OP_HOLD:
            self._grant(stream_id, h, buyer, n, t, e, seats, ga)
        elif op in (OP_RELEASE, OP_EXPIRE):
            self._give_back(stream_id, op, h, buyer, n, t, e, seats, ga)
        elif op == OP_SELL:
            p = _int(fields[b"p"]) if fields.get(b"p") else None
            self._sell(stream_id, h, buyer, n, t, e, p, seats, ga)
        elif op == OP_VOID:
            self._void(stream_id, h, buyer, n, t, seats, ga)
        else:
            self._flag("sequence", stream_id, t, f"unknown op {op} in version {v}")

    def _flag(self, kind: str, stream_id: str, t: int | None, message: str) -> None:
        self.violations.append(Violation(kind, stream_id, t, message))

    def _grant(self, sid: str, h: str, buyer: str, n: int, t: int, e: int | None, seats: tuple[int, ...],
               ga: dict[str, int]) -> None:
        if h in self.live or h in self.ended:
            self._flag("sequence", sid, t, f"hold {h} granted a second time at {at(t)}")
        if e is None:
            self._flag("sequence", sid, t, f"hold {h} granted at {at(t)} without an expiry")
            e = t
        if n != len(seats) + sum(ga.values()):
            self._flag("sequence", sid, t, f"hold {h} counts {n} ticket(s) but carries {len(seats)} seat(s) "
                                           f"and {sum(ga.values())} GA ticket(s)")
        for seat in seats:
            if seat in self.sold:
                self._flag("granted_while_sold", sid, t, f"seat {seat} granted to hold {h} (buyer {buyer}) at "
                                                         f"{at(t)} while sold (to hold {self.sold[seat]})")
            other = self.held.get(seat)
            if other is not None:
                owner = self.live.get(other)
                if owner is not None and t < owner.expiry:
                    how = f"live hold {other} (expires at {at(owner.expiry)}, {owner.expiry - t} ms later)"
                elif owner is not None:
                    how = f"hold {other}, expired at {at(owner.expiry)} but never given back"
                else:
                    how = f"hold {other} ({self.ended.get(other, 'never granted')})"
                self._flag("granted_while_held", sid, t, f"seat {seat} granted to hold {h} (buyer {buyer}) at "
                                                         f"{at(t)} while held by {how}")
            self.held[seat] = h
        for code, k in ga.items():
            held = self.ga_held[code] = self.ga_held.get(code, 0) + k
            total, cap = held + self.ga_sold.get(code, 0), self.caps.get(code)
            if cap is None:
                self._flag("ga_over_capacity", sid, t, f"GA {code} granted to hold {h}: no capacity known")
            elif total > cap:
                self._flag("ga_over_capacity", sid, t, f"GA {code} held + sold {total} > cap {cap} after hold {h} "
                                                       f"(buyer {buyer}, {k}) at {at(t)}")
        count = self.buyers[buyer] = self.buyers.get(buyer, 0) + n
        if self.limit is not None and count > self.limit:
            self._flag("buyer_over_limit", sid, t, f"buyer {buyer} has {count} > limit {self.limit} after hold {h} "
                                                   f"({n}) at {at(t)}")
        self.live[h] = Hold(buyer, n, e, seats, ga, sid)

    def _known(self, sid: str, what: str, h: str, t: int, buyer: str, n: int, seats: tuple[int, ...],
               ga: dict[str, int], sign: int = 1) -> Hold | None:
        """The live hold `h` acted on (removed from the live ones), or None with the violation said."""
        hold = self.live.pop(h, None)
        if hold is None:
            ended = self.ended.get(h)
            self._flag("sequence", sid, t, f"{what} of hold {h} at {at(t)}, " +
                       (f"which had already ended ({ended})" if ended else "a hold never granted"))
            return None
        if (hold.buyer, hold.n, hold.seats, hold.ga) != (buyer, n, seats, {c: sign * k for c, k in ga.items()}):
            self._flag("sequence", sid, t, f"{what} of hold {h} at {at(t)} names other tickets than its grant "
                                           f"({buyer}, {n}, seats {list(seats)}, GA {ga}; granted: {hold.buyer}, "
                                           f"{hold.n}, seats {list(hold.seats)}, GA {hold.ga})")
        return hold

    def _less(self, sid: str, t: int, buyer: str, n: int, why: str) -> None:
        """A buyer's count goes down by n, as the scripts do it (the field goes at zero)."""
        left = self.buyers.get(buyer, 0) - n
        if left < 0:
            self._flag("sequence", sid, t, f"buyer {buyer}'s count falls below zero ({left}) at the {why}")
        if left <= 0:
            self.buyers.pop(buyer, None)
        else:
            self.buyers[buyer] = left

    def _give_back(self, sid: str, op: int, h: str, buyer: str, n: int, t: int, e: int | None,
                   seats: tuple[int, ...], ga: dict[str, int]) -> None:
        what = OP_NAMES[op]
        hold = self._known(sid, what, h, t, buyer, n, seats, ga, sign=-1)
        known = [x for x in (e, hold.expiry if hold else None) if x is not None]
        expiry = max(known) if known else None  # in force: never earlier than the grant's
        if op == OP_EXPIRE and expiry is not None and t < expiry:
            self._flag("expired_early", sid, t, f"hold {h} (buyer {buyer}) expired at {at(t)}, before its expiry "
                                                f"{at(expiry)} ({expiry - t} ms early)")
        if op == OP_RELEASE and expiry is not None and t >= expiry:
            self._flag("released_after_expiry", sid, t, f"hold {h} (buyer {buyer}) released at {at(t)}, after its "
                                                        f"expiry {at(expiry)}")
        for seat in seats:
            self._check_held(sid, t, seat, h, "given back by")
            self.held.pop(seat, None)  # the scripts clear the held bit either way
        for code, k in ga.items():  # k < 0
            self.ga_held[code] = self.ga_held.get(code, 0) + k
        self._less(sid, t, buyer, n, what)
        self.ended[h] = f"{'released' if op == OP_RELEASE else 'expired'} at {sid}"

    def _check_held(self, sid: str, t: int, seat: int, h: str, verb: str) -> None:
        """A seat given back or sold by hold `h` must be held by it (else the change stream is out of order)."""
        if self.held.get(seat) != h:
            self._flag("sequence", sid, t, f"seat {seat} {verb} hold {h} at {at(t)} but held by "
                                           f"{self.held.get(seat) or 'nobody'}")

    def _sell(self, sid: str, h: str, buyer: str, n: int, t: int, e: int | None, p: int | None,
              seats: tuple[int, ...], ga: dict[str, int]) -> None:
        hold = self._known(sid, "sale", h, t, buyer, n, seats, ga)
        if hold is not None and p is not None and p >= hold.expiry:
            self._flag("sold_after_expiry", sid, t, f"hold {h} (buyer {buyer}) sold at {at(t)}: its payment began "
                                                    f"at {at(p)}, after its expiry {at(hold.expiry)}")
        expiry = e if e is not None else (hold.expiry if hold else None)
        if expiry is not None and t >= expiry:
            self._flag("sold_after_expiry", sid, t, f"hold {h} (buyer {buyer}) sold at {at(t)}, after its expiry "
                                                    f"{at(expiry)}")
        for seat in seats:
            self._check_held(sid, t, seat, h, "sold with")
            if seat in self.sold:
                self._flag("sequence", sid, t, f"seat {seat} sold with hold {h} at {at(t)} but already sold "
                                               f"(hold {self.sold[seat]})")
            self.held.pop(seat, None)
            self.sold[seat] = h
        for code, k in ga.items():
            self.ga_held[code] = self.ga_held.get(code, 0) - k
            self.ga_sold[code] = self.ga_sold.get(code, 0) + k
        self.ended[h] = f"sold at {sid}"
        self.orders[h] = hold or Hold(buyer, n, e or t, seats, ga, sid)

    def _void(self, sid: str, h: str, buyer: str, n: int, t: int, seats: tuple[int, ...],
              ga: dict[str, int]) -> None:
        order = self.orders.pop(h, None)
        if order is None:
            self._flag("sequence", sid, t, f"void of the order of hold {h} at {at(t)}, which was " +
                       ("voided already" if self.ended.get(h, "").startswith("voided") else "never sold"))
        elif (order.buyer, order.n, order.seats, order.ga) != (buyer, n, seats, {c: -k for c, k in ga.items()}):
            self._flag("sequence", sid, t, f"void of the order of hold {h} at {at(t)} names other tickets than "
                                           f"its sale")
        for seat in seats:
            if self.sold.get(seat) != h:
                self._flag("sequence", sid, t, f"seat {seat} voided with hold {h}'s order at {at(t)} but sold "
                                               f"to {self.sold.get(seat) or 'nobody'}")
            self.sold.pop(seat, None)
        for code, k in ga.items():  # k < 0
            self.ga_sold[code] = self.ga_sold.get(code, 0) + k
        self._less(sid, t, buyer, n, "void")
        self.ended[h] = f"voided at {sid}"

    # -- the end --------------------------------------------------------------------------------------
    def compare(self, end: EndState) -> None:
        """Violations (kind `end_state`) where Redis's counters differ from the replayed ones."""
        def differ(what: str, redis_has: Any, replay_has: Any) -> None:
            self._flag("end_state", "", None, f"{what}: Redis {redis_has}, replay {replay_has}")

        if end.version != self.version:
            differ("inventory version", end.version, self.version)
        for name, redis_bits, replayed in (("held seats", end.held, set(self.held)),
                                           ("sold seats", end.sold, set(self.sold))):
            if redis_bits != replayed:
                only_redis, only_replay = sorted(redis_bits - replayed), sorted(replayed - redis_bits)
                differ(name, f"also {only_redis[:10]}" if only_redis else "-",
                       f"also {only_replay[:10]}" if only_replay else "-")
        for code in sorted(set(end.ga) | set(self.ga_held) | set(self.ga_sold)):
            counts = end.ga.get(code, {})
            for what, replayed in (("held", self.ga_held.get(code, 0)), ("sold", self.ga_sold.get(code, 0))):
                if counts.get(what, 0) != replayed:
                    differ(f"GA {code} {what}", counts.get(what, 0), replayed)
        if end.buyers != self.buyers:
            wrong = sorted(b for b in set(end.buyers) | set(self.buyers) if end.buyers.get(b) != self.buyers.get(b))
            for b in wrong[:SHOWN]:
                differ(f"buyer {b}'s tickets", end.buyers.get(b, 0), self.buyers.get(b, 0))
            if len(wrong) > SHOWN:
                differ("buyers with other counts", len(wrong), "-")
        if end.holds != set(self.live):
            differ("live holds", f"also {sorted(end.holds - set(self.live))[:5]}",
                   f"also {sorted(set(self.live) - end.holds)[:5]}")


@dataclass
class History:
    """The outcome of replaying one event."""

    replay: Replay
    end: EndState
    seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.replay.incomplete

    @property
    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    @property
    def ok(self) -> bool:
        return self.complete and not self.violations

    def checks(self) -> list[tuple[str, bool, str]]:
        """(name, ok, detail) per audit check: the completeness check, then, once the stream could be
        replayed, one per kind of violation."""
        r = self.replay
        if not self.complete:
            return [(COMPLETE_CHECK, False, f"not replayed: {r.incomplete}")]
        out = [(COMPLETE_CHECK, True, f"{r.records} record(s) replayed in {self.seconds:.2f} s")]
        for kind, name in CHECKS.items():
            found = [v for v in self.violations if v.kind == kind]
            detail = ""
            if found:
                detail = f"{len(found)} violation(s): " + "; ".join(str(v) for v in found[:SHOWN])
                if len(found) > SHOWN:
                    detail += f"; and {len(found) - SHOWN} more"
            out.append((name, not found, detail))
        return out


async def read_end_state(redis: Any, prefix: str, event_id: int) -> EndState:
    """Redis's counters and the stream's last id, in one MULTI (all keys share the event's hash tag),
    so the replay up to that id must end exactly there even while the sale goes on."""
    def key(name: str) -> str:
        return event_key(prefix, event_id, name)

    await ready_for_transaction(redis)
    pipe = redis.pipeline(transaction=True)
    pipe.get(key("sold"))
    pipe.get(key("held"))
    pipe.hgetall(key("ga"))
    pipe.hgetall(key("buyers"))
    pipe.hkeys(key("hdata"))
    pipe.hmget(key("meta"), "version", "limit")
    pipe.xrevrange(key("changes"), count=1)
    sold, held, ga_flat, buyers, hold_ids, (version, limit), last = await pipe.execute()
    ga: dict[str, dict[str, int]] = {}
    for name, value in ga_flat.items():
        what, _, code = name.decode().partition(":")
        ga.setdefault(code, {"cap": 0, "held": 0, "sold": 0})[what] = int(value)
    return EndState(sold=bits(sold), held=bits(held), ga=ga,
                    buyers={b.decode(): int(n) for b, n in buyers.items()},
                    holds={h.decode() for h in hold_ids}, version=int(version or 0),
                    limit=int(limit) if limit is not None else None,
                    last_id=last[0][0].decode() if last else None)


async def replay_event(*, redis: Any, prefix: str, event_id: int, page: int = PAGE) -> History:
    """Replay the event's `changes` stream from its first record (in pages) and compare the end with Redis."""
    started = time.perf_counter()
    end = await read_end_state(redis, prefix, event_id)
    replay = Replay(caps={code: c["cap"] for code, c in end.ga.items()}, limit=end.limit)
    if end.last_id is not None:
        start, stream = "-", event_key(prefix, event_id, "changes")
        while not replay.incomplete:
            entries = await redis.xrange(stream, min=start, max=end.last_id, count=page)
            for entry_id, fields in entries:
                replay.feed(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields)
            if len(entries) < page:
                break
            start = "(" + (entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0])
    elif end.version:
        replay.incomplete = f"the inventory is at version {end.version} but the change stream is empty"
    if not replay.incomplete:
        replay.compare(end)
    return History(replay=replay, end=end, seconds=time.perf_counter() - started, violations=replay.violations)


__all__ = ["CHECKS", "COMPLETE_CHECK", "EndState", "History", "Replay", "Violation", "bits", "read_end_state",
           "replay_event"]
