"""The inventory scripts, called directly: single Redis and a real 3-master Cluster."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.crc import key_slot

from gateway.core.errors import DomainError
from gateway.sale import inventory as inv
from gateway.store.keys import event_keys
from tests.utils.inventory import key, new_id, open_event, state

pytestmark = pytest.mark.anyio


def ctx(scripts, prefix, event_id):
    return {"scripts": scripts, "prefix": prefix, "event_id": event_id}


def test_every_event_key_maps_to_one_slot():
    for event_id in (1, 42, 10**12):
        slots = {key_slot(k.encode()) for k in event_keys("fg", event_id)}
        assert len(slots) == 1


async def test_hold_is_all_or_nothing_and_names_taken_seats(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=20)
    first = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[1, 2, 3])
    assert first["seats"] == [1, 2, 3] and first["count"] == 3
    with pytest.raises(DomainError) as err:
        await inv.hold_seats(**c, hold_id=new_id(), buyer="bob", seats=[3, 4, 2])
    assert err.value.code == "seat_unavailable"
    assert sorted(err.value.details["seats"]) == [2, 3]
    s = await state(scripts, redis_prefix, event_id, 20)
    assert s["held"] == {1, 2, 3}, "a refused hold must hold nothing"


async def test_same_hold_id_is_idempotent(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10)
    hold_id = new_id()
    a = await inv.hold_seats(**c, hold_id=hold_id, buyer="alice", seats=[5])
    b = await inv.hold_seats(**c, hold_id=hold_id, buyer="alice", seats=[5])
    assert a["hold_id"] == b["hold_id"] and a["expires_at_ms"] == b["expires_at_ms"]
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["held"] == {5} and s["version"] == 1


@pytest.mark.parametrize("seats, reason", [([3, 3], "duplicate seat"), ([10], "unknown seat"), ([-1], "unknown seat")])
async def test_bad_seats_are_refused_and_change_nothing(scripts, redis_prefix, event_id, seats, reason):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10)
    with pytest.raises(DomainError) as err:
        await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=seats)
    assert err.value.status == 422 and reason in err.value.message
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["held"] == set() and s["version"] == 0


async def test_per_buyer_limit_counts_holds_and_purchases(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=20, limit=4, ga={"floor": 100})
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[0, 1])
    await inv.begin_checkout(**c, hold_id=hold["hold_id"], buyer="alice", checkout_key="k1")
    await inv.confirm(**c, hold_id=hold["hold_id"], buyer="alice", order_id=new_id(), order={})
    await inv.hold_ga(**c, hold_id=new_id(), buyer="alice", ticket_type="floor", quantity=2)
    with pytest.raises(DomainError) as err:
        await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[5])
    assert err.value.code == "limit_exceeded" and err.value.status == 429
    assert err.value.details == {"limit": 4, "held": 4, "requested": 1}
    await inv.hold_seats(**c, hold_id=new_id(), buyer="bob", seats=[5])  # others are not affected


async def test_paused_event_refuses_holds(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10)
    await inv.prepare_event(**c, status="paused", n_seats=10, hold_ttl_s=60, per_buyer_limit=8, checkout_s=60,
                            ga={})
    with pytest.raises(DomainError) as err:
        await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[1])
    assert err.value.code == "not_on_sale"


async def test_unknown_event_is_refused(scripts, redis_prefix, event_id):
    with pytest.raises(DomainError) as err:
        await inv.hold_seats(**ctx(scripts, redis_prefix, event_id), hold_id=new_id(), buyer="a", seats=[1])
    assert err.value.code == "event_not_found"


async def test_ga_capacity_is_never_exceeded(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=0, ga={"floor": 5}, limit=10)
    await inv.hold_ga(**c, hold_id=new_id(), buyer="a", ticket_type="floor", quantity=3)
    with pytest.raises(DomainError) as err:
        await inv.hold_ga(**c, hold_id=new_id(), buyer="b", ticket_type="floor", quantity=3)
    assert err.value.code == "sold_out" and err.value.details["available"] == 2
    await inv.hold_ga(**c, hold_id=new_id(), buyer="b", ticket_type="floor", quantity=2)
    s = await state(scripts, redis_prefix, event_id, 0)
    assert s["ga"]["floor"] == {"cap": 5, "held": 5, "sold": 0}
    for bad in (0, -1):
        with pytest.raises(DomainError) as err:
            await inv.hold_ga(**c, hold_id=new_id(), buyer="c", ticket_type="floor", quantity=bad)
        assert err.value.status == 422
    with pytest.raises(DomainError) as err:
        await inv.hold_ga(**c, hold_id=new_id(), buyer="c", ticket_type="balcony", quantity=1)
    assert err.value.status == 422 and "unknown ticket type" in err.value.message


async def test_release_returns_seats_only_for_the_owner(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10, ga={"floor": 3})
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[1, 2])
    with pytest.raises(DomainError) as err:
        await inv.release(**c, hold_id=hold["hold_id"], buyer="mallory")
    assert err.value.code == "forbidden"
    await inv.release(**c, hold_id=hold["hold_id"], buyer="alice")
    ga = await inv.hold_ga(**c, hold_id=new_id(), buyer="alice", ticket_type="floor", quantity=3)
    await inv.release(**c, hold_id=ga["hold_id"], buyer="alice")
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["held"] == set() and s["ga"]["floor"]["held"] == 0
    with pytest.raises(DomainError) as err:
        await inv.release(**c, hold_id=hold["hold_id"], buyer="alice")
    assert err.value.code == "hold_not_found"


async def test_confirm_sells_once_and_replays(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10, ga={"floor": 5})
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[7, 8])
    paying = await inv.begin_checkout(**c, hold_id=hold["hold_id"], buyer="alice", checkout_key="k")
    assert paying["state"] == "paying" and paying["expires_at_ms"] >= hold["expires_at_ms"]
    with pytest.raises(DomainError) as err:  # no release while the payment runs
        await inv.release(**c, hold_id=hold["hold_id"], buyer="alice")
    assert err.value.code == "invalid_state"
    order_id = new_id()
    first = await inv.confirm(**c, hold_id=hold["hold_id"], buyer="alice", order_id=order_id, order={"p": 1})
    again = await inv.confirm(**c, hold_id=hold["hold_id"], buyer="alice", order_id=order_id, order={"p": 1})
    assert first["replay"] is False and again["replay"] is True
    assert {k: v for k, v in first.items() if k != "replay"} == {k: v for k, v in again.items() if k != "replay"}
    with pytest.raises(DomainError) as err:
        await inv.confirm(**c, hold_id=hold["hold_id"], buyer="alice", order_id=new_id(), order={})
    assert err.value.code == "invalid_state" and err.value.details["order_id"] == order_id
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["sold"] == {7, 8} and s["held"] == set()
    ledger = await scripts.redis.xrange(key(redis_prefix, event_id, "ledger"))
    assert len(ledger) == 1 and ledger[0][1][b"k"] == b"order"
    assert first["serial_start"] == 1 and first["count"] == 2


async def test_only_the_owner_confirms(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10)
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[1])
    with pytest.raises(DomainError) as err:
        await inv.confirm(**c, hold_id=hold["hold_id"], buyer="mallory", order_id=new_id(), order={})
    assert err.value.code == "forbidden"


async def test_expired_hold_returns_seats_and_cannot_be_confirmed(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10, ttl_s=0.2, ga={"floor": 2})
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[1, 2])
    ga = await inv.hold_ga(**c, hold_id=new_id(), buyer="alice", ticket_type="floor", quantity=2)
    await asyncio.sleep(0.3)
    swept = await inv.expire(**c)
    assert swept["expired"] == 2
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["held"] == set() and s["ga"]["floor"]["held"] == 0
    for h in (hold, ga):
        with pytest.raises(DomainError) as err:
            await inv.confirm(**c, hold_id=h["hold_id"], buyer="alice", order_id=new_id(), order={})
        assert err.value.code == "hold_expired", "a swept hold leaves a tombstone: 409 hold_expired, not 404"
        with pytest.raises(DomainError) as err:
            await inv.release(**c, hold_id=h["hold_id"], buyer="alice")
        assert err.value.code == "hold_expired"
    with pytest.raises(DomainError) as err:
        await inv.release(**c, hold_id="never-existed", buyer="alice")
    assert err.value.code == "hold_not_found"


async def test_a_failed_payment_gives_the_hold_its_own_expiry_back(scripts, redis_prefix, event_id):
    """begin_checkout extends a hold for the payment window; abort_checkout (declined, provider
    down) restores the hold's own expiry, so repeated failed attempts never keep seats off sale."""
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10, ttl_s=5)
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[3])
    own = hold["expires_at_ms"]
    for attempt in range(3):
        paying = await inv.begin_checkout(**c, hold_id=hold["hold_id"], buyer="alice", checkout_key=f"k{attempt}")
        assert paying["expires_at_ms"] > own + 60_000, "the payment window covers the payment"
        await inv.abort_checkout(**c, hold_id=hold["hold_id"], buyer="alice", checkout_key=f"k{attempt}")
        score = await scripts.redis.zscore(f"{redis_prefix}:{{ev:{event_id}}}:holds", hold["hold_id"])
        assert int(score) == own, "back to the hold's own expiry after a failed payment"


