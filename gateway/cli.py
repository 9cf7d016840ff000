"""The `flashgate` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.core.config import Settings
from gateway.core.resources import IMPORT_ROOT


def _settings() -> Settings:
    return Settings()


def _stack_file(settings: Settings) -> Path:
    return settings.data_dir / "stack.json"


def _resolve_urls(settings: Settings) -> Settings:
    """Fill REDIS_URL / DATABASE_URL from a running `flashgate up` when they are not set."""
    if settings.redis_url and settings.database_url:
        return settings
    path = _stack_file(settings)
    if path.exists():
        info = json.loads(path.read_text())
        return settings.model_copy(update={"redis_url": settings.redis_url or info["redis_url"],
                                           "database_url": settings.database_url or info["database_url"]})
    missing = [n for n, v in (("REDIS_URL", settings.redis_url), ("DATABASE_URL", settings.database_url)) if not v]
    sys.exit(f"flashgate: {' and '.join(missing)} not set and no running stack found ({path}); "
             "start one with `flashgate up` or set the variables")


def cmd_up(args: argparse.Namespace) -> int:
    from gateway.stack.supervisor import run_up

    return run_up(_settings(), port=args.port, workers=args.workers, demo=args.demo)


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.db.migrate import ensure_database, migrate

    settings = _resolve_urls(_settings())
    assert settings.database_url
    asyncio.run(ensure_database(settings.database_url))
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(f'{m.version:04d}_{m.name}' for m in applied) or '-'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian

    settings = _resolve_urls(_settings())
    os.environ["REDIS_URL"] = settings.redis_url or ""
    os.environ["DATABASE_URL"] = settings.database_url or ""
    # Every worker writes its metrics under one directory of this run, emptied now (an earlier run's figures
    # must not count): `/metrics` on any worker adds them all up (gateway/core/metrics.py). Set before the
    # workers are forked and import prometheus-client, which reads it then.
    metrics_dir = settings.data_dir / "metrics" / f"gateway-{args.port}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    try:
        metrics_dir.mkdir(parents=True)
    except OSError:  # a read-only data directory: a private temporary one
        metrics_dir = Path(tempfile.mkdtemp(prefix="flashgate-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # granian only puts working_dir first on the workers' sys.path (no chdir): the directory this `gateway`
    # was imported from (the checkout, or site-packages when installed), so workers import the same copy.
    server = Granian("gateway.api.app:app_factory", factory=True, interface="asgi", address=args.host,
                     port=args.port, workers=args.workers, loop="uvloop", log_access=False,
                     backlog=4096, working_dir=IMPORT_ROOT, respawn_failed_workers=True,
                     workers_kill_timeout=settings.worker_stop_timeout_s)
    try:
        server.serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from gateway.core import logs
    from gateway.core.runtime import Runtime
    from gateway.workers import WORKERS, load

    if args.name not in WORKERS:
        print(f"flashgate: unknown worker {args.name!r}; known: {', '.join(sorted(WORKERS)) or 'none'}",
              file=sys.stderr)
        return 2
    settings = _resolve_urls(_settings())
    logs.configure(settings.log_level)

    async def main() -> None:
        runtime = Runtime.from_settings(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await load(args.name)(runtime, stop)
        finally:
            await runtime.close()

    asyncio.run(main())
    return 0


def cmd_org_create(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.organisers.orgs import create_organisation

    settings = _resolve_urls(_settings())

    async def main():
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await create_organisation(conn, name=args.name)
        finally:
            await conn.close()

    org = asyncio.run(main())
    if args.json:
        print(json.dumps({"organisation_id": org.id, "name": org.name, "api_key": org.api_key}))
    else:
        print(f"organisation {org.id} ({org.name}) created\nAPI key (shown once): {org.api_key}")
    return 0


def cmd_org_key(args: argparse.Namespace) -> int:
    """`flashgate org key create|list|revoke`: the same service functions as the API."""
    from gateway.core.errors import DomainError
    from gateway.core.runtime import Runtime
    from gateway.organisers import orgs

    settings = _resolve_urls(_settings())

    async def main():
        runtime = Runtime.from_settings(settings)
        try:
            pool = await runtime.pg()
            if args.key_command == "create":
                return await orgs.create_key(pool, organisation_id=args.org, name=args.name, role=args.role)
            if args.key_command == "list":
                return await orgs.list_keys(pool, organisation_id=args.org)
            view = await orgs.revoke_key(pool, organisation_id=args.org, key_id=args.key_id)
            await orgs.announce_revocation(runtime)
            return view
        finally:
            await runtime.close()

    try:
        result = asyncio.run(main())
    except DomainError as err:
        print(f"flashgate: {err.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    elif args.key_command == "create":
        print(f"key {result['id']} ({result['name']}, {result['role']}) created\nAPI key (shown once): {result['key']}")
    elif args.key_command == "list":
        for k in result:
            state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
            print(f"{k['id']:>6}  {k['role']:<6} {k['prefix']}...  {k['name']}  ({state})")
    else:
        print(f"key {result['id']} ({result['name']}) revoked at {result['revoked_at']}")
    return 0


def cmd_event_import(args: argparse.Namespace) -> int:
    """`flashgate event import FILE`: a CSV seat map into a draft event, or a new event from a body."""
    from pydantic import ValidationError

    from gateway.core.errors import DomainError
    from gateway.core.runtime import Runtime
    from gateway.organisers import events, seatmap_csv
    from gateway.organisers.event_spec import EventSpec

    if args.spec and args.org is None:
        print("flashgate: --spec needs --org (the organisation that owns the new event)", file=sys.stderr)
        return 2
    settings = _resolve_urls(_settings())
    try:
        text = seatmap_csv.decode(Path(args.file).read_bytes())
        spec = None
        if args.spec:
            body = json.loads(Path(args.spec).read_text())
            spec = EventSpec.model_validate({**body, "seat_map_csv": text})
    except OSError as exc:
        print(f"flashgate: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except DomainError as err:
        print(f"flashgate: {args.file}: {err.message}", file=sys.stderr)
        return 1
    except (ValueError, ValidationError) as exc:
        print(f"flashgate: {args.spec}: {exc}", file=sys.stderr)
        return 1

    async def main():
        runtime = Runtime.from_settings(settings)
        try:
            admin = events.EventAdmin(runtime)
            if spec is not None:
                return await admin.create(args.org, spec)
            owner = await (await runtime.pg()).fetchval("SELECT organisation_id FROM events WHERE id = $1",
                                                         args.event)
            if owner is None:
                raise events.not_found(args.event)
            return await admin.import_seat_map(owner, args.event, text)
        finally:
            await runtime.close()

    try:
        view = asyncio.run(main())
    except DomainError as err:
        print(f"flashgate: {err.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view))
    else:
        seats = sum(s["seats"] for s in view["sections"])
        print(f"event {view['id']} ({view['name']}): {len(view['sections'])} sections, {seats} seats")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.organisers.demo import create_demo

    settings = _resolve_urls(_settings())
    result = asyncio.run(create_demo(settings, gateway_url=args.gateway_url))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def cmd_verify_shuffle(args: argparse.Namespace) -> int:
    from gateway.waiting_room import verify

    argv = [args.event_url] + (["--arrival", str(args.arrival)] if args.arrival is not None else [])
    return verify.main(argv)


def cmd_audit(args: argparse.Namespace) -> int:
    import asyncpg

    from gateway.core.runtime import redis_client
    from gateway.organisers.audit import audit_event, format_report

    settings = _resolve_urls(_settings())

    async def main():
        redis = redis_client(settings.redis_url)
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            return await audit_event(redis=redis, pool=pool, prefix=settings.redis_prefix, event_id=args.event)
        finally:
            await pool.close()
            await redis.aclose()

    report = asyncio.run(main())
    print(json.dumps(report.as_dict()) if args.json else format_report(report))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashgate", description="Flash-sale ticketing and door scanning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start the whole local platform (Redis, Postgres, gateway, workers)",
                       description="Start Redis and Postgres (private, data under var/, unless REDIS_URL / "
                       "DATABASE_URL are set), apply migrations, start the gateway and every background worker, "
                       "write var/stack.json and print the URLs. Ctrl-C stops everything.")
    p.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    p.add_argument("--workers", type=int, default=2, help="granian worker processes (default 2)")
    p.add_argument("--demo", action="store_true", help="create (or reuse) the demo organisation and event")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("migrate", help="apply pending SQL migrations (safe to run twice or concurrently)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("serve", help="run the gateway with granian")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run one background worker")
    p.add_argument("name", help="worker name")
    p.set_defaults(func=cmd_worker)

    org = sub.add_parser("org", help="organisations").add_subparsers(dest="org_command", required=True,
                                                                      metavar="ACTION")
    p = org.add_parser("create", help="create an organisation and print its API key (shown once)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_org_create)

    keys = org.add_parser("key", help="API keys of an organisation (name and role each)").add_subparsers(
        dest="key_command", required=True, metavar="ACTION")
    p = keys.add_parser("create", help="create a key and print it (shown once)")
    p.add_argument("org", type=int, help="organisation id")
    p.add_argument("--name", required=True, help="what the key is for (e.g. 'box office laptop')")
    p.add_argument("--role", required=True, choices=("admin", "sales", "door"),
                   help="admin: everything; sales: figures, orders, refunds; door: scanning devices only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_org_key)
    p = keys.add_parser("list", help="list the keys (never the keys themselves)")
    p.add_argument("org", type=int, help="organisation id")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.set_defaults(func=cmd_org_key)
    p = keys.add_parser("revoke", help="revoke a key (refused by every gateway worker at once)")
    p.add_argument("org", type=int, help="organisation id")
    p.add_argument("key_id", type=int, help="key id (from `flashgate org key list`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_org_key)

    ev = sub.add_parser("event", help="events").add_subparsers(dest="event_command", required=True,
                                                              metavar="ACTION")
    p = ev.add_parser("import", help="import a seat map from CSV (section,row,seat,tier)",
                      description="Read a CSV seat map (first line: section,row,seat,tier; then one line per "
                      "seat) and either replace the seat map of a draft event (--event) or create a new event "
                      "from an event body without sections (--spec, --org). Errors name the line and column.")
    p.add_argument("file", help="the CSV file")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--event", type=int, help="replace the seat map of this draft event")
    target.add_argument("--spec", help="create an event from this JSON event body plus the CSV seat map")
    p.add_argument("--org", type=int, help="organisation id (with --spec)")
    p.add_argument("--json", action="store_true", help="print the event as one JSON object")
    p.set_defaults(func=cmd_event_import)

    p = sub.add_parser("audit", help="check every invariant of an event across Redis and Postgres",
                       description="Check every invariant of one event across Redis and Postgres and print a "
                       "verdict; exit status 1 when anything is violated.")
    p.add_argument("event", type=int, help="event id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("verify-shuffle", help="check a waiting room's published order and admission log "
                       "(anyone can: docs/verify_shuffle.py needs only the standard library)")
    p.add_argument("event_url", help="e.g. https://tickets.example/v1/events/12 or https://tickets.example/buy/12")
    p.add_argument("--arrival", type=int, help="your arrival number (in your poll answer): prints your place")
    p.set_defaults(func=cmd_verify_shuffle)

    from gateway.loadtest.cli import add_parser as add_loadtest

    add_loadtest(sub)

    p = sub.add_parser("demo", help="create (or reuse) a demo organisation and event")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--gateway-url", default=None, help="base URL used in the printed links")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:  # settings refused (e.g. a missing production secret)
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        print(f"flashgate: configuration refused: {messages}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
