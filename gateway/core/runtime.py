"""Per-process resources: Redis client, Postgres pool, settings.

Created in the app lifespan (and by workers and the CLI). Postgres may be down
when the gateway starts: the pool connects lazily, and sales do not need it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from gateway.core.config import Settings


class RuntimeNotConfigured(RuntimeError):
    pass


def redis_client(url: str, **kwargs: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=1.0,
                                   socket_timeout=kwargs.pop("socket_timeout", 5.0),
                                   health_check_interval=0, max_connections=kwargs.pop("max_connections", 256),
                                   **kwargs)


@dataclass
class Runtime:
    settings: Settings
    redis: aioredis.Redis
    _pg: asyncpg.Pool | None = None
    _pg_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        if not settings.redis_url or not settings.database_url:
            raise RuntimeNotConfigured("REDIS_URL and DATABASE_URL must be set (flashgate up sets them)")
        return cls(settings=settings, redis=redis_client(settings.redis_url))

    def key(self, *parts: str) -> str:
        return ":".join((self.settings.redis_prefix, *parts))

    async def pg(self) -> asyncpg.Pool:
        """The Postgres pool, created on first use (Postgres may be down at start)."""
        if self._pg is None:
            async with self._pg_lock:
                if self._pg is None:
                    self._pg = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=10,
                                                         timeout=3.0, command_timeout=10.0)
        return self._pg

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()
            self._pg = None
        await self.redis.aclose()
