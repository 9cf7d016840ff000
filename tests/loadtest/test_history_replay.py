"""The audit's history replay (gateway/organisers/history.py) against planted bugs, on a real Redis.

One small deterministic contention sale is driven through the Lua scripts: a seat sold and asked
for again, a seat asked for in its holder's last 2 s, a GA hold released, GA asked for past its
capacity, a greedy buyer, a checkout started after the hold expired, a sale and a refund. The real
scripts refuse what they must and the replay finds nothing; each mutated copy (tests/loadtest/
mutations.py) lets one thing through and the replay reports it. A property test replays random
sequences of operations on the real scripts: never a violation, and the replayed end state is
exactly Redis's counters.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from gateway.organisers.audit import audit_event
from gateway.organisers.history import CHECKS, COMPLETE_CHECK, EndState, History, Replay, replay_event
from gateway.store.keys import event_key, event_keys
from gateway.store.redis import redis_client
from gateway.store.scripts import Scripts
from tests.loadtest.mutations import BY_NAME, MUTATIONS, SOURCE_DIR, StaleMutation, apply
from tests.utils.inventory import bits
from tests.utils.servers import run_async

TTL_MS = 2500        # holds of the contention sale: 2.5 s (a hold's "last 2 s" begin 0.5 s after it)
N_SEATS, LIMIT, GA_CAP = 10, 3, 3
_events = itertools.count(7 * 10**12)


async def contention_sale(scripts: Scripts, prefix: str, event_id: int) -> dict[str, str]:
    """The sale; returns the status of each step (by its name)."""
    keys = event_keys(prefix, event_id)
    out: dict[str, str] = {}

    async def step(name: str, script: str, *args: Any) -> None:
        out[name] = (await scripts.call(script, keys, list(args))).status

    await step("prepare", "prepare_event", "on_sale", N_SEATS, TTL_MS, LIMIT, 60_000, "floor", GA_CAP)
    await step("ann holds seat 0", "hold", "ann-1", "ann", 1, 0)
    await step("ann buys it", "confirm", "ann-1", "ann", "order-ann", "{}")
    await step("bob asks for sold seat 0", "hold", "bob-1", "bob", 1, 0)
    await step("cid holds seat 5", "hold", "cid-1", "cid", 1, 5)
    await step("dan holds 2 floor", "hold_ga", "dan-1", "dan", "floor", 2)
    await step("dan releases them", "release", "dan-1", "dan")
    await step("eve holds 3 floor", "hold_ga", "eve-1", "eve", "floor", 3)
    await step("fay asks for 1 floor more", "hold_ga", "fay-1", "fay", "floor", 1)
    await step("gus holds 3 seats", "hold", "gus-1", "gus", 3, 6, 7, 8)
    await step("gus asks for a 4th", "hold", "gus-2", "gus", 1, 9)
    await step("hal holds seat 2", "hold", "hal-1", "hal", 1, 2)
    await step("jon holds seat 3", "hold", "jon-1", "jon", 1, 3)
    await step("jon buys it", "confirm", "jon-1", "jon", "order-jon", "{}")
    await asyncio.sleep(1.0)  # cid's hold is in its last 2 s (1.5 s left)
    await step("ivy asks for cid's seat 5", "hold", "ivy-1", "ivy", 1, 5)
    await asyncio.sleep(2.0)  # every hold of the start has expired (0.5 s ago)
    await step("hal starts paying late", "begin_checkout", "hal-1", "hal", "key-hal")
    await step("hal's payment confirms", "confirm", "hal-1", "hal", "order-hal", "{}")
    await step("expiry sweep", "expire", 100)
    await step("ann's order refunded", "void", "order-ann", "{}")
    return out


@pytest.fixture(scope="module")
def sales(redis_server_url: str, redis_prefix: str, tmp_path_factory) -> dict[str, tuple[dict[str, str], History]]:
    """The contention sale on the real scripts ("real") and on each mutation, all at once."""
    root = tmp_path_factory.mktemp("mutations")
    directories = {"real": SOURCE_DIR, **{m.name: apply(m, SOURCE_DIR, root / m.name) for m in MUTATIONS}}

    async def run_all() -> dict[str, tuple[dict[str, str], History]]:
        client = redis_client(redis_server_url)
        try:
            async def one(directory: Path) -> tuple[dict[str, str], History]:
                event_id = next(_events)
                steps = await contention_sale(Scripts(client, directory), redis_prefix, event_id)
                return steps, await replay_event(redis=client, prefix=redis_prefix, event_id=event_id)

            results = await asyncio.gather(*(one(d) for d in directories.values()))
            return dict(zip(directories, results))
        finally:
            await client.aclose()

    return run_async(run_all)


def test_the_real_scripts_refuse_the_contention_and_the_replay_finds_nothing(sales):
    steps, history = sales["real"]
    assert steps["bob asks for sold seat 0"] == "seat_unavailable"
    assert steps["fay asks for 1 floor more"] == "sold_out"
    assert steps["gus asks for a 4th"] == "limit_exceeded"
    assert steps["ivy asks for cid's seat 5"] == "seat_unavailable"
    assert steps["hal starts paying late"] == "hold_expired"
    assert {steps[s] for s in ("ann buys it", "jon buys it", "dan releases them", "ann's order refunded")} == {"ok"}
    assert history.complete and history.violations == [], history.violations
    checks = history.checks()
    assert [name for name, _, _ in checks] == [COMPLETE_CHECK, *CHECKS.values()]
    assert all(ok for _, ok, _ in checks)
    assert history.replay.records == history.end.version > 10


# The step each bug lets through where the real scripts refuse it (the others change no answer).
LET_THROUGH = {"ignore_sold": "bob asks for sold seat 0", "early_steal": "ivy asks for cid's seat 5",
               "late_confirm": "hal's payment confirms", "limit_per_request": "gus asks for a 4th",
               "ga_ignores_held": "fay asks for 1 floor more", "ga_double_release": "fay asks for 1 floor more"}


@pytest.mark.parametrize("name", [m.name for m in MUTATIONS])
def test_each_planted_bug_fails_the_history(sales, name):
    mutation = BY_NAME[name]
    steps, history = sales[name]
    if name in LET_THROUGH:
        assert steps[LET_THROUGH[name]] == "ok" != sales["real"][0][LET_THROUGH[name]]
    assert history.complete
    assert mutation.expect in history.kinds, (steps, [str(v) for v in history.violations])
    failed = {check for check, ok, _ in history.checks() if not ok}
    assert CHECKS[mutation.expect] in failed


def test_the_violations_name_the_instant_and_the_evidence(sales):
    _, sold = sales["ignore_sold"]
    v = next(v for v in sold.violations if v.kind == "granted_while_sold")
    assert v.stream_id and v.t and "seat 0 granted to hold bob-1" in v.message and "sold (to hold ann-1)" in v.message
    _, steal = sales["early_steal"]
    v = next(v for v in steal.violations if v.kind == "expired_early")
    assert "hold cid-1" in v.message and "ms early" in v.message
    _, late = sales["late_confirm"]
    v = next(v for v in late.violations if v.kind == "sold_after_expiry")
    assert "hold hal-1" in v.message and "payment began" in v.message
    _, ga = sales["ga_ignores_held"]
    assert any("GA floor held + sold 4 > cap 3" in v.message for v in ga.violations)
    _, greedy = sales["limit_per_request"]
    assert any("buyer gus has 4 > limit 3" in v.message for v in greedy.violations)
    _, double = sales["ga_double_release"]
    assert any(v.message.startswith("GA floor held: Redis") for v in double.violations if v.kind == "end_state")


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["ignore_sold", "early_steal"])
async def test_bugs_that_leave_a_clean_final_state_fail_only_the_history(redis_server_url, redis_prefix,
                                                                         database_url, tmp_path, name):
    """The two broken hold scripts the final-state audit let through: its Redis checks still pass."""
    import asyncpg

    client = redis_client(redis_server_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        event_id = next(_events)
        await contention_sale(Scripts(client, apply(name, SOURCE_DIR, tmp_path / name)), redis_prefix, event_id)
        report = await audit_event(redis=client, pool=pool, prefix=redis_prefix, event_id=event_id)
    finally:
        await pool.close()
        await client.aclose()
    final_state = [c for c in report.checks if c.name.startswith(("redis:", "invariant 1: GA", "invariant 2"))]
    assert len(final_state) >= 6 and all(c.ok for c in final_state), final_state
    history = {c.name: c for c in report.checks if c.name.startswith("history:")}
    assert history[COMPLETE_CHECK].ok
    failed = [c.name for c in history.values() if not c.ok]
    assert failed and CHECKS[BY_NAME[name].expect] in failed
    assert not report.ok and report.as_dict()["verdict"] == "FAIL"


def test_a_failed_check_counts_its_violations_and_quotes_the_first_five():
    replay = Replay(caps={}, limit=None)

    def record(v: int, op: int, hold: str, t: int, e: int | None = 10_000) -> None:
        fields = {b"v": b"%d" % v, b"op": b"%d" % op, b"s": b"0", b"g": b"", b"h": hold.encode(), b"b": b"ann",
                  b"n": b"1", b"t": b"%d" % t}
        replay.feed(f"{t}-0", {**fields, b"e": b"%d" % e} if e else fields)

    record(1, 1, "h1", 1000)
    record(2, 3, "h1", 2000)
    for i in range(7):
        record(3 + 2 * i, 1, f"x{i}", 3000 + i)      # the sold seat granted again
        record(4 + 2 * i, 2, f"x{i}", 3000 + i)      # and released
    end = EndState(sold={0}, held=set(), ga={}, buyers={"ann": 1}, holds=set(), version=16, limit=None,
                   last_id="3006-0")
    replay.compare(end)
    history = History(replay=replay, end=end, violations=replay.violations)
    assert history.kinds == {"granted_while_sold"}
    [detail] = [d for name, ok, d in history.checks() if name == CHECKS["granted_while_sold"]]
    assert detail.startswith("7 violation(s): [3000-0] seat 0 granted to hold x0") and detail.endswith("and 2 more")
    assert detail.count("granted to hold") == 5


@pytest.mark.anyio
async def test_an_expiry_is_checked_against_the_payment_window_in_force(redis_server_url, redis_prefix, tmp_path):
    """A paying hold's own expiry has passed, its payment window has not: taking its seat then is an
    early expiry (begin_checkout writes no record; the expiry record carries the window in force)."""
    client = redis_client(redis_server_url)
    try:
        results = {}
        for name, directory in (("real", SOURCE_DIR), ("early_steal", apply("early_steal", SOURCE_DIR, tmp_path))):
            scripts, event_id = Scripts(client, directory), next(_events)
            keys = event_keys(redis_prefix, event_id)
            await scripts.call("prepare_event", keys, ["on_sale", 4, 100, 4, 2200])
            assert (await scripts.call("hold", keys, ["ann-1", "ann", 1, 0])).ok
            assert (await scripts.call("begin_checkout", keys, ["ann-1", "ann", "key-ann"])).ok
            await asyncio.sleep(0.3)  # own expiry passed 0.2 s ago; 1.9 s of the payment window left
            status = (await scripts.call("hold", keys, ["bob-1", "bob", 1, 0])).status
            results[name] = status, await replay_event(redis=client, prefix=redis_prefix, event_id=event_id)
    finally:
        await client.aclose()
    status, history = results["real"]
    assert status == "seat_unavailable" and history.ok
    status, history = results["early_steal"]
    assert status == "ok" and history.kinds == {"expired_early"}
    assert "hold ann-1 (buyer ann) expired" in history.violations[0].message


@pytest.mark.anyio
async def test_the_replay_agrees_with_redis_while_the_sale_goes_on(redis_server_url, redis_prefix):
    """The counters and the stream's last id are read in one MULTI: no end-state difference mid-sale."""
    client = redis_client(redis_server_url)
    event_id = next(_events)
    scripts, keys = Scripts(client), event_keys(redis_prefix, event_id)
    await scripts.call("prepare_event", keys, ["on_sale", 200, 60_000, 1000, 60_000, "floor", 100])
    stop = asyncio.Event()

    async def buyers() -> int:
        i = 0
        while not stop.is_set():
            await asyncio.gather(scripts.call("hold", keys, [f"s{i}", "ann", 1, i % 200]),
                                 scripts.call("hold_ga", keys, [f"g{i}", "bob", "floor", 1]))
            await asyncio.gather(scripts.call("release", keys, [f"s{i}", "ann"]),
                                 scripts.call("release", keys, [f"g{i}", "bob"]) if i % 2 else
                                 scripts.call("confirm", keys, [f"g{i}", "bob", f"o{i}", "{}"]))
            i += 1
        return i

    try:
        task = asyncio.create_task(buyers())
        histories = []
        for _ in range(5):
            await asyncio.sleep(0.05)
            histories.append(await replay_event(redis=client, prefix=redis_prefix, event_id=event_id, page=50))
        stop.set()
        rounds = await task
    finally:
        await client.aclose()
    assert rounds > 10 and len({h.replay.records for h in histories}) > 1  # the stream grew meanwhile
    assert all(h.ok for h in histories), [str(v) for h in histories for v in h.violations][:5]


