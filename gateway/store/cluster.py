"""Redis Cluster: the URL form, a bounded redis-py cluster client, and the slot-routed hot-path wire.

`REDIS_URL` names a Cluster with the `redis+cluster://` scheme (`rediss+cluster://` for TLS) and one
or more seed nodes, comma-separated:

    redis+cluster://[[user]:password@]host:port[,host:port...][/][?ssl_... query as for rediss://]

Any reachable seed is enough: the client asks it for the slot map (`CLUSTER SLOTS`) and learns
every master from there. A Cluster has only database 0.

Two clients are built from it, as on a single Redis (store/redis.py):

- `cluster_client`: redis-py's `RedisCluster`, for ordinary commands and pipelines (it routes each
  command by its key's slot; non-transactional pipelines are split by node; a MULTI must stay in
  one slot). Wrapped so that callers queue for a connection, like the single-node pool, and every
  command (the wait included) answers within the budget or fails with a `RedisError`.
- `ClusterWire`: one `WireConnection` per master; a script call goes to the master of its keys'
  slot (all keys of a call share one hash tag) and leaves with everything else queued for that
  master in the same event-loop tick. `MOVED` updates the slot and sends the command again (and
  refreshes the map in the background), `ASK` sends `ASKING` and the command to the named node,
  `TRYAGAIN` / `CLUSTERDOWN` wait a little and try again within the budget, and a master that cannot
  be reached makes the wire ask the other nodes and seeds for a new map. A command that may have
  reached Redis is never sent twice: its caller gets the error (503), as on a single Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.wire import NotSentError, WireConnection, encode

log = logging.getLogger("flashgate.redis.cluster")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SLOTS = 16384
_MAX_REDIRECTS = 5
_ASKING = encode("ASKING")
_CLUSTER_SLOTS = encode("CLUSTER", "SLOTS")
_HEADROOM = 4  # connections per node beyond the callers' gate: redis-py's own topology reads
MIN_REFRESH_S = 0.05
_INSIDE: ContextVar[bool] = ContextVar("flashgate_cluster_bounded", default=False)


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0].lower() in CLUSTER_SCHEMES  # type: ignore[union-attr]


@dataclass(frozen=True)
class ClusterURL:
    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    query: dict[str, str] = field(default_factory=dict)

    def node_url(self, host: str, port: int) -> str:
        """The single-node URL of one member (for its WireConnection)."""
        auth = ""
        if self.password is not None or self.username is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        shown = f"[{host}]" if ":" in host else host
        tail = f"?{urlencode(self.query)}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{shown}:{port}/0{tail}"

    @property
    def where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.seeds)


def parse_cluster_url(url: str) -> ClusterURL:
    """`redis+cluster://[user:password@]host:port[,host:port...][/][?query]`, refused in one sentence."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"{url.split('://')[0]!r} is not a Redis Cluster URL scheme: use redis+cluster:// "
                         "or rediss+cluster:// (TLS) followed by one or more host:port seed nodes.")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"A Redis Cluster has only database 0; remove /{path.strip('/')} from the URL.")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
        if not colon:  # redis://secret@host means a password, as in redis-py
            username, password = None, unquote(user)
    seeds = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [::1]:7000
            host, _, port_text = part[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            port = int(port_text) if port_text else 6379
        except ValueError:
            raise ValueError(f"The seed node {part!r} of the Redis Cluster URL has no valid port.") from None
        seeds.append((host or "127.0.0.1", port))
    if not seeds:
        raise ValueError("The Redis Cluster URL names no seed node; write redis+cluster://host:port[,host:port].")
    query = {name: values[0] for name, values in parse_qs(query_text).items() if values}
    username = username or query.pop("username", None)
    password = password if password is not None else query.pop("password", None)
    query.pop("username", None)
    query.pop("password", None)
    return ClusterURL(tuple(seeds), username, password, CLUSTER_SCHEMES[scheme.lower()] == "rediss", query)


# -- redis-py ------------------------------------------------------------------------------------------------

class ClusterUnavailable(RedisConnectionError):
    """redis-py's cluster client gave up (no node reachable, no slot map): a RedisError, so a 503."""


class BoundedCluster(RedisCluster):
    """`RedisCluster` whose callers queue for one of `max_connections` slots (redis-py's own cluster
    pools fail at once when full) and whose every command or pipeline, the wait included, ends
    within the budget."""

    def __init__(self, *, budget_s: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections + _HEADROOM, **kwargs)
        self.budget_s = budget_s
        self._gate = asyncio.Semaphore(max_connections)

    @contextlib.asynccontextmanager
    async def bounded(self, what: str) -> AsyncIterator[None]:
        if _INSIDE.get():  # redis-py sends a pipeline's redirected commands again one by one: already bounded
            yield
            return
        budget = self.budget_s
        try:
            async with asyncio.timeout(budget):
                await self._gate.acquire()
        except TimeoutError:
            raise RedisTimeoutError(f"no Redis Cluster connection came free within {budget:g} s "
                                    f"for {what}") from None
        inside = _INSIDE.set(True)
        try:
            async with asyncio.timeout(budget):
                yield
        except TimeoutError:
            raise RedisTimeoutError(f"the Redis Cluster did not answer {what} within {budget:g} s") from None
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc
        finally:
            _INSIDE.reset(inside)
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.bounded(str(args[0])):
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is not supported on a Redis Cluster")
        return BoundedPipeline(self, transaction)


class BoundedPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client: BoundedCluster = self.cluster_client  # type: ignore[assignment]
        async with client.bounded("a pipeline"):
            return await super().execute(raise_on_error, allow_redirections)


async def ready_for_transaction(redis: Any) -> None:
    """Call before `pipeline(transaction=True)` on any client. redis-py's cluster pipeline in transaction mode
    resolves each queued command's slot on a thread of its own (`asyncio.run`) and re-reads a stale slot map
    there (after a failover); the client's lock belongs to the main loop, so while the main loop re-reads it
    too that fails (`RuntimeError: ... bound to a different event loop`, a 500). Re-read it here first."""
    if isinstance(redis, RedisCluster) and getattr(redis, "_initialize", False):
        await redis.initialize()


def cluster_client(url: str, *, timeout_s: float = 2.0, max_connections: int = 64, **kwargs: Any) -> BoundedCluster:
    parsed = parse_cluster_url(url)
    tls: dict[str, Any] = {}
    if parsed.tls:
        q = parsed.query
        tls = {"ssl": True, "ssl_cert_reqs": q.get("ssl_cert_reqs", "required"),
               "ssl_ca_certs": q.get("ssl_ca_certs"), "ssl_certfile": q.get("ssl_certfile"),
               "ssl_keyfile": q.get("ssl_keyfile"),
               "ssl_check_hostname": q.get("ssl_check_hostname", "true").lower() not in ("0", "false", "no", "off")}
    return BoundedCluster(
        budget_s=timeout_s, max_connections=max_connections,
        startup_nodes=[ClusterNode(h, p) for h, p in parsed.seeds], username=parsed.username,
        password=parsed.password, socket_connect_timeout=min(1.0, timeout_s),
        socket_timeout=kwargs.pop("socket_timeout", timeout_s), health_check_interval=0, **tls, **kwargs)


# -- the hot-path wire ---------------------------------------------------------------------------------------

def _redirect(exc: ResponseError) -> tuple[str, int, str] | None:
    """(`MOVED` | `ASK`, slot, "host:port") of a redirection, else None."""
    text = str(exc)
    if text.startswith(("MOVED ", "ASK ")):
        kind, slot, where = text.split(" ", 2)
        return kind, int(slot), where.strip()
    return None


def _split(where: str) -> tuple[str, int]:
    host, _, port = where.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterWire:
    """The hot-path connection to a Redis Cluster: one pipelined `WireConnection` per master, each
    command sent to the master of its slot (see the module docstring)."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, max_buffer_bytes: int = 8 << 20) -> None:
        self.url = parse_cluster_url(url)
        self.timeout_s = float(timeout_s)
        self.max_buffer_bytes = max_buffer_bytes
        self._slots: list[str | None] = [None] * SLOTS
        self._conns: dict[str, WireConnection] = {}
        self._known: list[str] = []  # every node of the last map (masters first), then tried before seeds
        self._refreshing: asyncio.Task | None = None
        self._refreshed_at = float("-inf")
        self._tasks: set[asyncio.Task] = set()
        self.refreshes = 0
        self.redirects = 0

    # -- sending -------------------------------------------------------------------------------------------

    def call(self, command: bytes, slot: int) -> Awaitable[Any]:
        """Queue one encoded command for the master of `slot` now (it leaves with that master's other
        commands of this tick); the awaitable follows redirections and gives the reply."""
        where = self._slots[slot]
        fut = self._conn(where).call(command) if where is not None else None
        return self._finish(command, slot, where, fut)

    def call_key(self, command: bytes, key: str | bytes) -> Awaitable[Any]:
        return self.call(command, key_slot(key.encode() if isinstance(key, str) else key))

    async def _finish(self, command: bytes, slot: int, where: str | None, fut: Any) -> Any:
        if fut is not None:
            try:
                return await fut  # the common case: the map was right
            except (ResponseError, RedisConnectionError, RedisTimeoutError) as exc:
                return await self._recover(command, slot, where, exc)
        return await self._recover(command, slot, where, None)

    async def _recover(self, command: bytes, slot: int, where: str | None, first: Exception | None) -> Any:
        """The first answer was a redirection or an error (or the slot had no master yet): follow it,
        within one budget from here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        redirects = 0
        fut: Any = None
        if first is not None:
            fut = loop.create_future()
            fut.set_exception(first)
        while True:
            if fut is None:
                if where is None:
                    where = self._slots[slot]
                if where is None:
                    await self.refresh(deadline)
                    where = self._slots[slot]
                    if where is None:
                        raise RedisConnectionError(f"no master of the Redis Cluster at {self.url.where} serves "
                                                   f"slot {slot}")
                fut = self._conn(where).call(command)
            try:
                return await fut
            except NotSentError:
                # Nothing reached Redis (the node could not be reached): a new map, then again in time.
                self._forget(where)
                if loop.time() >= deadline:
                    raise
                await self.refresh(deadline, avoid=where)
                where = fut = None
            except (RedisConnectionError, RedisTimeoutError):
                self._refresh_soon(avoid=where)  # the command may have run: never sent twice
                raise
            except ResponseError as exc:
                text = str(exc)
                redirect = _redirect(exc)
                redirects += 1
                if redirects > _MAX_REDIRECTS or loop.time() >= deadline:
                    raise
                if redirect is not None:
                    self.redirects += 1
                    kind, _, target = redirect
                    if kind == "MOVED":
                        self._slots[slot] = where = target
                        fut = self._conn(target).call(command)
                        self._refresh_soon(prefer=target)  # the node that answered MOVED knows best
                    else:  # ASK: this one command, once, on the importing node
                        conn = self._conn(target)
                        asking = conn.call(_ASKING)
                        asking.add_done_callback(_retrieve)
                        fut = conn.call(command)
                    continue
                if text.startswith(("TRYAGAIN", "CLUSTERDOWN")):
                    await asyncio.sleep(min(0.05 * redirects, max(0.0, deadline - loop.time())))
                    if text.startswith("CLUSTERDOWN"):
                        self._refresh_soon()
                    where = fut = None
                    continue
                raise

    def _conn(self, where: str) -> WireConnection:
        conn = self._conns.get(where)
        if conn is None:
            host, port = _split(where)
            conn = self._conns[where] = WireConnection(self.url.node_url(host, port), timeout_s=self.timeout_s,
                                                       max_buffer_bytes=self.max_buffer_bytes)
        return conn

    def _forget(self, where: str | None) -> None:
        """A node that cannot be reached: no slot points at it until a new map says so."""
        if where is None:
            return
        slots = self._slots
        for i in range(SLOTS):
            if slots[i] == where:
                slots[i] = None

    # -- the slot map --------------------------------------------------------------------------------------

    def _refresh_soon(self, avoid: str | None = None, prefer: str | None = None) -> None:
        if self._refreshing is not None:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(avoid, prefer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_quietly(self, avoid: str | None, prefer: str | None) -> None:
        try:
            await self.refresh(asyncio.get_running_loop().time() + self.timeout_s, avoid=avoid, prefer=prefer)
        except (RedisError, OSError) as exc:
            log.warning("Redis Cluster slot map not refreshed", extra={"error": repr(exc)})

    async def refresh(self, deadline: float | None = None, avoid: str | None = None,
                      prefer: str | None = None) -> None:
        """Read the slot map (CLUSTER SLOTS) from the first node that answers: `prefer` alone first, then
        the known nodes (the one to avoid last), then the seeds. Concurrent callers share one read, and
        reads are at least `MIN_REFRESH_S` apart (a master that is down makes every call ask)."""
        task = self._refreshing
        if task is None:
            task = self._refreshing = asyncio.get_running_loop().create_task(self._refresh(avoid, prefer))
            task.add_done_callback(self._refreshed)
        loop = asyncio.get_running_loop()
        remaining = (deadline - loop.time()) if deadline is not None else self.timeout_s
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await asyncio.shield(task)
        except TimeoutError:
            raise RedisTimeoutError(f"no node of the Redis Cluster at {self.url.where} gave its slot map "
                                    f"within {self.timeout_s:g} s") from None

    def _refreshed(self, task: asyncio.Task) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved: callers that waited saw it

    async def _refresh(self, avoid: str | None, prefer: str | None) -> None:
        loop = asyncio.get_running_loop()
        wait = self._refreshed_at + MIN_REFRESH_S - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        seeds = [f"{h}:{p}" for h, p in self.url.seeds]
        order = [w for w in dict.fromkeys(self._known + seeds) if w not in (avoid, prefer)] + ([avoid] if avoid else [])
        # Ask a few nodes at once and take the first map: a dead node costs no more than a live one.
        rounds = ([[prefer]] if prefer else []) + [order[i:i + 3] for i in range(0, len(order), 3)]
        errors = []
        try:
            await self._ask(rounds, errors)
        finally:
            self._refreshed_at = loop.time()

    async def _ask(self, rounds: list[list[str]], errors: list[str]) -> None:
        for batch in rounds:
            asks = {asyncio.ensure_future(self._conn(w).call(_CLUSTER_SLOTS)): w for w in batch}
            pending = set(asks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    try:
                        reply = fut.result()
                    except (RedisError, OSError) as exc:
                        errors.append(f"{asks[fut]}: {exc}")
                        continue
                    for other in pending:
                        other.add_done_callback(_retrieve)
                    self._apply(reply, asks[fut])
                    return
        raise RedisConnectionError(f"no node of the Redis Cluster answered CLUSTER SLOTS ({'; '.join(errors)})")

    def _apply(self, reply: list[Any], asked: str) -> None:
        slots: list[str | None] = [None] * SLOTS
        masters: list[str] = []
        replicas: list[str] = []
        asked_host = _split(asked)[0]
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            nodes = [master, *entry[3:]]
            names = []
            for node in nodes:
                host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
                if host in ("", "?"):
                    host = asked_host  # the node does not know its own address: the one we reached it at
                names.append(f"{host}:{int(node[1])}")
            slots[start:end + 1] = [names[0]] * (end - start + 1)
            masters.append(names[0])
            replicas += names[1:]
        self._slots = slots
        known = list(dict.fromkeys(masters + replicas))
        gone = [w for w in self._conns if w not in known and w not in {f"{h}:{p}" for h, p in self.url.seeds}]
        self._known = known
        self.refreshes += 1
        for where in gone:  # nodes that left the cluster
            conn = self._conns.pop(where)
            task = asyncio.get_running_loop().create_task(conn.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def master_of(self, slot: int) -> str | None:
        return self._slots[slot]

    async def close(self) -> None:
        task = self._refreshing
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
