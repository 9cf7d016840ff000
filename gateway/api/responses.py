"""orjson responses, and the common error shape as the OpenAPI document describes it."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(BaseModel):
    """Every error: `{"error": {"code": "<snake_case>", "message": "<human sentence>", "details": {...}}}`."""

    error: ErrorDetail


_WHY = {400: "Malformed request (e.g. a body that is not JSON)", 401: "Missing, invalid or expired token or key",
        402: "Payment declined", 403: "Not allowed for this key, device or buyer",
        404: "No such resource (or not this organisation's)", 409: "Conflicts with the current state",
        413: "Body too large", 415: "Body not JSON (or CSV where a seat map is sent)",
        422: "Invalid input", 429: "Rate or per-buyer limit (Retry-After when it passes)",
        503: "Temporarily unavailable (Retry-After)"}
# Documented on every route (gateway/api/app.py); a route adds its own (checkout: 402).
COMMON_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries of these statuses, each with the common error shape."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
