"""Per-process resources: settings, the Redis access layer, the Postgres pool.

Built once per process (gateway worker, background worker, CLI command) by the
composition root (`gateway/wiring.py`) and handed to the services that need it.
Postgres may be down when a process starts: the pool connects lazily, and sales
do not need it.
"""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.core.config import Settings
from gateway.core.sealing import Sealer
from gateway.db.replica import ReplicaReads
from gateway.store.redis import RedisStore, redis_client

__all__ = ["Runtime", "RuntimeNotConfigured", "redis_client"]


class RuntimeNotConfigured(RuntimeError):
    pass


async def release_cheaply(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs before its next use. asyncpg's default sends a reset query
    (advisory unlocks, CLOSE ALL, UNLISTEN, RESET ALL) on every release: a round trip per query at a
    sale's rate, for session state the application never sets (no LISTEN, no session settings, no
    advisory locks on pooled connections: migrations lock on a connection of their own). Only a
    transaction left open is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Runtime:
    def __init__(self, settings: Settings, store: RedisStore) -> None:
        self.settings = settings
        self.store = store
        self.redis = store.client
        self.scripts = store.scripts
        # Values kept in Redis that must not be readable from a dump (event signing keys).
        self.sealer = Sealer(settings.secret_bytes)
        self._pg: asyncpg.Pool | None = None
        self._pg_lock = asyncio.Lock()
        # Organiser reads that tolerate lag: the replica when DATABASE_REPLICA_URL is set and it keeps up.
        self.reads = ReplicaReads(settings, self.pg)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        if not settings.redis_url or not settings.database_url:
            raise RuntimeNotConfigured("REDIS_URL and DATABASE_URL must be set (flashgate up sets them)")
        return cls(settings, RedisStore.from_settings(settings))

    @property
    def prefix(self) -> str:
        return self.settings.redis_prefix

    def key(self, *parts: str) -> str:
        """A key outside any event (notification streams, breakers): `<prefix>:<part>:...`."""
        return ":".join((self.settings.redis_prefix, *parts))

    async def pg(self) -> asyncpg.Pool:
        """The Postgres pool, created on first use (Postgres may be down at start)."""
        if self._pg is None:
            async with self._pg_lock:
                if self._pg is None:
                    s = self.settings
                    self._pg = await asyncpg.create_pool(s.database_url, min_size=0, max_size=s.pg_pool_size,
                                                         timeout=3.0, command_timeout=10.0, reset=release_cheaply)
        return self._pg

    async def close(self) -> None:
        await self.reads.close()
        if self._pg is not None:
            await self._pg.close()
            self._pg = None
        await self.store.close()
