"""The application factory: the edge (hot routes) in front of FastAPI, served by granian.

`create_app` builds the process's services once (`gateway.wiring.build_gateway`)
and hands them to both HTTP fronts; the FastAPI lifespan starts and stops them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api import handlers
from gateway.api.edge import Edge
from gateway.api.hot import HotRoutes
from gateway.api.responses import COMMON_ERRORS, OrjsonResponse, error_responses
from gateway.api.routes import buyer, events, health, orders, pages, stats
from gateway.api.routes import keys as key_routes
from gateway.api.routes import metrics as metrics_routes
from gateway.api.routes import scanning as scan_routes
from gateway.api.routes import waitlist as waitlist_routes
from gateway.core import logs, metrics
from gateway.core.config import Settings, get_settings
from gateway.core.tasks import stop_task
from gateway.wiring import Gateway, build_gateway


def create_fastapi(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        flusher = asyncio.get_running_loop().create_task(metrics.flush_every())  # batched figures -> /metrics
        try:
            yield
        finally:
            await stop_task(flusher, name="metrics flusher")
            await gateway.stop()

    app = FastAPI(title="Flashgate", version="1", default_response_class=OrjsonResponse,
                  lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  description="Flash-sale ticketing: waiting room, seat holds, checkout, orders, organiser API.")
    app.state.gateway = gateway
    handlers.install(app)
    for module in (health, buyer, waitlist_routes, pages, events, orders, stats, key_routes, scan_routes,
                   metrics_routes):
        app.include_router(module.router, responses=error_responses(*COMMON_ERRORS))
    return app


class App(Edge):
    """The ASGI application granian serves: the edge, with the FastAPI app and the services it wraps."""

    def __init__(self, settings: Settings) -> None:
        self.gateway = build_gateway(settings)
        self.fastapi = create_fastapi(self.gateway)
        super().__init__(self.fastapi, max_body=settings.max_body_bytes, hot=HotRoutes(self.gateway),
                         upload_max_body=settings.seat_map_max_bytes)


def create_app(settings: Settings | None = None) -> App:
    settings = settings or get_settings()
    logs.configure(settings.log_level)
    return App(settings)


def app_factory() -> App:
    """Entry point for granian (`--factory gateway.api.app:app_factory`)."""
    return create_app()
