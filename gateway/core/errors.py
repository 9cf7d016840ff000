"""Domain errors with stable codes, and the one place that maps them to HTTP.

Every error leaves the gateway in one shape:
`{"error": {"code": "<snake_case>", "message": "<human sentence>", "details": {...}}}`.
"""

from __future__ import annotations

from typing import Any

import orjson

# Status for each stable code; services raise codes, never statuses.
STATUS = {
    "bad_request": 400,
    "malformed_json": 400,
    "unauthorized": 401,
    "invalid_token": 401,
    "token_expired": 401,
    "forbidden": 403,
    "wrong_event": 403,
    "admission_required": 403,
    "not_found": 404,
    "event_not_found": 404,
    "hold_not_found": 404,
    "order_not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "seat_unavailable": 409,
    "sold_out": 409,
    "hold_expired": 409,
    "not_on_sale": 409,
    "invalid_state": 409,
    "idempotency_conflict": 422,
    "payment_declined": 402,
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "limit_exceeded": 429,
    "address_limit_exceeded": 429,
    "proof_of_work_required": 428,
    "rate_limited": 429,
    "busy": 503,
    "internal_error": 500,
    "unavailable": 503,
    "payments_unavailable": 503,
}


class DomainError(Exception):
    """An answer a client should see: a stable code, a sentence, optional details."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        self.status = status or STATUS.get(code, 400)
        self.headers = headers or {}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": details or {}}})


def store_unavailable() -> DomainError:
    """What a buyer sees when Redis does not answer within the request budget (or at all)."""
    return DomainError("unavailable", "The sale is temporarily unavailable; try again in a moment.",
                       headers={"Retry-After": "1"})


def database_unavailable() -> DomainError:
    """What an organiser sees when Postgres does not answer: sales go on, this request cannot."""
    return DomainError("unavailable", "Organiser data is temporarily unavailable; sales and scans go on. "
                       "Try again in a moment.", headers={"Retry-After": "5"})
