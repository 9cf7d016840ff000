"""Waiting for a streaming replica (the pair itself: gateway/stack/pgreplica.py)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from gateway.db.replica import lsn


async def replayed_all(primary_url: str, replica_url: str, timeout: float = 10.0) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    primary = await asyncpg.connect(primary_url)
    replica = await asyncpg.connect(replica_url)
    try:
        target = lsn(await primary.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
        deadline = time.monotonic() + timeout
        while (lsn(await replica.fetchval("SELECT pg_last_wal_replay_lsn()::text")) or 0) < (target or 0):
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica did not replay up to {target} within {timeout} s")
            await asyncio.sleep(0.02)
    finally:
        await primary.close()
        await replica.close()
