"""The payment-provider simulator over real HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.providers.simulator import start_simulator_process
from gateway.stack.embedded import stop_process


def authorize(sim: httpx.Client, key: str, *, amount: int = 1500, reference: str = "order-1") -> httpx.Response:
    return sim.post("/v1/payments/authorize", json={"amount_minor": amount, "currency": "EUR", "reference": reference},
                    headers={"Idempotency-Key": key})


def test_authorize_capture_refund(sim: httpx.Client) -> None:
    resp = authorize(sim, "a1")
    assert resp.status_code == 201
    body = resp.json()
    assert body["status"] == "authorized" and body["amount_minor"] == 1500 and body["currency"] == "EUR"
    pid = body["id"]

    cap = sim.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500}, headers={"Idempotency-Key": "c1"})
    assert cap.status_code == 200 and cap.json()["status"] == "captured"

    ref = sim.post(f"/v1/payments/{pid}/refund", json={"amount_minor": 500}, headers={"Idempotency-Key": "r1"})
    assert ref.status_code == 200
    assert ref.json()["status"] == "refunded" and ref.json()["refund_id"].startswith("re_")

    got = sim.get(f"/v1/payments/{pid}").json()
    assert got["captured_minor"] == 1500 and got["refunded_minor"] == 500

    too_much = sim.post(f"/v1/payments/{pid}/refund", json={"amount_minor": 5000}, headers={"Idempotency-Key": "r2"})
    assert too_much.status_code == 409
    assert sim.get("/v1/payments/pay_nope").status_code == 404
    stats = sim.get("/_stats").json()
    assert stats["authorize"] == 1 and stats["capture"] == 1 and stats["refund"] == 2 and stats["get"] == 2


def test_same_idempotency_key_same_answer(sim: httpx.Client) -> None:
    first = authorize(sim, "same")
    second = authorize(sim, "same")
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    other = authorize(sim, "same", amount=999)
    assert other.status_code == 422
    pid = first.json()["id"]
    refunds = [sim.post(f"/v1/payments/{pid}/capture", json={"amount_minor": 1500},
                        headers={"Idempotency-Key": "cap"}).json() for _ in range(3)]
    assert refunds[0] == refunds[1] == refunds[2]
    assert authorize(sim, "").status_code == 400  # the key is required


def test_decline_by_reference_and_rate(sim: httpx.Client) -> None:
    declined = authorize(sim, "d1", reference="please-decline")
    assert declined.status_code == 201 and declined.json()["status"] == "declined"
    # A declined payment cannot be captured.
    pid = declined.json()["id"]
    assert sim.post(f"/v1/payments/{pid}/capture", json={}, headers={"Idempotency-Key": "c"}).status_code == 409
    # The same key replays the decline.
    assert authorize(sim, "d1", reference="please-decline").json() == declined.json()

    sim.put("/_config", json={"decline_rate": 1.0}).raise_for_status()
    assert all(authorize(sim, f"r{i}").json()["status"] == "declined" for i in range(5))


def test_failure_rate_and_down(sim: httpx.Client) -> None:
    sim.put("/_config", json={"failure_rate": 1.0}).raise_for_status()
    assert authorize(sim, "f1").status_code == 503
    # Failures are not remembered: the same key succeeds once the provider recovers.
    sim.put("/_config", json={"failure_rate": 0.0}).raise_for_status()
    assert authorize(sim, "f1").status_code == 201

    sim.put("/_config", json={"down": True}).raise_for_status()
    assert sim.get("/_config").json()["down"] is True
    resp = authorize(sim, "f2")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "down"
    assert authorize(sim, "x", reference="fail").status_code == 503
    stats = sim.get("/_stats").json()
    assert stats["failed"] == 1 and stats["refused_down"] == 2


def test_latency(sim: httpx.Client) -> None:
    sim.put("/_config", json={"latency_ms": 200}).raise_for_status()
    started = time.monotonic()
    assert authorize(sim, "slow").status_code == 201
    assert time.monotonic() - started >= 0.2


def test_bad_config_and_body(sim: httpx.Client) -> None:
    assert sim.put("/_config", json={"failure_rate": 2}).status_code == 400
    bad = sim.post("/v1/payments/authorize", content=b"[1]", headers={"Idempotency-Key": "k"})
    assert bad.status_code == 400
    missing = sim.post("/v1/payments/authorize", json={"currency": "EUR"}, headers={"Idempotency-Key": "k2"})
    assert missing.status_code == 400


def test_process_takes_its_configuration() -> None:
    proc, url = start_simulator_process(decline_rate=1.0, latency_ms=10)
    try:
        config = httpx.get(url + "/_config").json()
        assert config == {"latency_ms": 10.0, "decline_rate": 1.0, "failure_rate": 0.0, "down": False}
        resp = httpx.post(url + "/v1/payments/authorize", headers={"Idempotency-Key": "k"},
                          json={"amount_minor": 100, "currency": "EUR", "reference": "r"})
        assert resp.json()["status"] == "declined"
    finally:
        stop_process(proc)
    assert proc.returncode is not None


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError):
        start_simulator_process(latency=5)