# -- what the replay cannot see is said, not hidden ----------------------------------------------------

@pytest.mark.anyio
async def test_a_trimmed_stream_is_reported_incomplete(redis_server_url, redis_prefix):
    client = redis_client(redis_server_url)
    try:
        event_id = next(_events)
        scripts, keys = Scripts(client), event_keys(redis_prefix, event_id)
        await scripts.call("prepare_event", keys, ["on_sale", 10, 60_000, 8, 60_000])
        for i in range(4):
            await scripts.call("hold", keys, [f"h{i}", "ann", 1, i])
        await client.xtrim(event_key(redis_prefix, event_id, "changes"), maxlen=2, approximate=False)
        history = await replay_event(redis=client, prefix=redis_prefix, event_id=event_id)
    finally:
        await client.aclose()
    assert not history.complete and not history.ok
    [(name, ok, detail)] = history.checks()
    assert name == COMPLETE_CHECK and not ok
    assert "starts at version 3" in detail and "trimmed" in detail


@pytest.mark.anyio
async def test_records_without_identities_are_reported_incomplete(redis_server_url, redis_prefix):
    """A stream written by older scripts (v, op, s, g only) is not replayed as if it were complete."""
    client = redis_client(redis_server_url)
    try:
        event_id = next(_events)
        scripts, keys = Scripts(client), event_keys(redis_prefix, event_id)
        await scripts.call("prepare_event", keys, ["on_sale", 10, 60_000, 8, 60_000])
        await client.hincrby(event_key(redis_prefix, event_id, "meta"), "version", 1)
        await client.xadd(event_key(redis_prefix, event_id, "changes"), {"v": 1, "op": 1, "s": "4", "g": ""})
        await scripts.call("hold", keys, ["h1", "ann", 1, 5])
        history = await replay_event(redis=client, prefix=redis_prefix, event_id=event_id)
    finally:
        await client.aclose()
    [(name, ok, detail)] = history.checks()
    assert not ok and "older than the replay" in detail


