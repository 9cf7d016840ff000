"""A pipelined Redis connection for the hot path: RESP written by hand, replies
parsed by hiredis, futures resolved in order.

Every command queued in one event-loop tick goes out in one write; several
batches may be in flight on the one connection (Redis answers in order). This
costs a few microseconds per command where a general-purpose client pipeline
costs tens, which is what the edge needs to keep up with Redis. Used for
script calls on a single Redis; on a Redis Cluster, `ClusterWire` (cluster.py)
keeps one of these per master and routes each call by its keys' slot.

It never waits without bound:

* every command fails with `redis.exceptions.TimeoutError` at most about
  `timeout_s` after it was written (or queued, if it had to wait for the
  connection). One watchdog timer per connection watches the oldest batch in
  flight; when it is late, every command in flight fails and the connection is
  dropped (the order of replies can no longer be trusted); the next call
  reconnects. Connecting (with AUTH and SELECT) is bounded by `timeout_s` too.
* when more than `max_buffer_bytes` already wait in the socket's write buffer
  (Redis is not reading), a new batch fails at once with
  `redis.exceptions.ConnectionError` instead of buffering more.

URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS, with
redis-py's `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_ca_path`, `ssl_certfile`,
`ssl_keyfile`, `ssl_check_hostname` query parameters) and
`unix://[[user]:password@]/path/to/redis.sock[?db=N]`; `?db=`, `?username=` and
`?password=` work on all three, as in redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class NotSentError(RedisConnectionError):
    """The command never left: the connection to Redis could not be made. Safe to send again
    elsewhere (the Cluster wire does, after reading a new slot map)."""


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


def _to_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "f", "false", "n", "no", "off")


def _ssl_context(query: dict[str, str]) -> ssl.SSLContext:
    """The TLS context for a `rediss://` URL, from its query parameters, as redis-py builds it."""
    reqs = query.get("ssl_cert_reqs", "required").strip().lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs!r} in the Redis URL is not one of none, optional, required.")
    verify_mode = _CERT_REQS[reqs]
    context = ssl.create_default_context()
    # check_hostname must be off before verify_mode may be CERT_NONE.
    context.check_hostname = verify_mode != ssl.CERT_NONE and _to_bool(query.get("ssl_check_hostname"), True)
    context.verify_mode = verify_mode
    certfile, keyfile = query.get("ssl_certfile"), query.get("ssl_keyfile")
    if certfile or keyfile:
        context.load_cert_chain(certfile=certfile or keyfile, keyfile=keyfile)  # type: ignore[arg-type]
    cafile, capath = query.get("ssl_ca_certs"), query.get("ssl_ca_path")
    if cafile or capath:
        context.load_verify_locations(cafile=cafile, capath=capath)
    return context


class _Conn:
    """One open connection: the futures of the commands in flight on it (in order), and for each
    batch in flight, (commands sent up to and including it, deadline). Replies received so far are
    `sent - len(waiting)`, so the reader never touches the deadlines."""

    __slots__ = ("loop", "writer", "transport", "waiting", "batches", "sent", "timer", "reader_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter) -> None:
        self.loop = loop
        self.writer = writer
        self.transport: Any = writer.transport
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.batches: collections.deque[tuple[int, float]] = collections.deque()
        self.sent = 0
        self.timer: asyncio.TimerHandle | None = None
        self.reader_task: asyncio.Task | None = None


class WireConnection:
    def __init__(self, url: str, *, timeout_s: float = 1.0, max_buffer_bytes: int = 8 << 20) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}.")
        if max_buffer_bytes <= 0:
            raise ValueError(f"max_buffer_bytes must be positive, not {max_buffer_bytes!r}.")
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme not in SUPPORTED_SCHEMES:
            shown = f"{scheme}://" if scheme else "(none)"
            raise ValueError(
                f"Redis URL scheme {shown} is not supported by the wire connection: use redis://, "
                "rediss:// (TLS) or unix:// (a socket path) to one Redis server, or "
                "redis+cluster://host:port[,host:port...] for a Redis Cluster.")
        query = {name: values[0] for name, values in parse_qs(parsed.query).items() if values}
        self.timeout_s = float(timeout_s)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.username = unquote(parsed.username) if parsed.username else query.get("username") or None
        self.password = unquote(parsed.password) if parsed.password else query.get("password") or None
        self.ssl: ssl.SSLContext | None = None
        self.path: str | None = None
        self.host = "127.0.0.1"
        self.port = 6379
        if scheme == "unix":
            self.path = unquote(parsed.path)
            if not self.path:
                raise ValueError(f"The unix:// Redis URL has no socket path; write it as "
                                 f"unix:///path/to/redis.sock?db=0 (got host part {parsed.hostname!r}).")
            db = query.get("db", "0")
            self.where = self.path
        else:
            self.host = parsed.hostname or "127.0.0.1"
            self.port = parsed.port or 6379
            db = query.get("db") or unquote(parsed.path or "").replace("/", "") or "0"
            if scheme == "rediss":
                self.ssl = _ssl_context(query)
            self.where = f"{self.host}:{self.port}"
        try:
            self.db = int(db)
        except ValueError:
            raise ValueError(f"The Redis URL's database {db!r} is not a number.") from None
        self._conn: _Conn | None = None
        self._connecting: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._flush_scheduled = False

    # -- the fast path ---------------------------------------------------------------------------

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
        conn = self._conn
        if conn is None:
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._connect_then_send(batch, loop.time() + self.timeout_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._send(conn, batch, conn.loop.time() + self.timeout_s)

    def _send(self, conn: _Conn, batch: list[tuple[bytes, asyncio.Future]], deadline: float) -> None:
        transport = conn.transport
        buffered = transport.get_write_buffer_size()
        if buffered > self.max_buffer_bytes:
            error = RedisConnectionError(
                f"Redis is not keeping up: {buffered} bytes already wait to be written to {self.where} "
                f"(limit {self.max_buffer_bytes}), so {len(batch)} commands were refused.")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        conn.waiting.extend([fut for _, fut in batch])
        sent = conn.sent = conn.sent + len(batch)
        batches = conn.batches
        if batches and batches[-1][1] > deadline:
            self._tighten(conn, deadline)  # rare: a batch that waited for the connection
        batches.append((sent, deadline))
        if conn.timer is None:
            conn.timer = conn.loop.call_at(deadline, self._watchdog, conn)
        transport.write(b"".join([cmd for cmd, _ in batch]))

    # -- deadlines -------------------------------------------------------------------------------

    def _tighten(self, conn: _Conn, deadline: float) -> None:
        """A batch with an earlier deadline than those before it: replies come in order, so the
        batches before it are late when it is late."""
        batches = conn.batches
        for i in range(len(batches)):
            end, due = batches[i]
            if due > deadline:
                batches[i] = (end, deadline)
        timer = conn.timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            conn.timer = conn.loop.call_at(deadline, self._watchdog, conn)

    def _watchdog(self, conn: _Conn) -> None:
        conn.timer = None
        if conn is not self._conn:
            return
        batches = conn.batches
        answered = conn.sent - len(conn.waiting)
        while batches and batches[0][0] <= answered:
            batches.popleft()
        if not batches:
            return  # the next batch sent arms the timer again
        deadline = batches[0][1]
        if deadline > conn.loop.time():
            conn.timer = conn.loop.call_at(deadline, self._watchdog, conn)
            return
        self._drop(conn, RedisTimeoutError(
            f"Redis at {self.where} did not answer within {self.timeout_s:g} s; the connection was "
            f"dropped and its {len(conn.waiting)} commands in flight failed."))

    def _drop(self, conn: _Conn, exc: Exception) -> None:
        """Close `conn` at once and fail everything in flight on it."""
        if self._conn is conn:
            self._conn = None
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.transport.abort()
        task = conn.reader_task
        if task is not None and task is not asyncio.current_task(conn.loop):
            task.cancel()
        conn.batches.clear()
        waiting = conn.waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)

    # -- connecting and reading ------------------------------------------------------------------

    async def _connect_then_send(self, batch: list[tuple[bytes, asyncio.Future]], deadline: float) -> None:
        try:
            conn = self._conn
            if conn is None:
                connecting = self._connecting
                if connecting is None:
                    connecting = self._connecting = asyncio.get_running_loop().create_task(self._connect())
                conn = await asyncio.shield(connecting)
                if conn is not self._conn:  # lost again before this batch got its turn
                    conn = self._conn
                    if conn is None:
                        raise RedisConnectionError(f"the connection to Redis at {self.where} was lost "
                                                   "right after it was made")
        except asyncio.CancelledError:
            self._fail_batch(batch, NotSentError(f"the connection to Redis at {self.where} was closed "
                                                 "while connecting"))
            raise
        except Exception as exc:
            if isinstance(exc, RedisConnectionError):
                exc = NotSentError(str(exc))
            elif not isinstance(exc, RedisTimeoutError):
                exc = NotSentError(f"cannot connect to Redis at {self.where}: {exc!r}")
            self._fail_batch(batch, exc)
            return
        if deadline <= conn.loop.time():
            self._fail_batch(batch, RedisTimeoutError(
                f"connecting to Redis at {self.where} took longer than {self.timeout_s:g} s"))
            return
        self._send(conn, batch, deadline)

    @staticmethod
    def _fail_batch(batch: list[tuple[bytes, asyncio.Future]], exc: Exception) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self.path is not None:
                        reader, writer = await asyncio.open_unix_connection(self.path)
                    else:
                        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
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
                                raise RedisConnectionError(f"Redis at {self.where} closed the connection "
                                                           "during set-up")
                            parser.feed(data)
                            while (reply := parser.gets()) is not False:
                                if isinstance(reply, hiredis.ReplyError):
                                    raise _error(reply)
                                got += 1
            except TimeoutError:
                raise RedisTimeoutError(f"connecting to Redis at {self.where} took longer than "
                                        f"{self.timeout_s:g} s") from None
        except BaseException:
            if writer is not None:
                writer.transport.abort()
            raise
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None
        conn = _Conn(loop, writer)
        conn.reader_task = loop.create_task(self._read(conn, reader, parser))
        self._conn = conn
        return conn

    async def _read(self, conn: _Conn, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        waiting = conn.waiting
        try:
            while True:
                data = await reader.read(1 << 17)
                if not data:
                    raise RedisConnectionError(f"Redis at {self.where} closed the connection")
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
            self._drop(conn, exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(repr(exc)))

    async def close(self) -> None:
        """Close the connection; commands still in flight fail with ConnectionError. A later call
        connects again."""
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
            try:
                await connecting
            except (asyncio.CancelledError, Exception):
                pass
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        task = conn.reader_task
        if task is not None:
            task.cancel()
        transport = conn.transport
        if transport.get_write_buffer_size():
            transport.abort()  # Redis is not reading: do not wait for the buffer to drain
        else:
            conn.writer.close()
        try:
            async with asyncio.timeout(self.timeout_s):
                await conn.writer.wait_closed()
        except (TimeoutError, Exception):
            transport.abort()
            await asyncio.sleep(0)
        if task is not None:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_batch([(b"", fut) for fut in conn.waiting], RedisConnectionError(
            f"the connection to Redis at {self.where} was closed"))
        conn.waiting.clear()
        conn.batches.clear()
