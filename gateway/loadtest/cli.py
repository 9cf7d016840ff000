"""`flashgate loadtest`: the command line of the load-test runner (gateway/loadtest/runner.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _knob(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier() or not name.isupper():
        raise argparse.ArgumentTypeError(f"expected KNOB=value with an upper-case knob name, got {text!r}")
    return name, value


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gateway.loadtest.runner import SCENARIOS

    listing = "\n".join(f"  {s.name:<20} {s.about}" for s in SCENARIOS.values())
    p = sub.add_parser(
        "loadtest", help="run a k6 scenario against a fresh event and give a verdict (docs/loadtesting.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Seed a fresh event, run a k6 scenario from loadtest/, audit the event and print a verdict "
                    "table; writes result.json and report.html under var/loadtest/. Exit status 1 when the "
                    "verdict fails. Without --target it starts a platform of its own (private Redis and "
                    "Postgres, 2 gateway workers, the payment simulator) and stops it afterwards.\n\n"
                    f"scenarios:\n{listing}")
    p.add_argument("scenario", choices=sorted(SCENARIOS), metavar="SCENARIO")
    p.add_argument("--vus", type=_positive(int), default=500, help="virtual users (default 500)")
    p.add_argument("--duration", type=_positive(int), default=60, help="seconds the load lasts at most (default 60)")
    p.add_argument("--ramp", type=int, default=10, help="seconds over which buyers arrive (default 10)")
    p.add_argument("--capacity", type=_positive(int), default=1000, help="tickets on sale (default 1,000)")
    p.add_argument("--seated-pct", type=float, default=50.0, help="share of them seated (default 50)")
    p.add_argument("--rate", type=_positive(float), default=300.0, help="waiting-room admission rate per second")
    p.add_argument("--limit", type=_positive(int), default=8, help="per-buyer ticket limit (default 8)")
    p.add_argument("--hold-ttl", type=int, default=20, help="hold time in seconds (default 20, so that late payers and expiries happen within a run; at least 5)")
    p.add_argument("--tickets", type=_positive(int), default=10_000, help="door: tickets bought before the rush")
    p.add_argument("--devices", type=_positive(int), default=40, help="door: scanning devices (default 40)")
    p.add_argument("--sim", default="{}", help="payment simulator behaviour, JSON for its PUT /_config, e.g. "
                   "'{\"latency_ms\": 150, \"decline_rate\": 0.05, \"failure_rate\": 0.02}'")
    p.add_argument("--set", dest="knobs", type=_knob, action="append", default=[], metavar="KNOB=VALUE",
                   help="a scenario knob (loadtest/README.md), e.g. --set PICK_PCT=30; repeatable")
    p.add_argument("--target", help="base URL of a running gateway instead of a platform of its own")
    p.add_argument("--api-key", help="with --target: an organiser key with the admin role (or FLASHGATE_API_KEY)")
    p.add_argument("--payments-url", help="with --target: the payment simulator's URL, to configure it")
    p.add_argument("--workers", type=_positive(int), default=2, help="gateway workers of the private platform")
    p.add_argument("--out", type=Path, help="directory for the run's files (default var/loadtest)")
    p.add_argument("--keep-platform", action="store_true", help="keep the private platform's data directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args: argparse.Namespace) -> int:
    from gateway.loadtest.runner import Options, run
    from gateway.loadtest.verdict import format_table

    try:
        sim = json.loads(args.sim)
        if not isinstance(sim, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        print(f"flashgate loadtest: --sim must be a JSON object ({exc})", file=sys.stderr)
        return 2
    if args.hold_ttl < 5:
        print("flashgate loadtest: --hold-ttl must be at least 5 seconds", file=sys.stderr)
        return 2
    opts = Options(scenario=args.scenario, vus=args.vus, duration_s=args.duration, ramp_s=args.ramp,
                   capacity=args.capacity, seated_pct=args.seated_pct, admission_rate=args.rate,
                   per_buyer_limit=args.limit, hold_ttl_s=args.hold_ttl, tickets=args.tickets, devices=args.devices,
                   sim=sim, knobs=dict(args.knobs), target=args.target, api_key=args.api_key,
                   payments_url=args.payments_url, workers=args.workers, out_dir=args.out,
                   keep_platform=args.keep_platform)
    result = run(opts, out=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("summary", "timeline")}, default=str))
    else:
        print()
        print(format_table(result))
        print(f"\nresult: {result['run_dir']}/result.json" + (f"\nreport: {result['report']}" if result.get("report")
                                                            else ""))
    return 0 if result["verdict"]["pass"] else 1
