"""A pipelined Redis connection for the hot path: RESP written by hand, replies
parsed by hiredis, futures resolved in order.

Every command queued in one event-loop tick goes out in one write; several
batches may be in flight on the one connection (Redis answers in order). This
costs a few microseconds per command where a general-purpose client pipeline
costs tens, which is what the edge needs to keep up with Redis. Used for
script calls on a single Redis; a Redis Cluster goes through redis-py, which
routes by slot.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def encode(*parts: Any) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode_head(*parts: Any) -> tuple[bytes, int]:
    """The encoded leading arguments of a command, and how many there are (see `encode_with`)."""
    body = encode(*parts)
    return body[body.index(b"\r\n") + 2:], len(parts)


def encode_with(head: tuple[bytes, int], *parts: Any) -> bytes:
    """`encode(*head_parts, *parts)` with the head encoded once and reused."""
    chunks = [b"*%d\r\n" % (head[1] + len(parts)), head[0]]
    append = chunks.append
    for part in parts:
        cls = part.__class__
        if cls is str:
            data = part.encode()
        elif cls is int:
            data = b"%d" % part
        elif cls is bytes:
            data = part
        else:
            data = str(part).encode()
        append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


def _error(reply: hiredis.ReplyError) -> Exception:
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    return ResponseError(text)


class WireConnection:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.db = int((parsed.path or "/0").lstrip("/") or 0)
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._connecting: asyncio.Future | None = None
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._flush_scheduled = False

    async def _connect(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 2.0)
        parser = hiredis.Reader()
        setup = []
        if self.password:
            setup.append(encode("AUTH", *([self.username] if self.username else []), self.password))
        if self.db:
            setup.append(encode("SELECT", self.db))
        if setup:
            writer.write(b"".join(setup))
            got = 0
            while got < len(setup):
                data = await reader.read(1 << 16)
                if not data:
                    raise RedisConnectionError("connection closed during set-up")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, hiredis.ReplyError):
                        raise _error(reply)
                    got += 1
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, parser))

    async def _read(self, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        waiting = self._waiting
        try:
            while True:
                data = await reader.read(1 << 17)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    fut = waiting.popleft()
                    if fut.done():
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        fut.set_exception(_error(reply))
                    else:
                        fut.set_result(reply)
        except Exception as exc:
            self._fail(exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(repr(exc)))

    def _fail(self, exc: Exception) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def call(self, command: bytes) -> "asyncio.Future[Any]":
        """Queue one encoded command; it leaves with everything else queued in this tick."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((command, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        if self._writer is None:
            asyncio.get_running_loop().create_task(self._connect_then_send(batch))
            return
        self._send(batch)

    def _send(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        assert self._writer is not None
        self._waiting.extend(fut for _, fut in batch)
        self._writer.write(b"".join(cmd for cmd, _ in batch))

    async def _connect_then_send(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        try:
            if self._writer is None:
                if self._connecting is None:
                    self._connecting = asyncio.ensure_future(self._connect())
                try:
                    await asyncio.shield(self._connecting)
                finally:
                    if self._connecting is not None and self._connecting.done():
                        self._connecting = None
            self._send(batch)
        except Exception as exc:
            error = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(repr(exc))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):
                pass
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except Exception:
                pass
            self._writer = None
