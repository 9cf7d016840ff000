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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gateway.core.errors import DomainError, error_body, store_unavailable
from gateway.core.logs import request_id_var

if TYPE_CHECKING:
    from gateway.api.hot import HotRoutes

log = logging.getLogger("flashgate.edge")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RID_OK = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


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
    def __init__(self, app: ASGIApp, *, max_body: int, hot: HotRoutes | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        content_length = None
        content_type = b""
        chunked = False
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _RID_OK.match(value):
                request_id = value.decode()
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        request_id = request_id or new_request_id()
        try:
            if content_length is not None and (content_length < 0 or content_length > self.max_body):
                raise DomainError("body_too_large", f"The request body is larger than {self.max_body} bytes.",
                                  details={"max_bytes": self.max_body})
            if scope["method"] in _BODY_METHODS and (chunked or (content_length or 0) > 0):
                media = content_type.split(b";", 1)[0].strip().lower()
                if media != b"application/json" and not media.endswith(b"+json"):
                    raise DomainError("unsupported_media_type",
                                      "Send the request body as JSON with Content-Type: application/json.",
                                      details={"content_type": content_type.decode(errors="replace")})
            hot = self.hot
            route = hot.match(scope["method"], scope["path"]) if hot is not None else None
        except DomainError as err:
            await send_error(send, err, request_id)
            return
        if route is not None:
            # Hot routes send their one response at the very end, so any error is raised before it.
            # Their bodies are read with the same size limit (read_body), without wrappers.
            handler, arg = route
            try:
                await handler(scope, receive, send, request_id, arg)
            except DomainError as err:
                await send_error(send, err, request_id)
            except BodyTooLarge:
                await send_error(send, self._too_large(), request_id)
            except RedisError as exc:  # Redis down or slower than the budget: 503, never a hang or a 500
                log.warning("Redis unavailable", extra={"path": scope.get("path"), "request_id": request_id,
                                                        "error": repr(exc)})
                await send_error(send, store_unavailable(), request_id)
            except Exception:
                log.exception("unhandled error", extra={"path": scope.get("path"), "request_id": request_id})
                await send_error(send, _internal(request_id), request_id)
            return
        await self._framework(scope, receive, send, request_id)

    def _too_large(self) -> DomainError:
        return DomainError("body_too_large", f"The request body is larger than {self.max_body} bytes.",
                           details={"max_bytes": self.max_body})

    async def _framework(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        rid_header = (b"x-request-id", request_id.encode())
        started = False
        received = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge()
            return message

        # Logs of the framework routes carry the request id (the hot routes pass it explicitly).
        token = request_id_var.set(request_id)
        try:
            await self.app(scope, limited_receive, send_with_id)
        except DomainError as err:
            if not started:
                await send_error(send, err, request_id)
        except BodyTooLarge:
            if not started:
                await send_error(send, self._too_large(), request_id)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path"), "request_id": request_id})
            if not started:
                await send_error(send, _internal(request_id), request_id)
        finally:
            request_id_var.reset(token)


def _internal(request_id: str) -> DomainError:
    return DomainError("internal_error", "Something went wrong on our side; the request id identifies it in "
                       "our logs.", details={"request_id": request_id})
