"""Lua scripts: loaded once, called by SHA (EVALSHA), reloaded once on NOSCRIPT.

`Scripts` is the one script runner of the application. On a single Redis every
call goes through the hot-path `WireConnection` (see wire.py): all calls made in
one event-loop tick leave as one pipeline, whoever makes them (the hold route,
the admission leader's per-event ticks, the expiry sweep). On a Redis Cluster the
`ClusterWire` (cluster.py) does the same per master: each call goes to the master
of its keys' slot (every key of a call shares the event's hash tag), and the calls
of one tick leave as one pipeline per master. Without a wire connection (tools),
calls go through redis-py one by one. Either way NOSCRIPT (Redis restarted or
flushed, a replica promoted) is handled here and only here: the script is loaded
(on the node that refused it) and the call repeated once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any

import orjson
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from gateway.core.metrics import script_timers
from gateway.core.resources import LUA_DIR
from gateway.store.cluster import ClusterWire
from gateway.store.wire import WireConnection, encode, encode_head, encode_with

_INCLUDE = re.compile(r"^--!include (\w+)\s*$", re.MULTILINE)
_HEADS_MAX = 10_000


def load_source(name: str, directory: Path = LUA_DIR) -> str:
    text = (directory / f"{name}.lua").read_text()
    return _INCLUDE.sub(lambda m: (directory / "lib" / f"{m.group(1)}.lua").read_text(), text)


class Script:
    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class Reply:
    """A script's answer: a status word (the API error code, or `ok`) and its details."""

    __slots__ = ("status", "data")

    def __init__(self, status: str, data: dict[str, Any]) -> None:
        self.status = status
        self.data = data

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __repr__(self) -> str:
        return f"Reply({self.status!r}, {self.data!r})"


def parse_reply(raw: Any) -> Reply:
    status, detail = raw[0], raw[1]
    data = orjson.loads(detail)
    if isinstance(data, list):  # cjson encodes an empty table as {} or []
        data = {}
    return Reply(status.decode() if isinstance(status, bytes) else status, data)


class Scripts:
    """Every Lua script of `lua/`, callable by name."""

    def __init__(self, redis: Any, directory: Path = LUA_DIR, *,
                 wire: WireConnection | ClusterWire | None = None) -> None:
        self.redis = redis
        # Exactly one of the two wires is set (or neither): the single-node path stays as it was.
        self.cluster = wire if isinstance(wire, ClusterWire) else None
        self.wire = None if self.cluster is not None else wire
        self._heads: dict[tuple[str, ...], tuple[bytes, int]] = {}
        self._routed: dict[tuple[str, ...], tuple[tuple[bytes, int], int]] = {}
        self.scripts = {p.stem: Script(p.stem, load_source(p.stem, directory))
                        for p in sorted(directory.glob("*.lua"))}
        self._timers = script_timers(self.scripts)  # flashgate_redis_call_duration_seconds, per script

    def __getitem__(self, name: str) -> Script:
        return self.scripts[name]

    async def load_all(self) -> None:
        for script in self.scripts.values():
            await self.redis.script_load(script.source)

    async def raw(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """The script's raw reply (batched with this tick's other calls on a wire connection)."""
        script = self.scripts[name]
        wire = self.wire
        started = time.perf_counter()
        try:
            if wire is not None:
                command = self._encode(script, keys, args)
                try:
                    return await wire.call(command)
                except NoScriptError:
                    await self.redis.script_load(script.source)
                    return await wire.call(command)
            if self.cluster is not None:
                return await self._raw_cluster(script, keys, args)
            try:
                return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.redis.script_load(script.source)
                return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        finally:
            self._timers[name].observe(time.perf_counter() - started)

    async def _raw_cluster(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        cluster = self.cluster
        command, slot = self._encode_routed(script, keys, args)
        try:
            return await cluster.call(command, slot)  # type: ignore[union-attr]
        except NoScriptError:
            pass
        # Load it where it was missing (a promoted replica has no script cache of its own); SCRIPT LOAD
        # leaves just before the call, on the same connection. While a failover settles, the slot may
        # move between the two: then once more.
        for attempt in range(3):
            load = cluster.call(encode("SCRIPT", "LOAD", script.source), slot)  # type: ignore[union-attr]
            again = cluster.call(command, slot)  # type: ignore[union-attr]
            await asyncio.gather(load, return_exceptions=True)
            try:
                return await again
            except NoScriptError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _encode_routed(self, script: Script, keys: list[str], args: list[Any]) -> tuple[bytes, int]:
        cache_key = (script.sha, *keys)
        routed = self._routed.get(cache_key)
        if routed is None:
            if len(self._routed) > _HEADS_MAX:
                self._routed.clear()
            head = encode_head("EVALSHA", script.sha, len(keys), *keys)
            routed = self._routed[cache_key] = (head, key_slot(keys[0].encode()) if keys else 0)
        return encode_with(routed[0], *args), routed[1]

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Reply:
        return parse_reply(await self.raw(name, keys, args))

    async def call_after(self, command: tuple[Any, ...], name: str, keys: list[str], args: list[Any]) -> Reply:
        """Send a plain command, then the script, in the same write (one round trip on the wire
        connection; Redis runs them in that order). Used where a record must be durable before the
        script acts, without paying a round trip for it."""
        wire = self.wire
        if wire is None:
            if self.cluster is not None and keys:
                # Same slot as the script (the record is an event key): queued first on that master.
                first_routed = asyncio.ensure_future(self.cluster.call(encode(*command), key_slot(keys[0].encode())))
                try:
                    reply = await self.call(name, keys, args)
                finally:
                    await asyncio.gather(first_routed, return_exceptions=True)
                await first_routed
                return reply
            await self.redis.execute_command(*command)
            return await self.call(name, keys, args)
        first = wire.call(encode(*command))  # queued now: it leaves before the script below
        try:
            reply = await self.call(name, keys, args)
        finally:
            await asyncio.gather(first, return_exceptions=True)  # never leave its error unretrieved
        await first
        return reply

    def _encode(self, script: Script, keys: list[str], args: list[Any]) -> bytes:
        # The command head (EVALSHA sha numkeys keys...) is the same for every call on one event.
        cache_key = (script.sha, *keys)
        head = self._heads.get(cache_key)
        if head is None:
            if len(self._heads) > _HEADS_MAX:
                self._heads.clear()
            head = self._heads[cache_key] = encode_head("EVALSHA", script.sha, len(keys), *keys)
        return encode_with(head, *args)


__all__ = ["Scripts", "Script", "Reply", "parse_reply", "load_source", "ResponseError"]
