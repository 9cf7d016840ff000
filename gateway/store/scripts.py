"""Lua scripts: loaded once, called by SHA (EVALSHA), reloaded once on NOSCRIPT.

`Scripts.call` sends one script call. `Scripts.batched` queues the call and sends
every call queued in the same event-loop tick as one pipeline: under load many
requests arrive per tick, and one round trip for all of them is what lets the
Python edge keep up with Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import NoScriptError, ResponseError

from gateway.core.config import PROJECT_ROOT
from gateway.store.wire import encode_head, encode_with

LUA_DIR = PROJECT_ROOT / "lua"
_INCLUDE = re.compile(r"^--!include (\w+)\s*$", re.MULTILINE)


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
    def __init__(self, redis: Any, directory: Path = LUA_DIR, *, wire: Any = None) -> None:
        self.redis = redis
        self.wire = wire  # a WireConnection for batched calls on a single Redis (see wire.py)
        self._heads: dict[tuple[str, ...], tuple[bytes, int]] = {}
        self.scripts = {p.stem: Script(p.stem, load_source(p.stem, directory))
                        for p in sorted(directory.glob("*.lua"))}
        self._pending: list[tuple[Script, int, list[Any], asyncio.Future]] = []
        self._flush_scheduled = False

    def __getitem__(self, name: str) -> Script:
        return self.scripts[name]

    async def load_all(self) -> None:
        for script in self.scripts.values():
            await self.redis.script_load(script.source)

    async def raw(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts[name]
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.script_load(script.source)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Reply:
        return parse_reply(await self.raw(name, keys, args))

    def batched(self, name: str, keys: list[str], args: list[Any]) -> "asyncio.Future[Any]":
        """Queue a call for the redis-py pipeline sent at the end of this loop tick (used when there is
        no wire connection, e.g. on a Redis Cluster); returns the raw reply future."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((self.scripts[name], len(keys), [*keys, *args], fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def call_batched(self, name: str, keys: list[str], args: list[Any]) -> Reply:
        if self.wire is not None:
            return parse_reply(await self._wire_call(self.scripts[name], keys, args))
        return parse_reply(await self.batched(name, keys, args))

    def _encode(self, script: Script, keys: list[str], args: list[Any]) -> bytes:
        # The command head (EVALSHA sha numkeys keys...) is the same for every call on one event.
        cache_key = (script.sha, *keys)
        head = self._heads.get(cache_key)
        if head is None:
            if len(self._heads) > 10_000:
                self._heads.clear()
            head = self._heads[cache_key] = encode_head("EVALSHA", script.sha, len(keys), *keys)
        return encode_with(head, *args)

    async def _wire_call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        command = self._encode(script, keys, args)
        try:
            return await self.wire.call(command)
        except NoScriptError:
            await self.redis.script_load(script.source)
            return await self.wire.call(command)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[Script, int, list[Any], asyncio.Future]]) -> None:
        try:
            if len(batch) == 1:
                script, numkeys, argv, _ = batch[0]
                results: list[Any] = [await self._one(script, numkeys, argv)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for script, numkeys, argv, _ in batch:
                    pipe.evalsha(script.sha, numkeys, *argv)
                results = await pipe.execute(raise_on_error=False)
                for i, result in enumerate(results):
                    if isinstance(result, NoScriptError):
                        results[i] = await self._one(batch[i][0], batch[i][1], batch[i][2])
        except BaseException as exc:  # connection lost, timeout: every waiter gets the error
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, fut), result in zip(batch, results):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _one(self, script: Script, numkeys: int, argv: list[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, numkeys, *argv)
        except NoScriptError:
            await self.redis.script_load(script.source)
            return await self.redis.evalsha(script.sha, numkeys, *argv)


__all__ = ["Scripts", "Reply", "parse_reply", "load_source", "ResponseError"]
