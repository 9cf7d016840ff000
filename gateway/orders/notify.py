"""Notifications: order e-mails and organiser webhooks, queued in a Redis stream.

Producers only XADD (`enqueue`), so a sale never waits for a mail server or a
webhook endpoint. `gateway.workers.notify_worker` delivers, retries with backoff
and, after the last attempt, moves the message to a dead-letter stream that
organisers list (`list_dead`) and replay (`replay_dead`).

Keys (all under the runtime prefix):
- `notify`        stream of messages to send; fields kind, payload (JSON), attempt, nid, org
- `notify:retry`  sorted set of failed messages waiting for their next try (score = due time)
- `notify:dead`   stream of messages that failed every attempt (+ last_error, failed_at)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson

from gateway.core.config import NotifySettings
from gateway.core.runtime import Runtime
from gateway.core.sealing import Sealer, webhook_context
from gateway.store.keys import notify_key
from gateway.store.cluster import ready_for_transaction

Kind = Literal["email", "webhook"]
KINDS = ("email", "webhook")
SIGNATURE_HEADER = "X-Flashgate-Signature"


def stream_key(runtime: Runtime) -> str:
    return notify_key(runtime.prefix)


def retry_key(runtime: Runtime) -> str:
    return notify_key(runtime.prefix, "retry")


def dead_key(runtime: Runtime) -> str:
    return notify_key(runtime.prefix, "dead")


def message_fields(*, kind: str, payload: Mapping[str, Any] | bytes, attempt: int, nid: str,
                   org: str = "") -> dict[str, bytes | str | int]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return {"kind": kind, "payload": raw, "attempt": attempt, "nid": nid, "org": org,
            "created_at": repr(time.time())}


def _check(kind: str, payload: Mapping[str, Any]) -> None:
    if kind == "email":
        missing = [f for f in ("to", "subject", "text") if not payload.get(f)]
    elif kind == "webhook":
        missing = [f for f in ("url", "event_type") if not payload.get(f)]
        if not payload.get("secret") and not payload.get("sealed_secret"):
            missing.append("secret")
        if not str(payload.get("url", "")).startswith(("http://", "https://")):
            missing.append("url (http or https)")
    else:
        raise ValueError(f"unknown notification kind {kind!r}; expected one of {KINDS}")
    if missing:
        raise ValueError(f"{kind} notification is missing {', '.join(missing)}")


async def enqueue(runtime: Runtime, *, kind: Kind, payload: dict[str, Any], org_id: int | str | None = None) -> str:
    """Queue one notification and return its stream id. One XADD; never waits for delivery.

    Payloads: email `{to, subject, text, html?, qr_codes?}`; webhook `{url, secret, event_type, body}`.
    `org_id` scopes the message for `list_dead` / `replay_dead`.
    """
    _check(kind, payload)
    if kind == "webhook" and payload.get("secret"):
        payload = seal_secret(runtime, payload, org_id)
    fields = message_fields(kind=kind, payload=payload, attempt=0, nid=uuid.uuid4().hex,
                            org="" if org_id is None else str(org_id))
    entry_id = await runtime.redis.xadd(stream_key(runtime), fields)
    return entry_id.decode()


def order_confirmation_email(*, to: str, order_id: str, event_name: str,
                             tickets: Sequence[Mapping[str, Any]], order_url: str | None = None) -> dict[str, Any]:
    """The e-mail payload of an order confirmation: one line and one QR attachment per ticket.

    Each ticket mapping has `code` and optionally `seat` or `type`.
    """
    lines = [f"Thank you for your order {order_id} for {event_name}.", "", "Your tickets:"]
    items = []
    for n, ticket in enumerate(tickets, 1):
        label = ticket.get("seat") or ticket.get("type") or f"Ticket {n}"
        lines.append(f"  {label}: {ticket['code']}")
        items.append(f"<li>{html.escape(str(label))}: <code>{html.escape(ticket['code'])}</code></li>")
    lines += ["", "Show the attached QR codes (or the codes above) at the door."]
    if order_url:
        lines.append(f"Your order: {order_url}")
    body_html = (f"<p>Thank you for your order <b>{html.escape(order_id)}</b> for {html.escape(event_name)}.</p>"
                 f"<p>Your tickets:</p><ul>{''.join(items)}</ul>"
                 "<p>Show the attached QR codes (or the codes above) at the door.</p>")
    return {"to": to, "subject": f"Your tickets for {event_name} (order {order_id})", "text": "\n".join(lines),
            "html": body_html, "qr_codes": [t["code"] for t in tickets]}


def seal_secret(runtime: Runtime, payload: Mapping[str, Any], org_id: int | str | None) -> dict[str, Any]:
    """The webhook payload as it is queued: the signing secret sealed for the organisation (a Redis dump,
    replica or backup of the notification stream must not let anyone sign webhooks in its name)."""
    out = {k: v for k, v in payload.items() if k != "secret"}
    blob = runtime.sealer.seal(str(payload["secret"]).encode(), context=webhook_context(org_id))
    out["sealed_secret"] = base64.b64encode(blob).decode()
    return out


def open_secret(sealer: Sealer, payload: Mapping[str, Any], org_id: str) -> str:
    """The signing secret of a queued webhook payload (sealed by `enqueue`; a plain one from before)."""
    if "sealed_secret" in payload:
        blob = base64.b64decode(str(payload["sealed_secret"]), validate=True)
        return sealer.unseal(blob, context=webhook_context(org_id)).decode()
    return str(payload["secret"])


def sign_webhook(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The signature header value: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_webhook(secret: str | bytes, header: str, body: bytes, *, tolerance_s: float = 300,
                   now: float | None = None) -> bool:
    """What a receiver does: check the HMAC in constant time and refuse stale timestamps (replays)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign_webhook(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _decode_entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    data = {k.decode(): v for k, v in fields.items()}
    payload = orjson.loads(data.get("payload", b"{}"))
    if isinstance(payload, dict) and ("secret" in payload or "sealed_secret" in payload):
        payload.pop("sealed_secret", None)  # shown as it was given, masked
        payload["secret"] = "***"
    return {"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            "kind": data.get("kind", b"").decode(), "payload": payload,
            "attempts": int(data.get("attempt", b"0")), "nid": data.get("nid", b"").decode(),
            "org": data.get("org", b"").decode() or None, "last_error": data.get("last_error", b"").decode(),
            "failed_at": float(data.get("failed_at", b"0") or 0)}


async def _scan_dead(runtime: Runtime, org_id: int | str | None, limit: int | None):
    start, org = "-", None if org_id is None else str(org_id)
    found = 0
    while limit is None or found < limit:
        page = await runtime.redis.xrange(dead_key(runtime), min=start, count=500)
        if not page:
            return
        for entry_id, fields in page:
            if org is None or fields.get(b"org", b"").decode() == org:
                found += 1
                yield entry_id, fields
                if limit is not None and found >= limit:
                    return
        start = "(" + page[-1][0].decode()


async def list_dead(runtime: Runtime, limit: int = 100, org_id: int | str | None = None) -> list[dict[str, Any]]:
    """Dead letters, oldest first (webhook secrets masked); only `org_id`'s when given."""
    return [_decode_entry(entry_id, fields) async for entry_id, fields in _scan_dead(runtime, org_id, limit)]


async def replay_dead(runtime: Runtime, ids: list[str] | None = None, org_id: int | str | None = None) -> int:
    """Move dead letters (all, or `ids`) back to the send stream with attempts reset; returns how many."""
    if ids is None:
        entries = [e async for e in _scan_dead(runtime, org_id, None)]
    else:
        entries = []
        for entry_id in ids:
            found = await runtime.redis.xrange(dead_key(runtime), min=entry_id, max=entry_id)
            if found and (org_id is None or found[0][1].get(b"org", b"").decode() == str(org_id)):
                entries.append(found[0])
    moved = 0
    for entry_id, fields in entries:
        await ready_for_transaction(runtime.redis)
        async with runtime.redis.pipeline(transaction=True) as pipe:
            pipe.xdel(dead_key(runtime), entry_id)
            pipe.xadd(stream_key(runtime), message_fields(
                kind=fields[b"kind"].decode(), payload=fields[b"payload"], attempt=0,
                nid=fields.get(b"nid", b"").decode() or uuid.uuid4().hex, org=fields.get(b"org", b"").decode()))
            deleted, _ = await pipe.execute()
        moved += int(deleted)
    return moved
