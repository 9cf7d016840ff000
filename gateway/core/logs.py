"""Structured JSON logs on stderr: one object per line.

A line written while a framework request is served carries its `request_id` and, once routed, its `route`
(the template, never the raw path), `event_id` (a path parameter) and `organisation_id` (the caller's, set
by the API-key dependency): read from the request's scope only when a line is written. Tokens, keys and
ticket codes are never put in a log line (docs/operations.md).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
request_scope_var: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_scope",
                                                                                         default=None)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        scope = request_scope_var.get()
        if scope is not None:
            _request_fields(scope, entry)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _request_fields(scope: dict[str, Any], entry: dict[str, Any]) -> None:
    route = getattr(scope.get("route"), "path", None)
    if route:
        entry["route"] = route
    event_id = (scope.get("path_params") or {}).get("event_id")
    if event_id is not None:
        entry["event_id"] = event_id
    org = (scope.get("state") or {}).get("organisation_id")
    if org is not None:
        entry["organisation_id"] = org


def configure(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
