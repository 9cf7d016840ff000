"""The verdict of a load test: figures a load tester reads, and the checks that make it fail.

It fails when any of these holds (docs/loadtesting.md):
- the audit of an event failed (final state across Redis and Postgres, or its history: a seat, a
  GA type or a buyer's limit over capacity at any instant);
- oversell: more sold than the capacity;
- lost sales: a buyer told "paid" whose order is not there;
- fairness: a place admitted before an earlier place (the public admission log);
- a k6 threshold was crossed (server errors, latency percentiles per step, error rates);
- k6 did not finish within its time bound.
"""

from __future__ import annotations

from typing import Any

_BUILTIN = {"http_reqs", "iterations", "data_sent", "data_received", "vus", "vus_max", "checks",
            "http_req_failed", "dropped_iterations"}
_NOOP = ("max>=0", "count>=0")  # the runner's per-step thresholds, there only to make k6 report each step


def metric(summary: dict[str, Any], name: str, stat: str) -> float | None:
    m = (summary.get("metrics") or {}).get(name)
    if not m:
        return None
    value = m.get(stat, (m.get("values") or {}).get(stat))
    return float(value) if value is not None else None


def crossed_thresholds(summary: dict[str, Any]) -> list[str]:
    out = []
    for name, m in (summary.get("metrics") or {}).items():
        for expr, failed in (m.get("thresholds") or {}).items():
            if failed and expr not in _NOOP:
                out.append(f"{name}: {expr}")
    return sorted(out)


def step_latencies(summary: dict[str, Any], steps: list[str]) -> dict[str, dict[str, float | None]]:
    out = {}
    for step in steps:
        name = f"http_req_duration{{step:{step}}}"
        count = metric(summary, f"http_reqs{{step:{step}}}", "count")
        if (summary.get("metrics") or {}).get(name):
            out[step] = {"p50": metric(summary, name, "med"), "p95": metric(summary, name, "p(95)"),
                         "p99": metric(summary, name, "p(99)"), "max": metric(summary, name, "max"), "count": count}
    return out


def counters(summary: dict[str, Any]) -> dict[str, float]:
    """The scenario's own counters (purchases, refusals by kind, scans by result, errors...)."""
    out = {}
    for name, m in (summary.get("metrics") or {}).items():
        if "{" in name or name in _BUILTIN or "count" not in m:
            continue
        out[name] = float(m["count"])
    return dict(sorted(out.items()))


def inversions(admitted: list[int | None] | None) -> int | None:
    """Places admitted (by the public log, to the second) before an earlier place was."""
    if admitted is None:
        return None
    bad, latest = 0, None
    for second in admitted:
        if second is None:
            continue
        if latest is not None and second < latest:
            bad += 1
        latest = second if latest is None else max(latest, second)
    return bad


def _eta_error(summary: dict[str, Any]) -> dict[str, float | None] | None:
    for name in (summary.get("metrics") or {}):
        if "eta" in name and "{" not in name:
            return {"metric": name, "p50": metric(summary, name, "med"), "p95": metric(summary, name, "p(95)")}
    return None