# -- mutations and FLASHGATE_LUA_DIR ----------------------------------------------------------------------

def test_a_stale_mutation_fails_loudly(tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(SOURCE_DIR, edited)
    hold = edited / "hold.lua"
    hold.write_text(hold.read_text().replace("if redis.call('GETBIT', K_SOLD, idx) == 1 then return true end",
                                             "if redis.call('GETBIT', K_SOLD, idx) ~= 0 then return true end"))
    with pytest.raises(StaleMutation, match="ignore_sold"):
        apply("ignore_sold", edited, tmp_path / "copy")
    apply("early_sweep", edited, tmp_path / "copy")  # the other mutations still apply


def _hold_source(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "from gateway.store.scripts import Scripts; print(Scripts(None)['hold'].source.count('K_SOLD, idx'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=SOURCE_DIR.parent)


def test_a_process_runs_the_scripts_of_flashgate_lua_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLASHGATE_LUA_DIR"}
    assert _hold_source(env).stdout.strip() == "1"
    mutated = apply("ignore_sold", SOURCE_DIR, tmp_path / "lua")
    assert _hold_source({**env, "FLASHGATE_LUA_DIR": str(mutated)}).stdout.strip() == "0"
    bad = _hold_source({**env, "FLASHGATE_LUA_DIR": str(tmp_path / "nothing")})
    assert bad.returncode != 0 and "FLASHGATE_LUA_DIR" in bad.stderr and "hold.lua" in bad.stderr


# -- property: random sequences on the real scripts --------------------------------------------------------

BUYERS = ("ann", "bob", "cid")
seat = st.integers(0, 7)
hold = st.tuples(st.just("hold"), st.sampled_from(BUYERS), st.lists(seat, min_size=1, max_size=3, unique=True))
operation = st.one_of(
    hold, hold,
    st.tuples(st.just("best"), st.sampled_from(BUYERS), st.lists(st.lists(seat, min_size=2, max_size=2, unique=True),
                                                                  min_size=1, max_size=3)),
    st.tuples(st.just("ga"), st.sampled_from(BUYERS), st.integers(1, 3)),
    st.tuples(st.sampled_from(["release", "begin", "abort", "confirm", "confirm"]), st.integers(0, 30)),
    st.tuples(st.just("confirm"), st.integers(0, 30)),
    st.tuples(st.just("void"), st.integers(0, 30)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("sleep"), st.integers(0, 40)),
)


async def random_sale(url: str, prefix: str, ttl_ms: int, checkout_ms: int, ops: list[tuple]) -> History:
    client = redis_client(url)
    try:
        event_id = next(_events)
        scripts, keys = Scripts(client), event_keys(prefix, event_id)
        await scripts.call("prepare_event", keys, ["on_sale", 8, ttl_ms, 4, checkout_ms, "floor", 4])
        holds: list[tuple[str, str]] = []
        orders: list[str] = []
        for i, op in enumerate(ops):
            kind = op[0]
            if kind in ("hold", "best", "ga"):
                hold_id, buyer = f"h{i}", op[1]
                if kind == "hold":
                    args = [hold_id, buyer, len(op[2]), *op[2]]
                elif kind == "best":
                    args = [hold_id, buyer, 2, *[s for group in op[2] for s in group]]
                else:
                    args = [hold_id, buyer, "floor", op[2]]
                if (await scripts.call("hold_ga" if kind == "ga" else "hold", keys, args)).ok:
                    holds.append((hold_id, buyer))
            elif kind in ("release", "begin", "abort", "confirm") and holds:
                hold_id, buyer = holds[op[1] % len(holds)]
                if kind == "release":
                    await scripts.call("release", keys, [hold_id, buyer])
                elif kind in ("begin", "abort"):
                    await scripts.call(f"{kind}_checkout", keys, [hold_id, buyer, "key"])
                elif (await scripts.call("confirm", keys, [hold_id, buyer, f"o-{hold_id}", "{}"])).ok:
                    orders.append(f"o-{hold_id}")
            elif kind == "void" and orders:
                await scripts.call("void", keys, [orders[op[1] % len(orders)], "{}"])
            elif kind == "expire":
                await scripts.call("expire", keys, [100])
            elif kind == "sleep":
                await asyncio.sleep(op[1] / 1000)
        history = await replay_event(redis=client, prefix=prefix, event_id=event_id, page=7)  # several pages
        # Redis's counters, read here on their own, are the replay's end state.
        sold = bits(await client.get(event_key(prefix, event_id, "sold")) or b"", 8)
        held = bits(await client.get(event_key(prefix, event_id, "held")) or b"", 8)
        ga = await client.hgetall(event_key(prefix, event_id, "ga"))
        buyers = await client.hgetall(event_key(prefix, event_id, "buyers"))
        replay = history.replay
        assert (set(replay.sold), set(replay.held)) == (sold, held)
        assert (replay.ga_held.get("floor", 0), replay.ga_sold.get("floor", 0)) == (int(ga[b"held:floor"]),
                                                                                    int(ga[b"sold:floor"]))
        assert replay.buyers == {b.decode(): int(n) for b, n in buyers.items()}
        return history
    finally:
        await client.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(ttl_ms=st.sampled_from([15, 60, 3_600_000]), checkout_ms=st.sampled_from([30, 3_600_000]),
       ops=st.lists(operation, min_size=10, max_size=40))
def test_random_sales_on_the_real_scripts_replay_without_violation(redis_server_url, redis_prefix, ttl_ms,
                                                                   checkout_ms, ops):
    history = run_async(random_sale, redis_server_url, redis_prefix, ttl_ms, checkout_ms, ops)
    assert history.complete and history.violations == [], [str(v) for v in history.violations]
