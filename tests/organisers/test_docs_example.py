"""The complete event body in docs/organisers.md is a valid event."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway.core.config import PROJECT_ROOT
from tests.organisers.conftest import app_client
from tests.utils.factories import auth, new_org

pytestmark = pytest.mark.anyio


def documented_body() -> dict:
    text = (PROJECT_ROOT / "docs" / "organisers.md").read_text()
    section = text.split("### Complete example", 1)[1]
    return orjson.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))


async def test_the_documented_example_creates_an_event(settings, database_url):
    _, key = await new_org(database_url)
    body = documented_body()
    # The documented receiver is a public name that may not resolve here: point it at a documented
    # public address instead (its checks are tested in test_webhook_destinations.py).
    body["webhook"]["url"] = "https://93.184.216.34/hooks/flashgate"
    async with app_client(settings) as client:
        resp = await client.post("/v1/events", json=body, headers=auth(key))
        assert resp.status_code == 201, resp.text
        event = resp.json()
    assert [(s["name"], s["seats"]) for s in event["sections"]] == [("Stalls", 70), ("Boxes", 4)]
    assert event["capacity"] == 74 + 800
    assert event["queue"] == {"enabled": True, "admission_rate": 40}
    assert event["schedule"]["prequeue_opens_at"] == "2027-03-01T08:30:00+00:00"
    assert event["webhook"] == {"url": "https://93.184.216.34/hooks/flashgate"}
