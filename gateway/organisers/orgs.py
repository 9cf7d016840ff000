"""Organisations and their API keys: each key has a name and a role; only a SHA-256 of it is stored.

Roles: `admin` (everything), `sales` (read events, figures and orders; refund), `door` (scanning
devices only). A key is shown once, when it is created.

Checking a key (`ApiKeys.authenticate`) costs one Redis read per request and a Postgres lookup only
on a cache miss: each worker caches the keys it has seen, stamped with a version counter in Redis
that every revocation raises, so a revoked key stops working on every worker with its next request.
Failed checks are limited per client address (an in-process token bucket plus a per-minute Redis
counter shared by all workers) and an address over its limit gets 429 without a Postgres lookup.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import hotpath
from redis.exceptions import RedisError

from gateway.core.errors import DomainError
from gateway.core.metrics import count_rate_limited
from gateway.core.runtime import Runtime
from gateway.store.keys import api_key_failures, api_keys_version

KEY_PREFIX = "fgk_"
KEY_LENGTH = len(KEY_PREFIX) + 43  # token_urlsafe(32)
ROLES = ("admin", "sales", "door")


@dataclass(frozen=True)
class NewOrganisation:
    id: int
    name: str
    api_key: str


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent an organiser request: the organisation, which key and its role."""

    organisation_id: int
    key_id: int
    role: str


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _key_view(row: asyncpg.Record) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"id": row["id"], "name": row["name"], "role": row["role"], "prefix": row["key_prefix"],
            "created_at": iso(row["created_at"]), "revoked_at": iso(row["revoked_at"])}


