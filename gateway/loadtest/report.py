"""The HTML report of a load test: the verdict, the figures and plots drawn server-side with
matplotlib (inline SVG: one self-contained file, nothing fetched when it is opened)."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def timeline_plot(samples: list[dict[str, Any]], capacity: int | None) -> str | None:
    if not samples:
        return None
    t = [s["t"] for s in samples]
    series = [(key, label) for key, label in (("sold", "sold"), ("held", "held"), ("queue_length", "waiting in queue"),
                                              ("admitted", "admitted"), ("scans_admitted", "scans admitted"),
                                              ("scans_duplicate", "duplicates caught"))
              if any(s.get(key) is not None for s in samples)]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for key, label in series:
        ax.plot(t, [s.get(key) for s in samples], label=label, linewidth=1.6)
    if capacity and any(k == "sold" for k, _ in series):
        ax.axhline(capacity, color="grey", linestyle="--", linewidth=1, label="capacity")
    ax.set_xlabel("seconds since k6 started")
    ax.set_ylabel("count")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title("the sale as the organiser's figures showed it, once a second")
    return _svg(fig)


def rate_plot(samples: list[dict[str, Any]]) -> str | None:
    pairs = [(key, label) for key, label in (("sold", "tickets sold / s"), ("scans_admitted", "scans admitted / s"))
             if sum(1 for s in samples if s.get(key) is not None) >= 2]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for key, label in pairs:
        pts = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
        xs = [b[0] for b in pts[1:]]
        ys = [(b[1] - a[1]) / max(0.1, b[0] - a[0]) for a, b in zip(pts, pts[1:])]
        ax.plot(xs, ys, label=label, linewidth=1.4)
    ax.set_xlabel("seconds since k6 started")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title("throughput, per second")
    return _svg(fig)


def latency_plot(steps: dict[str, dict[str, float | None]]) -> str | None:
    steps = {k: v for k, v in steps.items() if v.get("p50") is not None}
    if not steps:
        return None
    names = list(steps)
    fig, ax = plt.subplots(figsize=(9, 3.0))
    width = 0.27
    for i, (stat, label) in enumerate((("p50", "p50"), ("p95", "p95"), ("p99", "p99"))):
        ax.bar([x + (i - 1) * width for x in range(len(names))], [steps[n][stat] or 0 for n in names], width,
               label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("request latency per step, as the virtual users measured it")
    return _svg(fig)


def _table(rows: list[tuple[str, Any]], cls: str = "") -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def render(result: dict[str, Any]) -> str:
    v = result["verdict"]
    verdict = "PASS" if v["pass"] else "FAIL"
    t = v["throughput"]
    headline = [("scenario", f"{result['scenario']}: {result['about']}"), ("target", result["target"]),
                ("started", result["started_at"]), ("k6", f"{result['k6']['elapsed_s']} s, exit {result['k6']['exit_code']}"),
                ("requests", f"{t['requests'] or 0:,.0f} ({t['requests_per_s'] or 0:,.1f}/s)")]
    if t["purchases"] is not None:
        headline.append(("purchases", f"{t['purchases']:,.0f} ({t['purchases_per_s'] or 0:,.1f}/s)"))
    if t["scans"]:
        headline.append(("scans", f"{t['scans']:,.0f} ({t['scans_per_s'] or 0:,.1f}/s)"))
    if v["capacity"] is not None:
        headline.append(("sold / capacity", f"{v['sold']:,} / {v['capacity']:,}"))
    headline += [("oversell", v["oversell"] if v["oversell"] is not None else "-"),
                 ("lost sales", v["lost_sales"] if v["lost_sales"] is not None else "-")]
    if v["fairness"]["inversions"] is not None:
        headline.append(("out-of-order admissions", v["fairness"]["inversions"]))
    if v["fairness"]["eta_error"]:
        e = v["fairness"]["eta_error"]
        pct = (lambda x: "-" if x is None else f"{x * 100:+.0f} %")
        headline.append(("ETA error p50 / p95 (waited vs ETA shown)", f"{pct(e['p50'])} / {pct(e['p95'])}"))
    steps = [(f"{name}", " / ".join(f"{s[k]:.1f}" if s[k] is not None else "-" for k in ("p50", "p95", "p99", "max"))
              + (f"  ({s['count']:,.0f})" if s.get("count") else "")) for name, s in v["steps"].items()]
    plots = [p for p in (timeline_plot(result.get("timeline") or [], v["capacity"]),
                         rate_plot(result.get("timeline") or []), latency_plot(v["steps"])) if p]
    audits = "".join(
        f"<h3>audit of event {html.escape(eid)}: {html.escape(str(a.get('verdict')))}</h3>"
        + _table([(("ok  " if c["ok"] else "FAIL ") + c["name"], c.get("detail") or "") for c in a.get("checks", [])],
                 "checks")
        for eid, a in (result.get("audits") or {}).items())
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in v["failures"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Flashgate load test: {html.escape(result['scenario'])} {verdict}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; color: #1d2330; }}
.verdict {{ font-size: 1.6rem; font-weight: 700; padding: .4rem .8rem; border-radius: .4rem; display: inline-block; }}
.pass {{ background: #d8f3dc; color: #1b4332; }} .fail {{ background: #ffd6d6; color: #7a0010; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.2rem; }} th, td {{ text-align: left; padding: .2rem .8rem .2rem 0;
vertical-align: top; }} th {{ font-weight: 600; }} table.checks th {{ font-weight: 400; font-family: monospace; }}
svg {{ max-width: 100%; height: auto; display: block; margin: .6rem 0; }}
</style></head><body>
<h1>Load test: {html.escape(result['scenario'])}</h1>
<p class="verdict {'pass' if v['pass'] else 'fail'}">{verdict}</p>
{f'<ul>{failures}</ul>' if failures else ''}
<h2>Figures</h2>{_table(headline)}
<h2>Latency per step (ms: p50 / p95 / p99 / max)</h2>{_table(steps)}
<h2>Plots</h2>{''.join(plots) or '<p>no samples</p>'}
<h2>Counters</h2>{_table([(k, f'{c:,.0f}') for k, c in v['counters'].items()])}
<h2>Audit</h2>{audits or '<p>no audit</p>'}
<h2>Set-up</h2>{_table([(k, json.dumps(x) if isinstance(x, (dict, list)) else x) for k, x in result['options'].items()])}
{_table([('simulator', json.dumps(result.get('simulator')))])}
</body></html>
"""


def write_report(result: dict[str, Any], path: Path) -> None:
    path.write_text(render(result))