async def test_a_hold_reclaims_expired_seats_it_meets(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10, ttl_s=0.2)
    old = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[4, 5])
    await asyncio.sleep(0.3)
    new = await inv.hold_seats(**c, hold_id=new_id(), buyer="bob", seats=[5])
    assert new["seats"] == [5]
    with pytest.raises(DomainError) as err:
        await inv.confirm(**c, hold_id=old["hold_id"], buyer="alice", order_id=new_id(), order={})
    assert err.value.code in ("hold_not_found", "hold_expired")
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["held"] == {5}


async def test_confirm_racing_expiry_has_exactly_one_outcome(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=200, ttl_s=0.25)
    holds = [await inv.hold_seats(**c, hold_id=new_id(), buyer=f"b{i}", seats=[i]) for i in range(100)]
    await asyncio.sleep(0.2)

    async def try_confirm(i, h):
        await asyncio.sleep(0.001 * (i % 60))
        try:
            await inv.confirm(**c, hold_id=h["hold_id"], buyer=f"b{i}", order_id=new_id(), order={})
            return "sold"
        except DomainError as exc:
            return exc.code

    async def sweeper():
        for _ in range(30):
            await inv.expire(**c)
            await asyncio.sleep(0.003)

    results, _ = await asyncio.gather(asyncio.gather(*(try_confirm(i, h) for i, h in enumerate(holds))), sweeper())
    last_expiry = max(h["expires_at_ms"] for h in holds) / 1000
    await asyncio.sleep(max(0.0, last_expiry - time.time()) + 0.05)
    await inv.expire(**c)
    s = await state(scripts, redis_prefix, event_id, 200)
    sold = {i for i, r in enumerate(results) if r == "sold"}
    assert s["sold"] == sold, "a seat is sold exactly when its confirm succeeded"
    assert s["held"] == set(), "every other hold expired and gave its seat back"
    assert set(results) <= {"sold", "hold_expired", "hold_not_found"}


