"""The edge: a bare ASGI layer in front of FastAPI.

It gives every response a request id, refuses oversized bodies (413) and
non-JSON bodies (415) before any parsing, answers the hot routes itself
(gateway/api/hot.py; FastAPI costs more per request than the work of
those routes), and turns any escaped exception into the common error shape.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gateway.core import metrics
from gateway.core.errors import DomainError, error_body, store_unavailable
from gateway.core.logs import request_id_var, request_scope_var

if TYPE_CHECKING:
    from gateway.api.hot import HotRoutes

log = logging.getLogger("flashgate.edge")
access = logging.getLogger("flashgate.access")  # one line per framework request (the hot routes log none)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RID_OK = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Seat-map uploads (CSV, up to 250,000 seats) are the one non-JSON body, with their own size limit.
_UPLOAD_PATH = re.compile(r"^/v1/events/[0-9]+/seat-map$")
_UPLOAD_MEDIA = (b"text/csv", b"text/plain")


class BodyTooLarge(Exception):
    pass


_RID_PREFIX = os.urandom(4).hex()  # per process: ids stay unique across workers and restarts
_rid_counter = itertools.count(1)


def _new_rid_prefix() -> None:
    global _RID_PREFIX, _rid_counter
    _RID_PREFIX = os.urandom(4).hex()
    _rid_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_rid_prefix)  # forked workers never share a prefix


def new_request_id() -> str:
    """16 hex digits: a random per-process prefix and a counter (a counter costs a fraction of a
    random read, and request ids need to be unique, not secret)."""
    return "%s%08x" % (_RID_PREFIX, next(_rid_counter) & 0xFFFFFFFF)


async def send_json(send: Send, status: int, body: bytes, request_id: str,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"x-request-id", request_id.encode())]
    if headers:
        raw += headers
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: DomainError, request_id: str) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send_json(send, err.status, error_body(err.code, err.message, err.details), request_id, headers)


class Edge:
    def __init__(self, app: ASGIApp, *, max_body: int, hot: HotRoutes | None = None,
                 upload_max_body: int | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.upload_max_body = upload_max_body or max_body
        self.hot = hot
        # Latency series of the hot routes, by bound handler (made once: a request costs a dict lookup).
        self._hot_timers = {getattr(hot, name): timer for name, timer in metrics.HOT_TIMERS.items()} if hot else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        content_length = None
        content_type = b""
        chunked = False
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _RID_OK.match(value):
                request_id = value.decode()
            elif name == b"content-length":  # bytes.isdigit(): ASCII digits only; more than 18 is too large
                content_length = (int(value) if len(value) <= 18 else 1 << 62) if value.isdigit() else -1
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        request_id = request_id or new_request_id()
        upload = scope["method"] == "PUT" and _UPLOAD_PATH.match(scope["path"]) is not None
        limit = self.upload_max_body if upload else self.max_body
        try:
            if content_length is not None and content_length < 0:
                raise DomainError("bad_request", "The Content-Length header must be a whole number of bytes.",
                                  status=400)
            if content_length is not None and content_length > limit:
                raise self._too_large(limit)
            if scope["method"] in _BODY_METHODS and (chunked or (content_length or 0) > 0):
                media = content_type.split(b";", 1)[0].strip().lower()
                if upload and media in _UPLOAD_MEDIA:
                    pass
                elif media != b"application/json" and not media.endswith(b"+json"):
                    raise DomainError("unsupported_media_type",
                                      "Send the request body as JSON with Content-Type: application/json.",
                                      details={"content_type": content_type.decode(errors="replace")})
            hot = self.hot
            route = hot.match(scope["method"], scope["path"]) if hot is not None else None
        except DomainError as err:
            await send_error(send, err, request_id)
            metrics.framework_timer(scope["method"], None).observe(err.status, time.perf_counter() - started)
            return
        if route is not None:
            # Hot routes send their one response at the very end, so any error is raised before it.
            # Their bodies are read with the same size limit (read_body), without wrappers.
            handler, arg = route
            status = 200
            try:
                await handler(scope, receive, send, request_id, arg)
            except DomainError as err:
                status = err.status
                await send_error(send, err, request_id)
            except BodyTooLarge:
                status = 413
                await send_error(send, self._too_large(self.max_body), request_id)
            except RedisError as exc:  # Redis down or slower than the budget: 503, never a hang or a 500
                status = 503
                log.warning("Redis unavailable", extra={**self._where(handler, arg), "request_id": request_id,
                                                        "error": repr(exc)})
                await send_error(send, store_unavailable(), request_id)
            except Exception:
                status = 500
                log.exception("unhandled error", extra={**self._where(handler, arg), "request_id": request_id})
                await send_error(send, _internal(request_id), request_id)
            timer = self._hot_timers.get(handler)
            if timer is not None:
                timer.observe(status, time.perf_counter() - started)
            return
        await self._framework(scope, receive, send, request_id, limit, started)

    def _where(self, handler: Any, arg: str) -> dict[str, Any]:
        """Log fields of a hot route's request: its route template and, where the path names one, the event."""
        route = metrics.HOT_ROUTES.get(getattr(handler, "__name__", ""), (None, None))[1]
        where: dict[str, Any] = {"route": route}
        if route is not None and route.startswith("/v1/events/{event_id}"):
            where["event_id"] = arg
        return where

    def _too_large(self, limit: int) -> DomainError:
        return DomainError("body_too_large", f"The request body is larger than {limit} bytes.",
                           details={"max_bytes": limit})

    async def _framework(self, scope: Scope, receive: Receive, send: Send, request_id: str, limit: int,
                         began: float) -> None:
        rid_header = (b"x-request-id", request_id.encode())
        started = False
        status = 500
        received = 0
        overflow = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started, status
            if overflow:
                # The body grew past the limit (a chunked body has no Content-Length to refuse up front):
                # whatever the framework makes of the interrupted read (FastAPI answers 400), the client
                # is told 413, once.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    status = 413
                    await send_error(send, self._too_large(limit), request_id)
                return
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise BodyTooLarge()
            return message

        # Logs of the framework routes carry the request id and, once routed, the route template, the event
        # and the caller's organisation (gateway/core/logs.py reads them from the scope); the hot routes
        # pass theirs explicitly.
        token = request_id_var.set(request_id)
        scope_token = request_scope_var.set(scope)
        try:
            await self.app(scope, limited_receive, send_with_id)
        except DomainError as err:
            if not started:
                status = err.status
                await send_error(send, err, request_id)
        except BodyTooLarge:
            if not started:
                status = 413
                await send_error(send, self._too_large(limit), request_id)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path"), "request_id": request_id})
            if not started:
                status = 500
                await send_error(send, _internal(request_id), request_id)
        finally:
            took = time.perf_counter() - began
            metrics.framework_timer(scope["method"], getattr(scope.get("route"), "path", None)).observe(status, took)
            access.info("request", extra={"method": scope["method"], "status": status,
                                          "duration_ms": round(took * 1000, 2)})
            request_scope_var.reset(scope_token)
            request_id_var.reset(token)


def _internal(request_id: str) -> DomainError:
    return DomainError("internal_error", "Something went wrong on our side; the request id identifies it in "
                       "our logs.", details={"request_id": request_id})
