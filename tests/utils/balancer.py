"""A round-robin HTTP reverse proxy in front of several gateways: for the several-gateways test and local use.

    python -m tests.utils.balancer --port 8080 http://127.0.0.1:8001 http://127.0.0.1:8002

Every request goes to the next upstream in turn, whoever sends it (no sticky sessions: one buyer's
consecutive requests reach different hosts). It appends the client's address to `X-Forwarded-For` (so the
gateways must list this proxy in `FLASHGATE_TRUSTED_PROXIES`), sets `X-Forwarded-Proto`, and marks each
answer with `X-Upstream: <the gateway that served it>`. An upstream whose `/readyz` does not answer 200
(checked every `--check-s`) leaves the rotation until it does; a request that cannot connect to one is sent
to the next (nothing was sent yet, so this is safe for a checkout too); any other upstream failure is a 502.
Answers are streamed (the live figures are Server-Sent Events).

A test and development tool: production runs nginx or HAProxy (docs/deployment.md, "Several gateway hosts").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded; Host and the framing headers are set anew.
HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
                 "trailer", "transfer-encoding", "upgrade", "host", "content-length", "x-forwarded-proto"})
REQUEST_DROP = HOP | {"x-forwarded-for"}  # the proxy writes its own
UPSTREAM_HEADER = "X-Upstream"


class Balancer:
    def __init__(self, upstreams: list[str], *, check_s: float = 0.5) -> None:
        if not upstreams:
            raise ValueError("at least one upstream")
        self.upstreams = [u.rstrip("/") for u in upstreams]
        self.ready = dict.fromkeys(self.upstreams, True)
        self.check_s = check_s
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    def order(self) -> list[str]:
        """The upstreams to try for the next request: round robin over the ready ones, then the others (all
        may be reported down at once while they are only slow to answer a health check)."""
        ready = [u for u in self.upstreams if self.ready[u]] or self.upstreams
        start = self._next % len(ready)
        self._next += 1
        turn = ready[start:] + ready[:start]
        return turn + [u for u in self.upstreams if u not in turn]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in REQUEST_DROP]
        prior = [v for k, v in request.headers.items() if k.lower() == "x-forwarded-for"]
        headers.append(("X-Forwarded-For", ", ".join([*prior, request.remote or "-"])))
        headers.append(("X-Forwarded-Proto", request.scheme))
        for upstream in self.order():
            try:
                async with self._session.request(request.method, URL(upstream + request.raw_path, encoded=True),
                                                 headers=headers, data=body or None, allow_redirects=False) as up:
                    resp = web.StreamResponse(status=up.status, reason=up.reason)
                    for k, v in up.headers.items():
                        if k.lower() not in HOP:
                            resp.headers.add(k, v)
                    if up.content_length is not None:
                        resp.content_length = up.content_length
                    resp.headers[UPSTREAM_HEADER] = upstream
                    await resp.prepare(request)
                    async for chunk in up.content.iter_any():
                        await resp.write(chunk)
                    await resp.write_eof()
                    return resp
            except aiohttp.ClientConnectorError:
                self.ready[upstream] = False  # nothing was sent: the next upstream may take it
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return _bad_gateway(f"the gateway {upstream} failed: {type(exc).__name__}")
        return _bad_gateway("no gateway accepted the connection")

    async def check(self) -> None:
        """Health checks: `/readyz` of every upstream, every `check_s`."""
        assert self._session is not None
        while True:
            for upstream in self.upstreams:
                try:
                    async with self._session.get(upstream + "/readyz",
                                                 timeout=aiohttp.ClientTimeout(total=max(1.0, self.check_s))) as r:
                        self.ready[upstream] = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    self.ready[upstream] = False
            await asyncio.sleep(self.check_s)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=60.0))
        checker = asyncio.get_running_loop().create_task(self.check())
        try:
            yield
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            await self._session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.cleanup_ctx.append(self.lifecycle)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def _bad_gateway(message: str) -> web.Response:
    return web.json_response({"error": {"code": "bad_gateway", "message": message, "details": {}}}, status=502)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("upstreams", nargs="+", help="gateway base URLs, e.g. http://127.0.0.1:8001")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--check-s", type=float, default=0.5, help="health-check interval (/readyz)")
    args = parser.parse_args(argv)
    balancer = Balancer(args.upstreams, check_s=args.check_s)
    print(f"balancing http://{args.host}:{args.port} over {', '.join(balancer.upstreams)}", flush=True)
    web.run_app(balancer.app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