def check_name_role(name: str, role: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise DomainError("validation_error", "A key name is 1 to 100 characters.",
                          details={"fields": ["name"]}, status=422)
    if role not in ROLES:
        raise DomainError("validation_error", f"A key's role is one of {', '.join(ROLES)}.",
                          details={"fields": ["role"], "roles": list(ROLES)}, status=422)
    return name


async def create_organisation(conn: asyncpg.Connection | asyncpg.Pool, *, name: str) -> NewOrganisation:
    """Create an organisation with one admin API key; the key is returned once and never stored."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValueError("organisation name must be 1 to 200 characters")
    key = _new_key()
    async with _tx(conn) as tx:
        org_id = await tx.fetchval("INSERT INTO organisations (name) VALUES ($1) RETURNING id", name)
        await tx.execute("INSERT INTO api_keys (organisation_id, key_hash, key_prefix, name, role) "
                         "VALUES ($1, $2, $3, 'initial', 'admin')", org_id, hash_key(key), key[:10])
    return NewOrganisation(id=org_id, name=name, api_key=key)


async def create_key(conn: asyncpg.Connection | asyncpg.Pool, *, organisation_id: int, name: str,
                     role: str) -> dict[str, Any]:
    """A new key for the organisation; the answer holds the key itself (`key`), shown this once."""
    name = check_name_role(name, role)
    key = _new_key()
    row = await conn.fetchrow(
        """INSERT INTO api_keys (organisation_id, key_hash, key_prefix, name, role)
           SELECT id, $2, $3, $4, $5 FROM organisations WHERE id = $1
           RETURNING id, name, role, key_prefix, created_at, revoked_at""",
        organisation_id, hash_key(key), key[:10], name, role)
    if row is None:
        raise DomainError("not_found", "No such organisation.", details={"organisation_id": organisation_id})
    return {**_key_view(row), "key": key}


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool, *, organisation_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, name, role, key_prefix, created_at, revoked_at FROM api_keys
           WHERE organisation_id = $1 ORDER BY id""", organisation_id)
    return [_key_view(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, *, organisation_id: int,
                     key_id: int) -> dict[str, Any]:
    """Revoke one key of the organisation (again is fine). The last active admin key cannot be revoked:
    the organisation would lock itself out. Callers must raise the version counter afterwards."""
    async with _tx(conn) as tx:
        # One revocation per organisation at a time, so two concurrent revocations cannot both
        # believe another admin key remains.
        if await tx.fetchval("SELECT id FROM organisations WHERE id = $1 FOR UPDATE", organisation_id) is None:
            raise key_not_found(key_id)
        row = await tx.fetchrow(
            "SELECT id, role, revoked_at FROM api_keys WHERE id = $1 AND organisation_id = $2",
            key_id, organisation_id)
        if row is None:  # another organisation's key answers exactly like a missing one
            raise key_not_found(key_id)
        if row["revoked_at"] is None and row["role"] == "admin":
            others = await tx.fetchval(
                """SELECT count(*) FROM api_keys WHERE organisation_id = $1 AND role = 'admin'
                   AND revoked_at IS NULL AND id <> $2""", organisation_id, key_id)
            if not others:
                raise DomainError("invalid_state", "This is the organisation's last admin key; create another "
                                  "admin key before revoking it.", details={"key_id": key_id})
        revoked = await tx.fetchrow(
            """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
               RETURNING id, name, role, key_prefix, created_at, revoked_at""", key_id)
    return _key_view(revoked)


def key_not_found(key_id: int) -> DomainError:
    return DomainError("not_found", "No such API key.", details={"key_id": key_id})


async def caller_for_key(conn: asyncpg.Connection | asyncpg.Pool, *, api_key: str) -> Caller | None:
    row = await conn.fetchrow(
        "SELECT id, organisation_id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(api_key))
    return None if row is None else Caller(organisation_id=row["organisation_id"], key_id=row["id"],
                                           role=row["role"])


async def organisation_for_key(conn: asyncpg.Connection | asyncpg.Pool, *, api_key: str) -> int | None:
    caller = await caller_for_key(conn, api_key=api_key)
    return None if caller is None else caller.organisation_id


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


API_KEY_CACHE_S = 300.0      # a cached key is checked again in Postgres after this long at the latest
API_KEY_CACHE_MAX = 10_000
OFFLINE_TRUST_S = 5.0        # Redis unreachable (no version to compare): trust cached keys this long only
FAIL_TABLE_SIZE = 100_000


def unauthorized(message: str) -> DomainError:
    return DomainError("unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def too_many_failures(retry_after: float) -> DomainError:
    count_rate_limited("api_key")
    wait = max(1, math.ceil(retry_after))
    return DomainError("rate_limited", "Too many failed API-key checks from this address; try again later.",
                       details={"retry_after_s": wait, "scope": "api_key"}, headers={"Retry-After": str(wait)})


class ApiKeys:
    """Which organisation and role an API key stands for (cached per worker, revocations seen at once)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        s = runtime.settings
        self.fail_per_min = s.api_key_fail_per_ip_per_min
        self.failures = hotpath.TokenBucketTable(s.api_key_fail_per_ip_per_min / 60.0, s.api_key_fail_burst,
                                                 FAIL_TABLE_SIZE)
        self._cache: dict[str, tuple[Caller, float]] = {}
        # Keys this worker checked before its cache was emptied (a revocation somewhere) or expired: they
        # are checked again in Postgres without the per-address failure limit, so a flood of bad keys
        # from an address does not lock out the good key this worker already knew there.
        self._known: set[str] = set()
        self._version: bytes | None = None

    async def authenticate(self, api_key: str | None, address: str) -> Caller:
        """The caller of an organiser request; 401 for a missing, unknown or revoked key, 429 when the
        address failed too often."""
        if not api_key:
            raise unauthorized("Send your organisation API key as `Authorization: Bearer <key>`.")
        rt = self.runtime
        now = time.time()
        window = int(now // 60)
        try:
            version, failed = await rt.redis.mget(api_keys_version(rt.prefix),
                                                  api_key_failures(rt.prefix, address, window))
            online = True
        except RedisError:
            version, failed, online = None, None, False
        if online and (version or b"0") != self._version:
            # A key was revoked somewhere (or Redis lost the counter): check every key again.
            self._forget_all()
            self._version = version or b"0"
        mono = time.monotonic()
        hit = self._cache.get(api_key)
        if hit is not None and mono - hit[1] < (API_KEY_CACHE_S if online else OFFLINE_TRUST_S):
            return hit[0]
        known = hit is not None or api_key in self._known
        if not known:  # a Postgres lookup, unless this address already failed too often
            wait = self.failures.retry_after(address, now)
            if wait > 0:
                raise too_many_failures(wait)
            if failed is not None and int(failed) >= self.fail_per_min:
                raise too_many_failures(60 - now % 60)
        caller = None
        if api_key.startswith(KEY_PREFIX) and len(api_key) == KEY_LENGTH:
            caller = await caller_for_key(await rt.pg(), api_key=api_key)
        self._known.discard(api_key)  # checked once more without the limit, never twice
        if caller is None:
            await self._failed(address, now, window)
            raise unauthorized("This API key is not valid.")
        if len(self._cache) > API_KEY_CACHE_MAX:
            self._forget_all()
        self._cache[api_key] = (caller, mono)
        return caller

    def _forget_all(self) -> None:
        self._known.update(self._cache)
        if len(self._known) > API_KEY_CACHE_MAX:
            self._known.clear()
        self._cache.clear()

    async def _failed(self, address: str, now: float, window: int) -> None:
        self.failures.allow(address, now)
        try:
            key = api_key_failures(self.runtime.prefix, address, window)
            async with self.runtime.redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                await pipe.execute()
        except RedisError:
            pass  # the in-process bucket still limits this worker

    async def organisation(self, api_key: str | None, address: str = "-") -> int:
        return (await self.authenticate(api_key, address)).organisation_id

    # -- managing keys ----------------------------------------------------------------------------------
    async def create(self, organisation_id: int, *, name: str, role: str) -> dict[str, Any]:
        return await create_key(await self.runtime.pg(), organisation_id=organisation_id, name=name, role=role)

    async def list(self, organisation_id: int) -> list[dict[str, Any]]:
        return await list_keys(await self.runtime.pg(), organisation_id=organisation_id)

    async def revoke(self, organisation_id: int, key_id: int) -> dict[str, Any]:
        """Revoke a key; every worker stops accepting it with its next request."""
        view = await revoke_key(await self.runtime.pg(), organisation_id=organisation_id, key_id=key_id)
        await announce_revocation(self.runtime)
        self._forget_all()
        return view


async def announce_revocation(runtime: Runtime) -> None:
    """Raise the key version: every worker drops its key cache on its next organiser request. Revoking
    again is how to retry when this fails (the revocation itself is already in Postgres)."""
    try:
        await runtime.redis.incr(api_keys_version(runtime.prefix))
    except RedisError:
        raise DomainError("unavailable", "The key is revoked, but the gateways could not be told yet; revoke it "
                          "again in a moment.", headers={"Retry-After": "1"}) from None
