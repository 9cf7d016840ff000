"""Ops endpoints: liveness and readiness."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.responses import OrjsonResponse

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> Response:
    return OrjsonResponse({"status": "alive"})


async def _check(coro_factory, timeout: float = 1.0) -> str | None:
    try:
        await asyncio.wait_for(coro_factory(), timeout)
        return None
    except Exception as exc:  # the reason goes to the operator
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    import hotpath

    runtime = request.app.state.runtime

    async def pg_ping() -> None:
        pool = await runtime.pg()
        async with pool.acquire(timeout=1.0) as conn:
            await conn.fetchval("SELECT 1")

    redis_err, pg_err = await asyncio.gather(_check(runtime.redis.ping), _check(pg_ping))
    snapshots = runtime.extras.get("snapshots")
    body = {
        "status": "ready" if not redis_err and not pg_err else "not_ready",
        "checks": {
            "redis": {"ok": redis_err is None, **({"reason": redis_err} if redis_err else {})},
            "postgres": {"ok": pg_err is None, **({"reason": pg_err} if pg_err else {})},
        },
        "hotpath": hotpath.IMPLEMENTATION,
        "snapshot_age_s": snapshots.max_age() if snapshots else None,
        "time": time.time(),
    }
    return OrjsonResponse(body, status_code=200 if body["status"] == "ready" else 503)
