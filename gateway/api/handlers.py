"""Exception handlers: every error leaves in the common shape."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from redis.exceptions import RedisError

from gateway.core.errors import DomainError, database_unavailable, error_body, store_unavailable
from gateway.core.logs import request_id_var

log = logging.getLogger("flashgate.api")

# Postgres unreachable, as asyncpg and the pool raise it: refused or reset connections, the pool's connect
# timeout, a connection lost mid-query, a server starting or shutting down, no connection slot left.
POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 401: "unauthorized",
               403: "forbidden", 413: "body_too_large", 415: "unsupported_media_type"}


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return _json(exc.status, error_body(exc.code, exc.message, exc.details), exc.headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _json(400, error_body("malformed_json", "The request body is not valid JSON.",
                                     {"errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg")}
                                                 for e in errors]}))
    fields = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in errors]
    first = fields[0] if fields else {"loc": [], "msg": "invalid"}
    where = ".".join(first["loc"][1:] if first["loc"][:1] in (["body"], ["query"], ["path"]) else first["loc"])
    return _json(422, error_body("validation_error", f"Invalid request: {where or 'input'}: {first['msg']}.",
                                 {"errors": fields}))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
    if exc.status_code == 404:
        message = f"No such resource: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail) if exc.detail else "Request refused."
    return _json(exc.status_code, error_body(code, message), dict(exc.headers or {}))


async def redis_error(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable", extra={"path": request.url.path, "error": repr(exc)})
    err = store_unavailable()
    return _json(err.status, error_body(err.code, err.message, err.details), err.headers)


async def postgres_down(request: Request, exc: Exception) -> Response:
    """Postgres away: organiser routes that need it answer 503 with Retry-After (sales never need it)."""
    log.warning("Postgres unavailable", extra={"path": request.url.path, "error": repr(exc)})
    err = database_unavailable()
    return _json(err.status, error_body(err.code, err.message, err.details), err.headers)


async def data_error(request: Request, exc: Exception) -> Response:
    """A value Postgres cannot store (a NUL character, a number out of range) that a route's own
    validation let through: the statement failed, nothing was written, so it is the request's fault."""
    log.warning("value refused by Postgres", extra={"path": request.url.path, "error": repr(exc)})
    return _json(422, error_body("validation_error", "Invalid request: a value cannot be stored (out of range, "
                                 "or text with a NUL character).", {"errors": []}))


async def unhandled(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    request_id = request_id_var.get()  # set by the edge; also in the X-Request-ID header
    return _json(500, error_body("internal_error", "Something went wrong on our side; the request id "
                                 "identifies it in our logs.", {"request_id": request_id} if request_id else None))


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RedisError, redis_error)
    app.add_exception_handler(asyncpg.DataError, data_error)
    for exc_type in POSTGRES_DOWN:
        app.add_exception_handler(exc_type, postgres_down)
    app.add_exception_handler(Exception, unhandled)
