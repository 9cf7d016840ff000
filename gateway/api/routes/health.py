"""Ops endpoints: liveness and readiness.

Ready means able to sell: Redis answers, the scripts are loaded, and this gateway's
secret is the one the other gateways of the same Redis prefix use (several hosts:
gateway/core/shared_secret.py). Postgres (and its read replica, when set) and
the payment provider are reported in the body (`degraded`), never a reason for
503: sales go on while Postgres is down, and a load balancer must not take every
gateway out of service exactly then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hotpath
from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import GatewayDep
from gateway.api.responses import OrjsonResponse
from gateway.core.shared_secret import check_shared_secret
from gateway.db.replica import ReplicaState

router = APIRouter(tags=["ops"])
CHECK_TIMEOUT_S = 1.0


@router.get("/healthz")
async def healthz() -> Response:
    return OrjsonResponse({"status": "alive"})


async def _check(probe: Callable[[], Awaitable[Any]], timeout: float = CHECK_TIMEOUT_S) -> str | None:
    try:
        await asyncio.wait_for(probe(), timeout)
        return None
    except Exception as exc:  # the reason goes to the operator
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@router.get("/readyz")
async def readyz(gw: GatewayDep) -> Response:
    runtime = gw.runtime
    scripts = runtime.scripts

    async def scripts_loaded() -> None:
        names = list(scripts.scripts)
        exists = await runtime.redis.script_exists(*(scripts[n].sha for n in names))
        missing = [n for n, ok in zip(names, exists) if not ok]
        if missing:
            await scripts.load_all()  # Redis restarted or flushed: load them now

    async def pg_ping() -> None:
        pool = await runtime.pg()
        async with pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1")

    async def replica_state() -> ReplicaState | None:
        if not runtime.reads.configured:
            return None
        try:
            return await asyncio.wait_for(runtime.reads.state(), CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:  # a replica that does not answer never slows the health check down
            return ReplicaState(up=False, reason="replica check timed out")

    async def breaker_state() -> str:
        # The shared state, read now: this worker's copy may be up to a refresh old (another worker
        # may have opened the breaker a moment ago). Redis away or slow: this worker's copy.
        breaker = gw.payments.breaker
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(breaker.storage.sync(force=True), CHECK_TIMEOUT_S)
        return breaker.current_state

    redis_err, pg_err, replica, breaker = await asyncio.gather(_check(scripts_loaded), _check(pg_ping),
                                                               replica_state(), breaker_state())
    # Several gateway hosts: one whose secret differs from the others' would refuse their tokens.
    secret_err = None if redis_err else await _check(
        lambda: check_shared_secret(runtime.redis, runtime.prefix, runtime.settings.secret_bytes))
    ready = redis_err is None and secret_err is None
    degraded = [name for name, bad in (("postgres", pg_err is not None), ("payments", breaker != "closed"),
                                       ("postgres_replica", replica is not None and not replica.usable)) if bad]
    body = {
        "status": ("degraded" if degraded else "ready") if ready else "not_ready",
        "degraded": degraded,
        "checks": {
            "redis": {"ok": redis_err is None, **({"reason": redis_err} if redis_err else {})},
            "secret": {"ok": secret_err is None, **({"reason": secret_err} if secret_err else {})},
            "postgres": {"ok": pg_err is None, **({"reason": pg_err} if pg_err else {})},
            "payments": {"ok": breaker == "closed", "breaker": breaker},
            # The read replica of organiser lists and reports (docs/scaling.md, "Postgres"), when set.
            **({"postgres_replica": {"ok": replica.usable, **replica.view()}} if replica is not None else {}),
        },
        "hotpath": hotpath.IMPLEMENTATION,
        "snapshot_age_s": gw.snapshots.max_age(),
        "time": time.time(),
    }
    return OrjsonResponse(body, status_code=200 if ready else 503)
