"""Signed stateless tokens (HMAC-SHA256): buyer, queue, admission and order tokens, order page links.

Format: `<kind>.<base64url(JSON payload)>.<base64url(first 16 bytes of HMAC)>`, base64url unpadded
and canonical: any other spelling of the same bytes is refused.
The MAC covers kind and payload, so a token of one kind never passes as another.
Verification needs no Redis and no database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson

from gateway.core.errors import DomainError

_MAC_BYTES = 16
_SEEN_MAX = 200_000  # verified tokens remembered per process (~100 MB worst case, usually far less)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the one canonical spelling: no padding, no other
    characters, no bits set in the unused low bits of the last character (lenient decoders accept
    several spellings of the same bytes, and anything keyed on the token string could be sidestepped)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical encoding")
    return data


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"flashgate-tokens|" + secret).digest()
        self._seen: dict[str, tuple[str, dict[str, Any]]] = {}

    def _mac(self, signed: bytes) -> bytes:
        return hmac.digest(self._key, signed, "sha256")[:_MAC_BYTES]

    def sign(self, kind: str, payload: dict[str, Any]) -> str:
        body = _b64(orjson.dumps(payload))
        signed = f"{kind}.{body}"
        return f"{signed}.{_b64(self._mac(signed.encode()))}"

    def verify(self, token: str, kind: str, *, now: float | None = None) -> dict[str, Any]:
        """The payload of a valid, unexpired token of this kind; else a 401 DomainError.

        Tokens already verified are remembered (bounded), so a buyer's repeated requests cost a
        dict lookup and the expiry check, not a MAC. Callers must not change the payload."""
        hit = self._seen.get(token)
        if hit is not None and hit[0] == kind:
            payload = hit[1]
            exp = payload.get("exp")
            if exp is None or (now or time.time()) < exp:
                return payload
        payload = self._verify(token, kind, now=now)
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen[token] = (kind, payload)
        return payload

    def _verify(self, token: str, kind: str, *, now: float | None = None) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != kind or len(token) > 4096:
            raise DomainError("invalid_token", f"The {kind_name(kind)} token is missing or malformed.")
        signed = f"{parts[0]}.{parts[1]}".encode()
        try:
            mac = _unb64(parts[2])
            ok = hmac.compare_digest(mac, self._mac(signed))
            payload = orjson.loads(_unb64(parts[1])) if ok else None
        except (ValueError, orjson.JSONDecodeError):
            ok, payload = False, None
        if not ok or not isinstance(payload, dict):
            raise DomainError("invalid_token", f"The {kind_name(kind)} token is not valid.")
        exp = payload.get("exp")
        if exp is not None and (now or time.time()) >= exp:
            raise DomainError("token_expired", f"The {kind_name(kind)} token has expired.",
                              details={"expired_at": exp})
        return payload


_KIND_NAMES = {"b": "buyer", "q": "queue", "a": "admission", "o": "order", "l": "order page link",
               "d": "device", "w": "proof-of-work challenge"}


def kind_name(kind: str) -> str:
    return _KIND_NAMES.get(kind, kind)
