"""Ops endpoints: liveness and readiness.

Ready means able to sell: Redis answers and the scripts are loaded. Postgres and
the payment provider are reported in the body (`degraded`), never a reason for
503: sales go on while Postgres is down, and a load balancer must not take every
gateway out of service exactly then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hotpath
from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import GatewayDep
from gateway.api.responses import OrjsonResponse

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

    redis_err, pg_err = await asyncio.gather(_check(scripts_loaded), _check(pg_ping))
    breaker = gw.payments.breaker.current_state
    ready = redis_err is None
    degraded = [name for name, bad in (("postgres", pg_err is not None), ("payments", breaker != "closed")) if bad]
    body = {
        "status": ("degraded" if degraded else "ready") if ready else "not_ready",
        "degraded": degraded,
        "checks": {
            "redis": {"ok": redis_err is None, **({"reason": redis_err} if redis_err else {})},
            "postgres": {"ok": pg_err is None, **({"reason": pg_err} if pg_err else {})},
            "payments": {"ok": breaker == "closed", "breaker": breaker},
        },
        "hotpath": hotpath.IMPLEMENTATION,
        "snapshot_age_s": gw.snapshots.max_age(),
        "time": time.time(),
    }
    return OrjsonResponse(body, status_code=200 if ready else 503)