async def test_best_candidates_take_the_first_free_group(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=20)
    await inv.hold_seats(**c, hold_id=new_id(), buyer="x", seats=[2])
    reply = await inv.hold_candidates(**c, hold_id=new_id(), buyer="y", groups=[[1, 2], [3, 4], [5, 6]])
    assert reply.ok and reply.data["seats"] == [3, 4]
    lost = await inv.hold_candidates(**c, hold_id=new_id(), buyer="z", groups=[[2, 3]])
    assert lost.status == "seat_unavailable" and sorted(lost.data["seats"]) == [2, 3]


async def test_void_returns_sold_seats_once(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10, ga={"floor": 4})
    hold = await inv.hold_seats(**c, hold_id=new_id(), buyer="alice", seats=[3])
    order = await inv.confirm(**c, hold_id=hold["hold_id"], buyer="alice", order_id=new_id(), order={})
    ga = await inv.hold_ga(**c, hold_id=new_id(), buyer="alice", ticket_type="floor", quantity=2)
    ga_order = await inv.confirm(**c, hold_id=ga["hold_id"], buyer="alice", order_id=new_id(), order={})
    for o in (order, ga_order):
        first = await inv.void(**c, order_id=o["order_id"], refund={"by": "test"})
        again = await inv.void(**c, order_id=o["order_id"], refund={"by": "test"})
        assert first["replay"] is False and again["replay"] is True
    s = await state(scripts, redis_prefix, event_id, 10)
    assert s["sold"] == set() and s["ga"]["floor"]["sold"] == 0
    kinds = [e[1][b"k"] for e in await scripts.redis.xrange(key(redis_prefix, event_id, "ledger"))]
    assert kinds == [b"order", b"order", b"void", b"void"]
    with pytest.raises(DomainError) as err:
        await inv.void(**c, order_id=new_id(), refund={})
    assert err.value.code == "order_not_found"
    # The seat is on sale again.
    await inv.hold_seats(**c, hold_id=new_id(), buyer="bob", seats=[3])


async def test_change_stream_versions_are_consecutive(scripts, redis_prefix, event_id):
    c = ctx(scripts, redis_prefix, event_id)
    await open_event(scripts, redis_prefix, event_id, n_seats=10)
    h = await inv.hold_seats(**c, hold_id=new_id(), buyer="a", seats=[1])
    await inv.release(**c, hold_id=h["hold_id"], buyer="a")
    h = await inv.hold_seats(**c, hold_id=new_id(), buyer="a", seats=[2])
    await inv.confirm(**c, hold_id=h["hold_id"], buyer="a", order_id=new_id(), order={})
    entries = await scripts.redis.xrange(key(redis_prefix, event_id, "changes"))
    assert [int(e[1][b"v"]) for e in entries] == [1, 2, 3, 4]
    assert [int(e[1][b"op"]) for e in entries] == [1, 2, 1, 3]
