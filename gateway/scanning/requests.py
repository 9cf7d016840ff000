"""The scanning request bodies, checked by hand (the scan route is answered by the edge, without
pydantic): every bad input is a 422 `validation_error` naming the field, never a 500."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.core.errors import DomainError

SCAN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_CODE = 1000
MAX_BATCH = 500
MAX_QUEUE = 1_000_000
RESULTS = ("admitted", "duplicate", "invalid", "wrong_event", "void", "exited", "not_inside")
_SCAN_FIELDS = {"code", "scan_id", "direction", "scanned_at"}
_BATCH_SCAN_FIELDS = _SCAN_FIELDS | {"local_result"}
_BATCH_FIELDS = {"scans", "sent_at", "queue_length"}
# Timestamps a device may send: from 2000-01-01 to 2100-01-01 (milliseconds).
_MIN_MS, _MAX_MS = 946_684_800_000, 4_102_444_800_000


@dataclass(frozen=True, slots=True)
class ScanRequest:
    code: str
    scan_id: str | None
    direction: str
    scanned_at_ms: int | None
    local_result: str | None = None


def invalid(field: str, message: str, value: Any = None) -> DomainError:
    return DomainError("validation_error", f"Invalid request: {field}: {message}.",
                       details={"field": field, "value": value if isinstance(value, (str, int, float, bool))
                                else None}, status=422)


def timestamp_ms(value: Any, field: str) -> int:
    """RFC 3339 text with a time zone, or integer milliseconds since the epoch."""
    if isinstance(value, bool):
        raise invalid(field, "must be an RFC 3339 timestamp or integer milliseconds", value)
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise invalid(field, "must be an RFC 3339 timestamp or integer milliseconds", value) from None
        if parsed.tzinfo is None:
            raise invalid(field, "needs a time zone (e.g. a trailing Z)", value)
        ms = round(parsed.timestamp() * 1000)
    else:
        raise invalid(field, "must be an RFC 3339 timestamp or integer milliseconds", value)
    if not _MIN_MS <= ms <= _MAX_MS:
        raise invalid(field, "is not a plausible time", value)
    return ms


def queue_length(value: Any, field: str = "X-Scanner-Queue") -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 7:  # not "²"
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUEUE:
        raise invalid(field, f"must be an integer from 0 to {MAX_QUEUE}", value)
    return value


def _scan(body: Any, where: str, *, batch: bool) -> ScanRequest:
    if not isinstance(body, dict):
        raise invalid(where or "body", "must be a JSON object")
    unknown = set(body) - (_BATCH_SCAN_FIELDS if batch else _SCAN_FIELDS)
    if unknown:
        raise invalid(f"{where}{sorted(unknown)[0]}", "is not a known field")
    code = body.get("code")
    if not isinstance(code, str):
        raise invalid(f"{where}code", "is required and must be a string", code)
    if len(code) > MAX_CODE:
        raise invalid(f"{where}code", f"is longer than {MAX_CODE} characters")
    scan_id = body.get("scan_id")
    if scan_id is None and batch:
        raise invalid(f"{where}scan_id", "is required in a batch")
    if scan_id is not None and (not isinstance(scan_id, str) or not SCAN_ID.match(scan_id)):
        raise invalid(f"{where}scan_id", "must be 1-64 characters of A-Z a-z 0-9 . _ : -", scan_id)
    direction = body.get("direction", "in")
    if direction not in ("in", "out"):
        raise invalid(f"{where}direction", 'must be "in" or "out"', direction)
    raw_at = body.get("scanned_at")
    if raw_at is None and batch:
        raise invalid(f"{where}scanned_at", "is required in a batch")
    at = None if raw_at is None else timestamp_ms(raw_at, f"{where}scanned_at")
    local = body.get("local_result")
    if local is not None and local not in RESULTS:
        raise invalid(f"{where}local_result", "must be one of " + ", ".join(RESULTS), local)
    return ScanRequest(code, scan_id, direction, at, local)


def scan_request(body: Any) -> ScanRequest:
    return _scan(body, "", batch=False)


@dataclass(frozen=True, slots=True)
class BatchRequest:
    scans: list[ScanRequest]
    sent_at_ms: int | None
    queue_length: int | None


def batch_request(body: Any) -> BatchRequest:
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    unknown = set(body) - _BATCH_FIELDS
    if unknown:
        raise invalid(sorted(unknown)[0], "is not a known field")
    scans = body.get("scans")
    if not isinstance(scans, list) or not 1 <= len(scans) <= MAX_BATCH:
        raise invalid("scans", f"must be a list of 1 to {MAX_BATCH} scans")
    parsed = [_scan(item, f"scans.{i}.", batch=True) for i, item in enumerate(scans)]
    seen: set[str] = set()
    for i, scan in enumerate(parsed):
        assert scan.scan_id is not None
        if scan.scan_id in seen:
            raise invalid(f"scans.{i}.scan_id", "appears twice in this batch", scan.scan_id)
        seen.add(scan.scan_id)
    sent = body.get("sent_at")
    return BatchRequest(parsed, None if sent is None else timestamp_ms(sent, "sent_at"),
                        queue_length(body.get("queue_length"), "queue_length"))


def since_version(raw: str | None) -> int | None:
    """`?since=`: a non-negative integer, else None (a full manifest)."""
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return None
    return int(raw)
