"""Helpers to clean up what a test session created on shared servers."""

from __future__ import annotations

import asyncpg
import redis


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    except redis.RedisError:
        pass
    finally:
        client.close()


async def drop_database(admin_url: str, name: str) -> None:
    try:
        conn = await asyncpg.connect(admin_url)
    except (OSError, asyncpg.PostgresError):
        return
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_async(coro_fn, *args):
    """Run `coro_fn(*args)` to completion on a fresh event loop in its own thread: safe from sync
    fixtures even when a test's event loop is already running in this thread."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn(*args))).result()
