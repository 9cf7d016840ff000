"""The gateway's door-device API over HTTP (docs/scanning.md, "HTTP contract").

Every failure that means "the gateway is not there" — no route, refused or
reset connection, timeout, any 5xx (a proxy's 502/504, the gateway's 503, a
fault) — becomes `Unreachable`, the one signal the scanner uses to go
offline. A refused device token becomes `Refused`: going offline would not
help, the operator has to act.
"""

from __future__ import annotations

from typing import Any

import httpx

# Short budgets: a door cannot wait. A refused connection fails at once; a black-holed network costs
# the connect timeout once, then the scanner is offline and probes in the background.
TIMEOUT = httpx.Timeout(2.0, connect=1.0)
UNREACHABLE_STATUSES = frozenset({502, 503, 504})


class Unreachable(Exception):
    """The gateway did not answer, or answered that it cannot serve now.

    `alive` is True for the gateway's own `503 unavailable` (it runs, Redis does not): scans may
    still be answered in degraded mode, while manifests and batch uploads must wait.
    """

    def __init__(self, message: str, *, alive: bool = False) -> None:
        super().__init__(message)
        self.alive = alive


class Refused(Exception):
    """The gateway refused this device (token unknown or revoked)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BadRequest(Exception):
    """The gateway answered 4xx to what we sent: a bug or bad input, never a reason to go offline."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class GatewayClient:
    def __init__(self, base_url: str, token: str, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}", "User-Agent": "flashgate-scanner/1"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, queue: int | None = None, **kwargs: Any) -> Any:
        headers = {} if queue is None else {"X-Scanner-Queue": str(max(0, min(queue, 1_000_000)))}
        try:
            resp = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:  # connect/read errors, timeouts, protocol errors
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code in UNREACHABLE_STATUSES:
            alive = resp.status_code == 503 and resp.headers.get("content-type", "").startswith("application/json")
            raise Unreachable(f"HTTP {resp.status_code}", alive=alive)
        try:
            body = resp.json()
        except ValueError:
            if resp.status_code >= 500:
                raise Unreachable(f"HTTP {resp.status_code}") from None
            raise BadRequest(resp.status_code, "not_json", resp.text[:200]) from None
        if resp.status_code >= 500:
            raise Unreachable(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            code, message = str(error.get("code", "error")), str(error.get("message", resp.text[:200]))
            if resp.status_code in (401, 403):
                raise Refused(code, message)
            raise BadRequest(resp.status_code, code, message)
        return body

    def manifest(self, since: int | None = None, *, queue: int | None = None) -> dict[str, Any]:
        params = {} if since is None else {"since": since}
        return self._call("GET", "/v1/scan/manifest", queue, params=params)

    def scan(self, body: dict[str, Any], *, queue: int | None = None) -> dict[str, Any]:
        return self._call("POST", "/v1/scan", queue, json=body)

    def batch(self, scans: list[dict[str, Any]], *, sent_at: str, queue: int) -> dict[str, Any]:
        """Upload offline scans; `queue` is how many stay waiting after these."""
        return self._call("POST", "/v1/scan/batch", queue,
                          json={"sent_at": sent_at, "queue_length": queue, "scans": scans})
