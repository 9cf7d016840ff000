"""Organiser API keys: names and roles, shown once, revoked everywhere at once, failed checks limited."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import uuid

import asyncpg
import httpx
import pytest

from gateway.api.deps import require_role
from gateway.core.errors import DomainError
from gateway.organisers.orgs import Caller, hash_key, revoke_key
from tests.organisers.conftest import app_client, from_address
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.live import stack_env

pytestmark = pytest.mark.anyio


def _address() -> str:
    """A client address of its own per test (failed-check counters are per address)."""
    return f"198.51.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


async def _key(client, admin_key: str, role: str, name: str | None = None) -> dict:
    resp = await client.post("/v1/keys", json={"name": name or f"{role} key", "role": role},
                             headers=auth(admin_key))
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_keys_have_names_and_roles_and_are_shown_once(client, database_url, pg):
    org_id, admin = await new_org(database_url)
    made = await _key(client, admin, "sales", "box office")
    assert made["key"].startswith("fgk_") and made["name"] == "box office" and made["role"] == "sales"
    assert made["prefix"] == made["key"][:10] and made["revoked_at"] is None
    listed = (await client.get("/v1/keys", headers=auth(admin))).json()["keys"]
    assert [(k["name"], k["role"]) for k in listed] == [("initial", "admin"), ("box office", "sales")]
    assert made["key"] not in json.dumps(listed) and all("key" not in k for k in listed)
    stored = await pg.fetchrow("SELECT key_hash, name, role FROM api_keys WHERE id = $1", made["id"])
    assert stored["key_hash"] == hash_key(made["key"]) and made["key"].encode() not in stored["key_hash"]
    assert (stored["name"], stored["role"]) == ("box office", "sales")
    # another organisation sees none of them
    _, other = await new_org(database_url)
    assert [k["name"] for k in (await client.get("/v1/keys", headers=auth(other))).json()["keys"]] == ["initial"]


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "role": "owner"}, "role"),
    ({"name": "", "role": "sales"}, "name"),
    ({"name": "x" * 101, "role": "sales"}, "name"),
    ({"role": "sales"}, "name"),
    ({"name": "x", "role": "sales", "extra": 1}, "extra"),
])
async def test_bad_key_requests_are_refused_and_change_nothing(client, database_url, pg, body, field):
    org_id, admin = await new_org(database_url)
    resp = await client.post("/v1/keys", json=body, headers=auth(admin))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "validation_error"
    assert field in resp.json()["error"]["message"]
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE organisation_id = $1", org_id) == 1


async def test_roles_limit_what_a_key_may_do(client, database_url):
    _, admin = await new_org(database_url)
    sales = (await _key(client, admin, "sales"))["key"]
    door = (await _key(client, admin, "door"))["key"]
    event = (await client.post("/v1/events", json=seat_spec(), headers=auth(admin))).json()
    eid = event["id"]

    async def status(method: str, path: str, key: str, **kw) -> int:
        resp = await client.request(method, path, headers=auth(key), **kw)
        if resp.status_code == 403:
            err = resp.json()["error"]
            assert err["code"] == "forbidden" and err["details"]["allowed_roles"], err
            assert err["details"]["role"] in ("sales", "door")
        return resp.status_code

    # sales: read events and orders, refund; nothing that changes the sale or the keys
    assert await status("GET", "/v1/events", sales) == 200
    assert await status("GET", f"/v1/events/{eid}", sales) == 200
    assert await status("GET", f"/v1/events/{eid}/orders", sales) == 200
    assert await status("POST", f"/v1/orders/{uuid.uuid4().hex}/refund", sales) == 404  # allowed, no such order
    for method, path, kw in (("POST", "/v1/events", {"json": seat_spec()}), ("POST", f"/v1/events/{eid}/open", {}),
                             ("POST", f"/v1/events/{eid}/close", {}), ("GET", "/v1/keys", {}),
                             ("POST", "/v1/keys", {"json": {"name": "mine", "role": "admin"}})):
        assert await status(method, path, sales, **kw) == 403, path
    # door: devices only (no event, order or key route)
    for method, path in (("GET", "/v1/events"), ("GET", f"/v1/events/{eid}"), ("GET", f"/v1/events/{eid}/orders"),
                         ("POST", f"/v1/events/{eid}/open"), ("GET", "/v1/keys")):
        assert await status(method, path, door) == 403, path
    assert (await client.get(f"/v1/events/{eid}", headers=auth(admin))).json()["status"] == "draft"
    # the device routes' dependency lets door and admin keys through, and only them
    door_or_admin = require_role("admin", "door")
    assert await door_or_admin(Caller(organisation_id=7, key_id=1, role="door")) == 7
    assert await door_or_admin(Caller(organisation_id=7, key_id=2, role="admin")) == 7
    with pytest.raises(DomainError) as refused:
        await door_or_admin(Caller(organisation_id=7, key_id=3, role="sales"))
    assert refused.value.status == 403


async def test_a_revoked_key_stops_at_once_and_the_last_admin_key_stays(client, database_url):
    _, admin = await new_org(database_url)
    second = await _key(client, admin, "admin")
    assert (await client.get("/v1/events", headers=auth(second["key"]))).status_code == 200  # now cached
    revoked = await client.delete(f"/v1/keys/{second['id']}", headers=auth(admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    gone = await client.get("/v1/events", headers=auth(second["key"]))
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "unauthorized"
    # the remaining admin key cannot be revoked (the organisation would lock itself out)
    keys = (await client.get("/v1/keys", headers=auth(admin))).json()["keys"]
    first = next(k for k in keys if k["name"] == "initial")
    refused = await client.delete(f"/v1/keys/{first['id']}", headers=auth(admin))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_state"
    assert (await client.get("/v1/events", headers=auth(admin))).status_code == 200
    # another organisation's key answers like a missing one, and stays usable
    _, other = await new_org(database_url)
    other_keys = (await client.get("/v1/keys", headers=auth(other))).json()["keys"]
    assert (await client.delete(f"/v1/keys/{other_keys[0]['id']}", headers=auth(admin))).status_code == 404
    assert (await client.get("/v1/events", headers=auth(other))).status_code == 200
    assert (await client.delete("/v1/keys/999999999", headers=auth(admin))).status_code == 404


async def test_two_admins_revoking_each_other_at_once_leave_one_admin(client, database_url, pg):
    org_id, admin = await new_org(database_url)
    keys = (await client.get("/v1/keys", headers=auth(admin))).json()["keys"]
    other = await _key(client, admin, "admin")
    await _key(client, admin, "sales")
    a = client.delete(f"/v1/keys/{other['id']}", headers=auth(admin))
    b = client.delete(f"/v1/keys/{keys[0]['id']}", headers=auth(other["key"]))
    answers = sorted(r.status_code for r in await asyncio.gather(a, b))
    # the loser is refused either as the last admin (409) or because its own key was just revoked (401)
    assert answers in ([200, 401], [200, 409]), answers
    active = "SELECT count(*) FROM api_keys WHERE organisation_id = $1 AND role = 'admin' AND revoked_at IS NULL"
    assert await pg.fetchval(active, org_id) == 1
    # the same race below the API, on two connections: exactly one revocation wins
    alive = await pg.fetchval("SELECT id FROM api_keys WHERE organisation_id = $1 AND role = 'admin' "
                              "AND revoked_at IS NULL", org_id)
    admin = admin if alive == keys[0]["id"] else other["key"]
    third = await _key(client, admin, "admin")
    ids = [k["id"] for k in (await client.get("/v1/keys", headers=auth(admin))).json()["keys"]
           if k["role"] == "admin" and not k["revoked_at"]]
    assert len(ids) == 2 and third["id"] in ids
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)
    try:
        results = await asyncio.gather(*(revoke_key(pool, organisation_id=org_id, key_id=i) for i in ids),
                                       return_exceptions=True)
    finally:
        await pool.close()
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(refused) == 1 and refused[0].code == "invalid_state", results
    assert await pg.fetchval(active, org_id) == 1


async def test_failed_key_checks_are_limited_per_address(settings, database_url):
    _, admin = await new_org(database_url)
    attacker, bystander = _address(), _address()
    async with app_client(settings, api_key_fail_burst=3, api_key_fail_per_ip_per_min=6) as client:
        ok = await client.get("/v1/events", headers=from_address(auth(admin), attacker))
        assert ok.status_code == 200  # cached from now on
        statuses = []
        for _ in range(5):
            resp = await client.get("/v1/events", headers=from_address(auth("fgk_" + "x" * 43), attacker))
            statuses.append(resp.status_code)
        assert statuses == [401, 401, 401, 429, 429]
        assert resp.json()["error"]["code"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
        # an address over its limit gets no lookup at all: even a valid key this worker has not seen yet
        fresh = await _key(client, admin, "sales")
        held = await client.get("/v1/events", headers=from_address(auth(fresh["key"]), attacker))
        assert held.status_code == 429
        # a key already checked on this worker still works from there; other addresses are not affected
        assert (await client.get("/v1/events", headers=from_address(auth(admin), attacker))).status_code == 200
        assert (await client.get("/v1/events", headers=from_address(auth(fresh["key"]), bystander))).status_code == 200
        wrong = await client.get("/v1/events", headers=from_address(auth("garbage"), bystander))
        assert wrong.status_code == 401


async def test_a_revocation_does_not_lock_out_the_good_key_of_a_flooded_address(settings, database_url):
    """From one address: the admin works with its key, revokes another key, and that revoked key is then
    tried until the address is over its failed-check limit. The admin key, which this worker knew before
    the revocation emptied its cache, keeps working from there (it was refused 429 for a second or two)."""
    _, admin = await new_org(database_url)
    office = _address()
    async with app_client(settings, api_key_fail_burst=3, api_key_fail_per_ip_per_min=6) as client:
        doomed = await _key(client, admin, "sales")
        assert (await client.get("/v1/events", headers=from_address(auth(doomed["key"]), office))).status_code == 200
        assert (await client.get("/v1/events", headers=from_address(auth(admin), office))).status_code == 200
        revoked = await client.delete(f"/v1/keys/{doomed['id']}", headers=from_address(auth(admin), office))
        assert revoked.status_code == 200, revoked.text
        statuses = [(await client.get("/v1/events", headers=from_address(auth(doomed["key"]), office))).status_code
                    for _ in range(8)]
        assert statuses[:3] == [401] * 3 and statuses[-1] == 429, statuses
        for _ in range(5):
            assert (await client.get("/v1/events", headers=from_address(auth(admin), office))).status_code == 200
        # a key this worker never saw is still not looked up from that address
        fresh = await _key(client, admin, "sales")
        assert (await client.get("/v1/events", headers=from_address(auth(fresh["key"]), office))).status_code == 429


async def test_the_per_minute_limit_is_shared_by_workers(settings, database_url):
    _, admin = await new_org(database_url)
    attacker = _address()
    limits = {"api_key_fail_burst": 100, "api_key_fail_per_ip_per_min": 4}
    async with app_client(settings, **limits) as one, app_client(settings, **limits) as two:
        for client in (one, two, one, two):
            resp = await client.get("/v1/events", headers=from_address(auth("fgk_nope"), attacker))
            assert resp.status_code == 401
        for client in (one, two):
            resp = await client.get("/v1/events", headers=from_address(auth(admin), attacker))
            assert resp.status_code == 429 and resp.json()["error"]["details"]["scope"] == "api_key"
            assert 1 <= int(resp.headers["Retry-After"]) <= 60


def test_a_revoked_key_stops_on_every_worker_at_once(live_gateway, database_url, settings, redis_sync):
    """A real gateway with 2 granian workers: both have the key cached, then it is revoked."""
    _, admin = asyncio.run(new_org(database_url))

    def fresh_get(key: str) -> int:  # a new connection each time, so the kernel spreads them over the workers
        with httpx.Client(base_url=live_gateway, timeout=5) as c:
            return c.get("/v1/events", headers=auth(key)).status_code

    with httpx.Client(base_url=live_gateway, timeout=5) as c:
        made = c.post("/v1/keys", json={"name": "to revoke", "role": "sales"}, headers=auth(admin)).json()
    assert [fresh_get(made["key"]) for _ in range(40)] == [200] * 40
    with httpx.Client(base_url=live_gateway, timeout=5) as c:
        assert c.delete(f"/v1/keys/{made['id']}", headers=auth(admin)).status_code == 200
    try:
        after = [fresh_get(made["key"]) for _ in range(12)]
    finally:  # these failures from 127.0.0.1 must not limit later tests on the shared gateway
        for key in redis_sync.scan_iter(match=f"{settings.redis_prefix}:{{apikeys}}:fail:127.0.0.1:*"):
            redis_sync.delete(key)
    # never accepted again; past a few failures the address is limited (429), which a cached key would pass
    assert after[0] == 401 and set(after) <= {401, 429}, after


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "org", "key", *args], capture_output=True,
                          text=True, env=stack_env(settings), timeout=60)


async def test_cli_creates_lists_and_revokes_keys(client, settings, database_url):
    org_id, admin = await new_org(database_url)
    made = _cli(settings, "create", str(org_id), "--name", "scanner laptop", "--role", "door", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["key"].startswith("fgk_") and key["role"] == "door"
    human = _cli(settings, "list", str(org_id))
    assert "scanner laptop" in human.stdout and key["key"] not in human.stdout
    listed = json.loads(_cli(settings, "list", str(org_id), "--json").stdout)
    assert [k["name"] for k in listed] == ["initial", "scanner laptop"]
    assert (await client.get("/v1/events", headers=auth(admin))).status_code == 200  # cached in this worker
    second_admin = json.loads(_cli(settings, "create", str(org_id), "--name", "ops", "--role", "admin",
                                   "--json").stdout)
    assert (await client.get("/v1/events", headers=auth(second_admin["key"]))).status_code == 200
    revoked = _cli(settings, "revoke", str(org_id), str(second_admin["id"]))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert (await client.get("/v1/events", headers=auth(second_admin["key"]))).status_code == 401
    bad = _cli(settings, "create", str(org_id), "--name", "x", "--role", "owner")
    assert bad.returncode != 0 and "owner" in bad.stderr
    last = _cli(settings, "revoke", str(org_id), str(listed[0]["id"]))
    assert last.returncode == 1 and "last admin key" in last.stderr
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE organisation_id = $1 AND revoked_at IS NULL",
                                   org_id) == 2
    finally:
        await conn.close()


async def test_without_redis_cached_keys_last_seconds_and_revocation_says_so(settings, database_url, pg):
    """Redis unreachable: a key checked moments ago is trusted for 5 s at most, then Postgres decides;
    a revocation is saved but answers 503 until the workers can be told."""
    from gateway.core.runtime import Runtime
    from gateway.organisers.orgs import OFFLINE_TRUST_S, ApiKeys
    from gateway.stack.embedded import free_port

    org_id, admin = await new_org(database_url)
    runtime = Runtime.from_settings(settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout_s": 0.2}))
    try:
        keys = ApiKeys(runtime)
        spare = await keys.create(org_id, name="spare", role="sales")
        assert (await keys.authenticate(spare["key"], "192.0.2.1")).role == "sales"
        with pytest.raises(DomainError) as told:
            await keys.revoke(org_id, spare["id"])
        assert told.value.code == "unavailable" and told.value.headers["Retry-After"]
        assert await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", spare["id"]) is not None
        admin_caller = await keys.authenticate(admin, "192.0.2.1")  # from Postgres, then cached
        assert admin_caller.role == "admin"
        await pg.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(admin))
        assert (await keys.authenticate(admin, "192.0.2.1")).role == "admin"  # cached, Redis silent
        await asyncio.sleep(OFFLINE_TRUST_S + 0.2)
        with pytest.raises(DomainError) as gone:
            await keys.authenticate(admin, "192.0.2.1")
        assert gone.value.code == "unauthorized"
    finally:
        await runtime.close()


async def test_a_missing_key_is_not_a_failed_check(settings, database_url):
    _, admin = await new_org(database_url)
    address = _address()
    async with app_client(settings, api_key_fail_burst=2, api_key_fail_per_ip_per_min=6) as client:
        for _ in range(5):
            resp = await client.get("/v1/events", headers=from_address({}, address))
            assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await client.get("/v1/events", headers=from_address(auth(admin), address))).status_code == 200
