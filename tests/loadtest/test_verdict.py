"""The verdict of a load test fails for each reason the docs give (docs/loadtesting.md), and only then."""

from __future__ import annotations

import copy
import re
from typing import Any

from gateway.loadtest.verdict import build_verdict, format_table, inversions


def clean_result() -> dict[str, Any]:
    summary = {"metrics": {
        "http_reqs": {"count": 1000, "rate": 100},
        "purchases": {"count": 90, "rate": 9},
        "server_errors": {"count": 0, "rate": 0, "thresholds": {"count==0": False}},
        "http_req_duration{step:hold}": {"med": 3.0, "p(95)": 9.0, "p(99)": 20.0, "max": 40.0,
                                         "thresholds": {"max>=0": False}},
        "http_reqs{step:hold}": {"count": 120, "thresholds": {"count>=0": False}},
        "eta_error": {"med": -0.25, "p(95)": 0.1},
    }}
    return {"scenario": "flash_sale", "about": "a spike", "target": "http://127.0.0.1:1", "private_platform": True,
            "k6": {"exit_code": 0, "stopped_at_bound": False, "elapsed_s": 10.0}, "summary": summary,
            "audits": {"7": {"verdict": "pass", "checks": [{"name": "invariant 1: no seat sold twice", "ok": True}]}},
            "final_stats": {"totals": {"capacity": 100, "sold": 100, "held": 0},
                            "revenue": {"orders": 90}},
            "steps": ["hold", "checkout"]}


def test_a_clean_run_passes_with_its_figures() -> None:
    result = clean_result()
    v = build_verdict(result, [100, 100, None, 101])
    assert v["pass"], v["failures"]
    assert v["oversell"] == 0 and v["lost_sales"] == 0 and v["fairness"]["inversions"] == 0
    assert v["steps"]["hold"] == {"p50": 3.0, "p95": 9.0, "p99": 20.0, "max": 40.0, "count": 120}
    assert "checkout" not in v["steps"]  # no requests of that step: no line
    assert v["throughput"]["purchases_per_s"] == 9.0
    result["verdict"] = v
    table = format_table(result)
    assert re.search(r"^VERDICT\s+PASS$", table, re.M)
    assert re.search(r"^fairness: ETA error p50 / p95\s+-25 % / \+10 %", table, re.M), table
    assert re.search(r"^hold ms p50/p95/p99/max\s+3.0 / 9.0 / 20.0 / 40.0  \(120 requests\)$", table, re.M)


def failing(mutate) -> dict[str, Any]:
    result = copy.deepcopy(clean_result())
    admitted = mutate(result)
    return build_verdict(result, admitted if isinstance(admitted, list) else None)


def test_each_reason_fails_the_verdict() -> None:
    def audit_fails(r):
        r["audits"]["7"]["checks"].append({"name": "history: GA floor never over capacity", "ok": False,
                                           "detail": "101 > 100 at 1-0"})
    v = failing(audit_fails)
    assert not v["pass"] and any("history: GA floor" in f for f in v["failures"])
    assert any(f.startswith("oversell") for f in v["failures"])

    def oversold(r):
        r["final_stats"]["totals"]["sold"] = 101
    v = failing(oversold)
    assert not v["pass"] and v["oversell"] == 1

    def lost(r):
        r["final_stats"]["revenue"]["orders"] = 88
    v = failing(lost)
    assert not v["pass"] and v["lost_sales"] == 2

    v = failing(lambda r: [100, 102, 101])
    assert not v["pass"] and v["fairness"]["inversions"] == 1

    def crossed(r):
        r["summary"]["metrics"]["server_errors"]["thresholds"]["count==0"] = True
    v = failing(crossed)
    assert v["failures"] == ["threshold crossed: server_errors: count==0"]

    def overran(r):
        r["k6"]["stopped_at_bound"] = True
    assert not failing(overran)["pass"]

    def crashed(r):
        r["k6"]["exit_code"] = 107
    assert not failing(crashed)["pass"]

    def no_summary(r):
        r["summary"] = {}
    assert not failing(no_summary)["pass"]


def test_inversions_count_places_admitted_before_an_earlier_one() -> None:
    assert inversions(None) is None
    assert inversions([]) == 0
    assert inversions([5, None, 5, 6, 6]) == 0
    assert inversions([5, 7, 6, 7, 4]) == 2  # 6 after 7, 4 after 7
