"""Every error leaves the gateway in the common shape, with a 4xx for bad input."""

from __future__ import annotations

import pytest

from tests.utils.factories import auth, new_org

pytestmark = pytest.mark.anyio


def assert_shape(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"].endswith(".")
    assert resp.headers.get("x-request-id")
    return body["error"]


async def test_health_and_request_id(client):
    resp = await client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "alive"}
    assert len(resp.headers["x-request-id"]) >= 8
    resp = await client.get("/healthz", headers={"X-Request-Id": "trace-123"})
    assert resp.headers["x-request-id"] == "trace-123"


async def test_readyz_reports_both_servers(client):
    resp = await client.get("/readyz")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"]["ok"] and body["checks"]["postgres"]["ok"]
    assert body["hotpath"] in ("c", "py")


async def test_unknown_route(client):
    assert_shape(await client.get("/v1/nope"), 404, "not_found")


async def test_wrong_method(client):
    assert_shape(await client.delete("/healthz"), 405, "method_not_allowed")


async def test_malformed_json(client, database_url):
    _, key = await new_org(database_url)
    resp = await client.post("/v1/events", content=b'{"name": ', headers={**auth(key), "content-type": "application/json"})
    assert_shape(resp, 400, "malformed_json")


async def test_wrong_content_type(client, database_url):
    _, key = await new_org(database_url)
    resp = await client.post("/v1/events", content=b"name=x", headers={**auth(key), "content-type": "text/plain"})
    err = assert_shape(resp, 415, "unsupported_media_type")
    assert err["details"]["content_type"] == "text/plain"


async def test_oversized_body(client, database_url, settings):
    _, key = await new_org(database_url)
    big = b'{"name": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    resp = await client.post("/v1/events", content=big, headers={**auth(key), "content-type": "application/json"})
    assert_shape(resp, 413, "body_too_large")


async def test_validation_error_names_the_field(client, database_url, pg):
    _, key = await new_org(database_url)
    before = await pg.fetchval("SELECT count(*) FROM events")
    resp = await client.post("/v1/events", json={"name": "x", "currency": "euro", "ga": []}, headers=auth(key))
    err = assert_shape(resp, 422, "validation_error")
    assert any(e["loc"][-1] == "currency" for e in err["details"]["errors"])
    assert await pg.fetchval("SELECT count(*) FROM events") == before


async def test_missing_and_bad_api_key(client):
    assert_shape(await client.get("/v1/events"), 401, "unauthorized")
    assert_shape(await client.get("/v1/events", headers=auth("fgk_nope")), 401, "unauthorized")


async def test_unhandled_exception_is_a_500_without_trace(app, client):
    async def boom():
        raise RuntimeError("secret internals")

    app.fastapi.add_api_route("/_boom", boom)
    resp = await client.get("/_boom")
    err = assert_shape(resp, 500, "internal_error")
    assert "secret" not in resp.text and "Traceback" not in resp.text
    assert err["message"]
