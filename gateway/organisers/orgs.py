"""Organisations and their API keys (only a SHA-256 of each key is stored)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import asyncpg

from gateway.core.errors import DomainError
from gateway.core.runtime import Runtime

KEY_PREFIX = "fgk_"


@dataclass(frozen=True)
class NewOrganisation:
    id: int
    name: str
    api_key: str


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_organisation(conn: asyncpg.Connection | asyncpg.Pool, *, name: str) -> NewOrganisation:
    """Create an organisation with one API key; the key is returned once and never stored."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValueError("organisation name must be 1 to 200 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    async with _tx(conn) as tx:
        org_id = await tx.fetchval("INSERT INTO organisations (name) VALUES ($1) RETURNING id", name)
        await tx.execute("INSERT INTO api_keys (organisation_id, key_hash, key_prefix) VALUES ($1, $2, $3)",
                         org_id, hash_key(key), key[:10])
    return NewOrganisation(id=org_id, name=name, api_key=key)


async def organisation_for_key(conn: asyncpg.Connection | asyncpg.Pool, *, api_key: str) -> int | None:
    return await conn.fetchval(
        "SELECT organisation_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(api_key))


class _tx:
    """A transaction on a connection, or on a connection borrowed from a pool."""

    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        self.conn = conn
        self._acquired = None
        self._tr = None

    async def __aenter__(self) -> asyncpg.Connection:
        if isinstance(self.conn, asyncpg.Pool):
            self._acquired = await self.conn.acquire()
            target = self._acquired
        else:
            target = self.conn
        self._tr = target.transaction()
        await self._tr.start()
        return target

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                await self._tr.commit()
            else:
                await self._tr.rollback()
        finally:
            if self._acquired is not None:
                await self.conn.release(self._acquired)


API_KEY_CACHE_S = 30.0
API_KEY_CACHE_MAX = 10_000


class ApiKeys:
    """Which organisation an API key belongs to (cached briefly per worker)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._cache: dict[str, tuple[int | None, float]] = {}

    async def organisation(self, api_key: str | None) -> int:
        if not api_key:
            raise DomainError("unauthorized", "Send your organisation API key as `Authorization: Bearer <key>`.",
                              headers={"WWW-Authenticate": "Bearer"})
        hit = self._cache.get(api_key)
        now = time.monotonic()
        if hit and hit[1] > now:
            org = hit[0]
        else:
            org = await organisation_for_key(await self.runtime.pg(), api_key=api_key)
            if len(self._cache) > API_KEY_CACHE_MAX:
                self._cache.clear()
            self._cache[api_key] = (org, now + API_KEY_CACHE_S)
        if org is None:
            raise DomainError("unauthorized", "This API key is not valid.", headers={"WWW-Authenticate": "Bearer"})
        return org
