"""The round-robin proxy of the several-gateways test (tests/utils/balancer.py), against small upstreams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from gateway.stack.embedded import free_port
from tests.utils.balancer import UPSTREAM_HEADER, Balancer

pytestmark = pytest.mark.anyio


def _upstream(name: str, release: asyncio.Event) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "path": request.path_qs, "xff": request.headers.get("X-Forwarded-For"),
                                  "body": (await request.read()).decode(), "method": request.method})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await release.wait()  # the second event only after the client saw the first one
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/stream", stream)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_round_robin_forwarding_failover_and_streaming():
    release = asyncio.Event()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with _serve(_upstream("a", release)) as a, _serve(_upstream("b", release)) as b:
        balancer = Balancer([a, dead, b], check_s=60)  # no health check in between: failover on connect
        async with _serve(balancer.app()) as proxy, httpx.AsyncClient(base_url=proxy, timeout=10) as c:
            answers = [await c.post("/v1/x?y=1%2F2", content=b"hello", headers={"X-Forwarded-For": "203.0.113.9"})
                       for _ in range(6)]
            assert all(r.status_code == 200 for r in answers)
            served = [r.headers[UPSTREAM_HEADER] for r in answers]
            assert dead not in served and set(served) == {a, b}
            assert all(x != y for x, y in zip(served[1:], served[2:])), served  # alternates once the dead one is out
            body = answers[0].json()
            assert body["path"] == "/v1/x?y=1%2F2" and body["body"] == "hello" and body["method"] == "POST"
            assert body["xff"] == "203.0.113.9, 127.0.0.1"  # the client's address appended to what it sent

            async with c.stream("GET", "/stream") as resp:
                chunks = resp.aiter_bytes()
                assert await anext(chunks) == b"data: first\n\n"  # streamed, not buffered
                release.set()
                assert b"".join([chunk async for chunk in chunks]) == b"data: second\n\n"
