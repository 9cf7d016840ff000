"""`GET /metrics` of a real gateway with 2 granian workers: requests sent to both workers are counted
once each, whichever worker served them and whichever worker answers the scrape; the Redis-side figures
(queue, ledger, breakers) describe what the sale did."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.core.config import Settings
from gateway.stack.embedded import free_port
from gateway.store.keys import notify_key
from tests.observability.conftest import EVENT_LABELS, Gateway2, sample, settled
from tests.utils import live
from tests.utils.door import open_door
from tests.utils.factories import auth, new_org, seat_spec
from tests.utils.servers import run_async

pytestmark = pytest.mark.slow

DURATION = "flashgate_http_request_duration_seconds"
AVAILABILITY = "/v1/events/{event_id}/availability"


def fresh(url: str) -> httpx.Client:
    """A client that opens a new connection per request, so the kernel spreads them over both workers."""
    return httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def worker_of(resp: httpx.Response) -> str:
    return resp.headers["x-request-id"][:8]  # request ids start with a per-worker prefix


def counts(samples: dict, method: str, route: str) -> dict[str, float]:
    return {status: sample(samples, DURATION + "_count", method=method, route=route, status=status)
            for status in ("2xx", "4xx", "5xx")}


def new_event(url: str, database_url: str, **spec: Any) -> tuple[int, str]:
    _, key = run_async(new_org, database_url, "Metrics Tests")
    with httpx.Client(base_url=url, timeout=10) as c:
        event = c.post("/v1/events", json=seat_spec(**spec), headers=auth(key))
        assert event.status_code == 201, event.text
        eid = event.json()["id"]
        assert c.post(f"/v1/events/{eid}/open", headers=auth(key)).status_code == 200
    return eid, key


def test_request_counts_add_up_over_both_workers(gateway2: Gateway2, database_url: str) -> None:
    eid, key = new_event(gateway2.url, database_url, sections=1, rows=2, seats=10, ga={"floor": 50})
    before = settled(gateway2)
    workers: set[str] = set()
    sent = {"availability": 0, "tokens": 0, "holds": 0, "organiser": 0, "missing": 0}
    with fresh(gateway2.url) as c:
        for _ in range(60):
            resp = c.get(f"/v1/events/{eid}/availability")
            assert resp.status_code == 200
            workers.add(worker_of(resp))
            sent["availability"] += 1
        for _ in range(4):
            resp = c.post("/v1/buyer-token")
            assert resp.status_code == 201
            sent["tokens"] += 1
            hold = c.post(f"/v1/events/{eid}/holds", json={"ga": {"floor": 1}},
                          headers=auth(resp.json()["buyer_token"]))
            assert hold.status_code == 201, hold.text
            workers.add(worker_of(hold))
            sent["holds"] += 1
        for _ in range(6):
            resp = c.get(f"/v1/events/{eid}", headers=auth(key))
            assert resp.status_code == 200
            workers.add(worker_of(resp))
            sent["organiser"] += 1
        for n in range(3):
            assert c.get(f"/no/such/path/{n}").status_code == 404
            sent["missing"] += 1
    assert len(workers) == 2, f"the requests all went to one worker ({workers}); the test proves nothing"

    after = settled(gateway2)

    def delta(method: str, route: str) -> dict[str, float]:
        a, b = counts(after, method, route), counts(before, method, route)
        return {k: a[k] - b[k] for k in a}

    assert delta("GET", AVAILABILITY) == {"2xx": sent["availability"], "4xx": 0, "5xx": 0}
    assert delta("POST", "/v1/buyer-token")["2xx"] == sent["tokens"]
    assert delta("POST", "/v1/events/{event_id}/holds") == {"2xx": sent["holds"], "4xx": 0, "5xx": 0}
    assert delta("GET", "/v1/events/{event_id}")["2xx"] == sent["organiser"]
    assert delta("GET", "unmatched")["4xx"] == sent["missing"]
    # Raw paths never become labels: the event id and the unknown paths appear in no route label.
    routes = {dict(labels).get("route") for (name, labels) in after if name.startswith(DURATION)}
    assert not any(str(eid) in r.split("/") or "/no/such" in r for r in routes if r), routes
    # The histogram's buckets hold every request: the largest bucket counts them all.
    inf = sample(after, DURATION + "_bucket", method="GET", route=AVAILABILITY, status="2xx", le="+Inf")
    assert inf == sample(after, DURATION + "_count", method="GET", route=AVAILABILITY, status="2xx")
    # Each hold is one Lua call; GA holds run `hold_ga`.
    redis_calls = (sample(after, "flashgate_redis_call_duration_seconds_count", script="hold_ga")
                   - sample(before, "flashgate_redis_call_duration_seconds_count", script="hold_ga"))
    assert redis_calls == sent["holds"]
    # Availability is served from each worker's snapshot: at most the first request per worker loads it.
    local = (sample(after, "flashgate_answered_in_process_total", route=AVAILABILITY)
             - sample(before, "flashgate_answered_in_process_total", route=AVAILABILITY))
    assert sent["availability"] - 2 <= local <= sent["availability"]
    assert 0 <= sample(after, "flashgate_snapshot_age_seconds") < 2.0
    assert sample(after, "flashgate_redis_up") == 1


def test_redis_figures_describe_the_sale(gateway2: Gateway2, database_url: str, settings: Settings) -> None:
    """Queue length and admitted count, the ledger backlog (no ledger worker runs here, so what was sold
    waits in Redis and ages), and the payment breaker."""
    eid, key = new_event(gateway2.url, database_url, sections=0, ga={"floor": 20}, queue=True)
    with fresh(gateway2.url) as c:
        for _ in range(3):
            token = c.post("/v1/buyer-token").json()["buyer_token"]
            assert c.post(f"/v1/events/{eid}/queue", headers=auth(token)).status_code in (200, 201)
    samples = gateway2.scrape()
    labels = {"event": str(eid)}
    org = next(dict(lbl)["organisation"] for (name, lbl) in samples
               if name == "flashgate_queue_length" and dict(lbl).get("event") == str(eid))
    labels["organisation"] = org
    assert sample(samples, "flashgate_queue_length", **labels) + sample(samples, "flashgate_queue_admitted",
                                                                        **labels) == 3
    assert sample(samples, "flashgate_breaker_state", breaker="payments", state="closed") == 1
    assert sample(samples, "flashgate_breaker_state", breaker="payments", state="open") == 0

    door = open_door(gateway2.url, database_url)  # 6 tickets sold in 3 orders; nothing writes them to Postgres
    time.sleep(1.1)
    samples = gateway2.scrape()
    pending = {dict(lbl).get("event"): v for (name, lbl), v in samples.items()
               if name == "flashgate_ledger_pending_entries"}
    assert pending.get(str(door.event_id), 0) >= 3, pending
    lag = {dict(lbl).get("event"): v for (name, lbl), v in samples.items() if name == "flashgate_ledger_lag_seconds"}
    assert lag[str(door.event_id)] >= 1.0
    # Payment pacing as the live workers publish it each second: both workers, each limit at least its minimum.
    assert sample(samples, "flashgate_payments_pacing_limit") >= 2 * settings.payments.limit_min
    assert 0 <= sample(samples, "flashgate_payments_bulkhead_saturation") <= 1


def test_notification_backlog_is_read_from_redis(gateway2: Gateway2, settings: Settings,
                                                 redis_sync: redis.Redis) -> None:
    """A message that failed every attempt and one waiting for its retry show in the figures."""
    prefix = settings.redis_prefix
    dead_id = redis_sync.xadd(notify_key(prefix, "dead"), {"kind": "email", "payload": "{}", "attempt": "5",
                                                         "nid": "n-obs", "last_error": "smtp down"})
    redis_sync.zadd(notify_key(prefix, "retry"), {"n-obs-retry": time.time() + 600})
    try:
        samples = gateway2.scrape()
        assert sample(samples, "flashgate_notify_dead_letters") == redis_sync.xlen(notify_key(prefix, "dead")) >= 1
        assert sample(samples, "flashgate_notify_retry_waiting") == redis_sync.zcard(notify_key(prefix, "retry")) >= 1
    finally:
        redis_sync.zrem(notify_key(prefix, "retry"), "n-obs-retry")
        redis_sync.xdel(notify_key(prefix, "dead"), dead_id)


def test_only_the_most_recent_events_have_a_label_of_their_own(gateway2: Gateway2, database_url: str) -> None:
    """With 2 event labels, the oldest of three new events with a waiting buyer each is added up under
    `other`: the label set stays bounded however many events are on sale."""
    events = [new_event(gateway2.url, database_url, sections=0, ga={"floor": 5}, queue=True)[0] for _ in range(3)]
    with fresh(gateway2.url) as c:
        for eid in events:
            token = c.post("/v1/buyer-token").json()["buyer_token"]
            assert c.post(f"/v1/events/{eid}/queue", headers=auth(token)).status_code in (200, 201)
    samples = gateway2.scrape()
    labelled = {dict(lbl)["event"]: v for (name, lbl), v in samples.items() if name == "flashgate_queue_length"}
    assert str(events[2]) in labelled and str(events[1]) in labelled
    assert str(events[0]) not in labelled
    assert len(labelled) <= EVENT_LABELS + 1 and "other" in labelled, labelled
    others = {dict(lbl)["organisation"] for (name, lbl) in samples
              if name == "flashgate_queue_length" and dict(lbl)["event"] == "other"}
    assert others == {"other"}


def test_scans_are_counted_by_result(gateway2: Gateway2, database_url: str) -> None:
    door = open_door(gateway2.url, database_url)
    device = door.device("north")
    before = settled(gateway2)
    code = door.tickets[0]["code"]
    assert door.scan(device["token"], code)["result"] == "admitted"
    assert door.scan(device["token"], code)["result"] == "duplicate"
    assert door.scan(device["token"], code[:-4] + "AAAA")["result"] == "invalid"
    after = settled(gateway2)
    got = {r: sample(after, "flashgate_scans_total", result=r) - sample(before, "flashgate_scans_total", result=r)
           for r in ("admitted", "duplicate", "invalid")}
    assert got == {"admitted": 1, "duplicate": 1, "invalid": 1}


def test_rate_limit_refusals_are_counted(gateway2: Gateway2, database_url: str) -> None:
    eid, _ = new_event(gateway2.url, database_url, sections=0, ga={"floor": 5}, queue=True)
    before = settled(gateway2)
    refused = 0
    with httpx.Client(base_url=gateway2.url, timeout=10) as c:  # one connection: one worker's limiter
        token = c.post("/v1/buyer-token").json()["buyer_token"]
        queue_token = c.post(f"/v1/events/{eid}/queue", headers=auth(token)).json()["queue_token"]
        for _ in range(30):
            resp = c.get(f"/v1/events/{eid}/queue", headers=auth(queue_token))
            assert resp.status_code in (200, 429)
            refused += resp.status_code == 429
    assert refused > 0
    after = settled(gateway2)
    scope = {"scope": "queue_token"}
    assert (sample(after, "flashgate_rate_limited_total", **scope)
            - sample(before, "flashgate_rate_limited_total", **scope)) == refused


def test_metrics_need_the_token_when_one_is_set(gateway2: Gateway2) -> None:
    assert httpx.get(gateway2.url + "/metrics", timeout=10).status_code == 401
    wrong = httpx.get(gateway2.url + "/metrics", headers=auth("not-the-token"), timeout=10)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    assert "flashgate_http_request_duration_seconds" not in wrong.text


@pytest.mark.anyio
async def test_without_a_token_only_loopback_may_scrape(app: Any) -> None:
    for client, status in ((("10.1.2.3", 40000), 403), (("127.0.0.1", 40000), 200)):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            resp = await c.get("/metrics")
        assert resp.status_code == status, resp.text
    assert "flashgate_redis_up 1.0" in resp.text


def test_each_run_starts_from_an_empty_metrics_directory(settings: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Files an earlier run left (here an unreadable one) are removed at start; the directory goes at stop."""
    port = free_port()
    monkeypatch.setattr(live, "free_port", lambda: port)
    run_dir = settings.data_dir / "metrics" / f"gateway-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "counter_1.db").write_bytes(b"left by an earlier run")
    with live.start_gateway(settings, tmp_path, workers=2) as url:
        assert not (run_dir / "counter_1.db").exists()
        resp = httpx.get(url + "/metrics", timeout=10)
        assert resp.status_code == 200, resp.text
        assert any(run_dir.glob("*.db"))
    assert not run_dir.exists()


@pytest.mark.anyio
async def test_redis_down_shows_as_redis_up_0(settings: Settings) -> None:
    """With Redis unreachable the scrape still answers: `flashgate_redis_up 0`, the Redis figures left out."""
    from gateway.api.app import create_app

    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout_s": 0.3})
    edge = create_app(down)
    async with edge.fastapi.router.lifespan_context(edge.fastapi):
        transport = httpx.ASGITransport(app=edge, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert "flashgate_redis_up 0.0" in resp.text
    assert "flashgate_queue_length" not in resp.text and "flashgate_breaker_state" not in resp.text
    assert "flashgate_http_request_duration_seconds_bucket" in resp.text  # the in-process figures are there


def test_the_command_line_does_not_import_prometheus_client_before_serve_sets_it_up() -> None:
    """`flashgate serve` sets PROMETHEUS_MULTIPROC_DIR before its workers import prometheus-client, which
    reads it once, at import. Building the command line must not import it first (a load-test module
    that did left every worker counting in memory: `/metrics` showed zeros)."""
    import subprocess
    import sys

    probe = ("import sys; from gateway.cli import build_parser; build_parser(); "
             "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