def build_verdict(result: dict[str, Any], admitted: list[int | None] | None) -> dict[str, Any]:
    summary = result.get("summary") or {}
    elapsed = max(0.1, float(result["k6"]["elapsed_s"]))
    failures: list[str] = []
    c = counters(summary)
    stats = result.get("final_stats") or {}
    totals = stats.get("totals") or {}
    capacity = totals.get("capacity")
    sold = totals.get("sold")

    audits = result.get("audits") or {}
    failed_checks = [f"event {eid}: {ch['name']}" + (f" ({ch['detail']})" if ch.get("detail") else "")
                     for eid, a in audits.items() for ch in a.get("checks", []) if not ch.get("ok")]
    failures += [f"audit: {f}" for f in failed_checks]

    oversell = None
    if capacity is not None and sold is not None:
        oversell = max(0, int(sold) - int(capacity))
        over_checks = [f for f in failed_checks if "invariant 1" in f or "over capacity" in f or "history" in f]
        if oversell or over_checks:
            failures.append(f"oversell: {oversell} over capacity, {len(over_checks)} audit check(s) on capacity failed")

    lost = None
    purchases = c.get("purchases")
    orders = (stats.get("revenue") or {}).get("orders")
    if purchases is not None and orders is not None:
        lost = max(0, int(purchases) - int(orders))
        if lost:
            failures.append(f"lost sales: {lost} buyer(s) told paid without their order")

    inv = inversions(admitted)
    if inv:
        failures.append(f"fairness: {inv} place(s) admitted before an earlier place")

    crossed = crossed_thresholds(summary)
    failures += [f"threshold crossed: {t}" for t in crossed]
    if result["k6"].get("stopped_at_bound"):
        failures.append("k6 did not finish within its time bound and was stopped")
    elif result["k6"].get("exit_code") not in (0, 99):  # 99: thresholds crossed (listed above)
        failures.append(f"k6 exited with {result['k6'].get('exit_code')} (see k6.log)")
    if not summary:
        failures.append("k6 wrote no summary (see k6.log)")

    reqs = metric(summary, "http_reqs", "count")
    scans = sum(v for k, v in c.items() if k.startswith("scan_") and k != "scan_server_ms")
    return {
        "pass": not failures,
        "failures": failures,
        "throughput": {
            "requests": reqs, "requests_per_s": round(reqs / elapsed, 1) if reqs else None,
            "purchases": purchases, "purchases_per_s": round(purchases / elapsed, 1) if purchases else None,
            "scans": scans or None, "scans_per_s": round(scans / elapsed, 1) if scans else None,
        },
        "steps": step_latencies(summary, result.get("steps") or []),
        "counters": c,
        "sold": sold, "capacity": capacity, "oversell": oversell, "lost_sales": lost,
        "fairness": {"inversions": inv, "places_logged": len(admitted) if admitted is not None else None,
                     "eta_error": _eta_error(summary)},
        "thresholds_crossed": crossed,
        "audit": {eid: a.get("verdict") for eid, a in audits.items()},
    }


def format_table(result: dict[str, Any]) -> str:
    v = result["verdict"]
    rows: list[tuple[str, str]] = [("scenario", f"{result['scenario']} ({result['about']})"),
                                   ("target", result["target"] + ("  (private platform)" if result["private_platform"]
                                                                  else "")),
                                   ("k6 run", f"{result['k6']['elapsed_s']} s, exit {result['k6']['exit_code']}")]
    t = v["throughput"]
    if t["requests"]:
        rows.append(("requests", f"{t['requests']:,.0f} ({t['requests_per_s']:,.1f}/s)"))
    if t["purchases"] is not None:
        rows.append(("purchases", f"{t['purchases']:,.0f} ({t['purchases_per_s'] or 0:,.1f}/s)"))
    if t["scans"]:
        rows.append(("scans", f"{t['scans']:,.0f} ({t['scans_per_s']:,.1f}/s)"))
    for step, s in v["steps"].items():
        rows.append((f"{step} ms p50/p95/p99/max", " / ".join(f"{s[k]:.1f}" if s[k] is not None else "-"
                                                             for k in ("p50", "p95", "p99", "max"))
                     + (f"  ({s['count']:,.0f} requests)" if s.get("count") else "")))
    if v["capacity"] is not None:
        rows.append(("sold / capacity", f"{v['sold']:,} / {v['capacity']:,}"
                     + ("  SOLD OUT" if v["sold"] is not None and v["sold"] >= v["capacity"] else "")))
    rows.append(("oversell (must be 0)", "-" if v["oversell"] is None else str(v["oversell"])))
    rows.append(("lost sales (must be 0)", "-" if v["lost_sales"] is None else str(v["lost_sales"])))
    f = v["fairness"]
    if f["inversions"] is not None:
        rows.append(("fairness: out-of-order admissions (must be 0)",
                     f"{f['inversions']} of {f['places_logged']:,} places"))
    if f["eta_error"]:
        e = f["eta_error"]
        pct = (lambda x: "-" if x is None else f"{x * 100:+.0f} %")
        rows.append(("fairness: ETA error p50 / p95", f"{pct(e['p50'])} / {pct(e['p95'])}  (waited vs ETA shown)"))
    for name, count in v["counters"].items():
        rows.append((name, f"{count:,.0f}"))
    rows.append(("audit", ", ".join(f"event {k}: {a}" for k, a in v["audit"].items()) or "-"))
    rows.append(("VERDICT", "PASS" if v["pass"] else "FAIL"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"  - {why}" for why in v["failures"]]
    return "\n".join(lines)
