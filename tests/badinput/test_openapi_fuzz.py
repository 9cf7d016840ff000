"""schemathesis against the gateway's OpenAPI document: every documented route, with valid credentials,
against a real gateway (granian, the edge in front, so the hot routes are answered as in production).

Every answer must be no 5xx and documented: its status among the route's responses (each route
documents the common error statuses, gateway/api/responses.py), its body matching the documented
schema, and input the schema calls invalid refused with a 4xx. The number of examples per route is
bounded so the run stays under a minute.

The routes are driven with hypothesis through each operation's strategy (`as_strategy`), not through
schemathesis's own pytest integration, whose lazy (fixture-based) schemas need an attribute pytest 9
no longer has (`Function._nodeid`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.servers import run_async

# Per route and mode: 10-25 s in all on two cores. FLASHGATE_FUZZ_EXAMPLES=250 for a deeper run by hand
# (about 4 minutes; passes).
MAX_EXAMPLES = int(os.environ.get("FLASHGATE_FUZZ_EXAMPLES", "10"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
# The live figures are a Server-Sent Events stream that never ends by itself: no answer to validate.
NOT_FUZZED = r"^/v1/events/\{event_id\}/live$"


@pytest.fixture(scope="module")
def world(live_gateway: str, database_url: str) -> dict[str, Any]:
    """Real credentials and resources for the fuzzer: an admin key, an open event, a buyer token, a door
    device and a paid order."""
    _, key = run_async(new_org, database_url)
    with httpx.Client(base_url=live_gateway, timeout=10) as c:
        event = c.post("/v1/events", json=seat_spec(ga={"floor": 50}, limit=1000), headers=auth(key)).json()
        assert c.post(f"/v1/events/{event['id']}/open", headers=auth(key)).status_code == 200
        me = c.post("/v1/buyer-token").json()["buyer_token"]
        device = c.post(f"/v1/events/{event['id']}/devices", json={"gate": "north"}, headers=auth(key)).json()
        hold = c.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}}, headers=auth(me)).json()
        order = c.post(f"/v1/holds/{hold['hold_id']}/checkout", json={},
                       headers={**auth(me), "Idempotency-Key": "fuzz-order-1"}).json()
        keys = c.get("/v1/keys", headers=auth(key)).json()["keys"]
    return {"key": key, "key_ids": {k["id"] for k in keys}, "event_id": event["id"], "buyer": me,
            "device": device["token"], "order_id": order["order_id"], "order_token": order["order_token"],
            "hold_id": hold["hold_id"]}


@pytest.fixture(scope="module")
def openapi(live_gateway: str) -> Any:
    # Query parameters no route knows are ignored, as HTTP APIs usually do: not sent as "invalid" input.
    config = schemathesis.Config.from_dict({"generation": {"allow-extra-parameters": False}})
    return schemathesis.openapi.from_url(f"{live_gateway}/openapi.json", config=config).exclude(path_regex=NOT_FUZZED)


def _coin(value: Any) -> bool:
    """A stable half of the generated values (the same example always takes the same branch)."""
    return hashlib.sha256(repr(value).encode()).digest()[0] % 2 == 0


def credentials(operation: Any, world: dict[str, Any]) -> dict[str, str]:
    """The credential each route takes: device token, order token, buyer token, or the admin key."""
    path = operation.path
    tags = operation.tags or []
    if path.startswith("/v1/scan"):
        return auth(world["device"])
    if path == "/v1/orders/{order_id}":
        return auth(world["order_token"])
    if "ops" in tags:
        return {}
    if "buyer" in tags:
        return auth(world["buyer"])
    return auth(world["key"])


def aim_at_real_resources(case: Any, world: dict[str, Any]) -> None:
    """Half of the generated ids are swapped for the real ones, so the routes get past "not found"."""
    params = case.path_parameters or {}
    method = case.operation.method.upper()
    event_id = params.get("event_id")
    if isinstance(event_id, int) and 1 <= event_id <= 10**18 and _coin(event_id):  # a valid id only: an
        params["event_id"] = world["event_id"]  # invalid one stays, for the negative examples
    if "order_id" in params and _coin(params["order_id"]) and method == "GET":
        params["order_id"] = world["order_id"]
    if "hold_id" in params and _coin(params["hold_id"]) and method == "DELETE":
        params["hold_id"] = world["hold_id"]
    if params.get("key_id") in world["key_ids"]:
        params["key_id"] = 10**15  # never revoke the key the fuzzer works with


def fuzz(operation: Any, mode: GenerationMode, world: dict[str, Any]) -> int:
    """Run up to MAX_EXAMPLES generated requests of one route; returns how many were sent."""
    headers = credentials(operation, world)
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def run(case: Any) -> None:
        nonlocal sent
        aim_at_real_resources(case, world)
        sent += 1
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

    run()
    return sent


def test_every_route_answers_as_documented(openapi: Any, world: dict[str, Any]) -> None:
    failures, fuzzed, sent = [], 0, 0
    for result in openapi.get_all_operations():
        operation = result.ok()
        fuzzed += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                sent += fuzz(operation, mode, world)
            except Unsatisfiable:  # nothing of the route can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.path
            except (Exception, BaseExceptionGroup) as exc:  # every route is fuzzed; failures reported together
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    documented = sum(m in ("get", "post", "put", "patch", "delete") for ops in openapi.raw_schema["paths"].values()
                     for m in ops)
    assert fuzzed == documented - 1 and fuzzed >= 39, (fuzzed, documented)  # all but the live stream
    assert not failures, "\n\n".join(failures)
    assert sent >= fuzzed * MAX_EXAMPLES, (sent, fuzzed)  # positive and negative examples were really sent
