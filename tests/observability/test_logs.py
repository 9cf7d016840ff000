"""Logs and 500s of a real gateway (2 workers): a 500 names its request id in the body and the header,
and the log line of that request carries the same id; log lines are JSON with the request's route
template, event and organisation; no token, API key or ticket code is ever written."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis

from gateway.core.config import Settings
from gateway.store.keys import event_key
from tests.observability.conftest import Gateway2
from tests.utils.door import open_door
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.servers import run_async

pytestmark = pytest.mark.slow


def log_lines(gateway: Gateway2) -> list[dict[str, Any]]:
    """The application's lines (granian's own start-up lines are not JSON and start with `[`)."""
    lines = gateway.log.read_text().splitlines()
    ours = [line for line in lines if line and not line.startswith("[")]
    return [json.loads(line) for line in ours]  # fails on any line that is not one JSON object


def broken_event(settings: Settings, event_id: int) -> None:
    """An event whose seat map in Redis the code cannot read: every request about it is a real 500."""
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        client.set(event_key(settings.redis_prefix, event_id, "layout"), b"{not json")
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/v1/events/{id}/availability",  # answered by the edge itself
                                  "/v1/events/{id}/public"])        # answered through FastAPI
def test_a_500_carries_the_request_id(gateway2: Gateway2, settings: Settings, path: str) -> None:
    event_id = 990_000_000 + len(path)
    broken_event(settings, event_id)
    resp = httpx.get(gateway2.url + path.format(id=event_id), timeout=10)
    assert resp.status_code == 500
    rid = resp.headers["x-request-id"]
    error = resp.json()["error"]
    assert error["code"] == "internal_error"
    assert error["details"]["request_id"] == rid
    # A request id the client sent is the one used (it can then be quoted to support).
    mine = httpx.get(gateway2.url + path.format(id=event_id), headers={"X-Request-ID": "support-case-42"}, timeout=10)
    assert mine.headers["x-request-id"] == "support-case-42"
    assert mine.json()["error"]["details"]["request_id"] == "support-case-42"
    errors = [line for line in log_lines(gateway2) if line.get("request_id") == rid and line["level"] == "error"]
    assert errors, f"no error line with request id {rid}"
    assert errors[0]["route"] == "/v1/events/{event_id}/" + path.rsplit("/", 1)[1]
    assert str(errors[0]["event_id"]) == str(event_id)
    assert "Traceback" in errors[0]["exc"]


def test_logs_are_json_with_context_and_no_secrets(gateway2: Gateway2, database_url: str,
                                                   settings: Settings) -> None:
    org_id, key = run_async(new_org, database_url, "Log Tests")
    secrets: list[str] = [key, settings.secret_key or ""]
    with httpx.Client(base_url=gateway2.url, timeout=10) as c:
        event = c.post("/v1/events", json=seat_spec(sections=0, ga={"floor": 10}, queue=True), headers=auth(key))
        eid = event.json()["id"]
        assert c.post(f"/v1/events/{eid}/open", headers=auth(key)).status_code == 200
        seen = c.get(f"/v1/events/{eid}", headers=auth(key))
        assert seen.status_code == 200
        buyer = c.post("/v1/buyer-token").json()["buyer_token"]
        joined = c.post(f"/v1/events/{eid}/queue", headers=auth(buyer)).json()
        secrets += [buyer, joined["queue_token"]]
        # A refused and a failing request carry the tokens too.
        assert c.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}}, headers=auth(buyer)).status_code == 403
        broken_event(settings, eid + 500_000)
        failed = c.get(f"/v1/events/{eid + 500_000}/availability", headers={**auth(buyer), "X-Api-Key": key})
        assert failed.status_code == 500
    door = open_door(gateway2.url, database_url)
    device = door.device("west")
    code = door.tickets[0]["code"]
    assert door.scan(device["token"], code)["result"] == "admitted"
    assert door.scan(device["token"], code[:-3] + "zzz")["result"] == "invalid"
    secrets += [device["token"], code, door.key] + [t["code"] for t in door.tickets]

    lines = log_lines(gateway2)
    access = [line for line in lines if line.get("request_id") == seen.headers["x-request-id"]]
    assert access and access[0]["msg"] == "request"
    assert access[0]["route"] == "/v1/events/{event_id}"
    assert str(access[0]["event_id"]) == str(eid)
    assert access[0]["organisation_id"] == org_id
    assert access[0]["status"] == 200
    text = gateway2.log.read_text()
    for secret in secrets:
        assert secret and secret not in text, f"a secret ({secret[:6]}…) was written to the log"
