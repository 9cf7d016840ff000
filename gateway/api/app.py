"""The application factory: FastAPI behind the edge, served by granian."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api import handlers
from gateway.api.edge import Edge
from gateway.api.responses import OrjsonResponse
from gateway.api.fast import FastRoutes
from gateway.api.queue_routes import QueueRoutes
from gateway.api.routes import buyers, demo, events, health, orders, stats
from gateway.core import logs
from gateway.core.config import Settings, get_settings
from gateway.core.runtime import Runtime
from gateway.services.snapshots import SnapshotManager
from gateway.services.tokens import TokenSigner
from gateway.services.waiting_room import WaitingRoom
from gateway.store.scripts import Scripts
from gateway.providers.payments import build_payment_provider
from gateway.services.checkout import Checkout
from gateway.services.confirmations import send_confirmation
from gateway.store.wire import WireConnection


def create_fastapi(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.from_settings(settings)
        app.state.runtime = runtime
        wire = WireConnection(settings.redis_url) if settings.redis_url else None
        scripts = Scripts(runtime.redis, wire=wire)
        runtime.extras["scripts"] = scripts
        try:
            await scripts.load_all()
        except Exception:  # Redis not reachable yet: scripts load on first use (NOSCRIPT path)
            pass
        snapshots = SnapshotManager(redis=runtime.redis, scripts=scripts, prefix=settings.redis_prefix,
                                    refresh_s=settings.snapshot_refresh_s,
                                    stale_after_s=settings.snapshot_stale_after_s)
        runtime.extras["snapshots"] = snapshots
        signer = TokenSigner(settings.secret_bytes)
        runtime.extras["signer"] = signer
        snapshots.start()
        payments = build_payment_provider(runtime)
        runtime.extras["payments"] = payments
        checkout = Checkout(redis=runtime.redis, scripts=scripts, snapshots=snapshots, provider=payments,
                            signer=signer, prefix=settings.redis_prefix, notify=partial(send_confirmation, runtime))
        runtime.extras["checkout"] = checkout
        edge = getattr(app.state, "edge", None)
        if edge is not None:
            edge.fast = FastRoutes(runtime, snapshots, signer)
            edge.fast.checkout_service = checkout
        room = WaitingRoom(runtime, signer, scripts)
        runtime.extras["waiting_room"] = room
        room.start()
        if edge is not None:
            edge.fast.queue = QueueRoutes(room)
            edge.fast.buyer_of = room.buyer_of
        try:
            yield
        finally:
            if edge is not None:
                edge.fast = None
            await snapshots.stop()
            await room.stop()
            await payments.aclose()
            if wire is not None:
                await wire.close()
            await runtime.close()

    app = FastAPI(title="Flashgate", version="1", default_response_class=OrjsonResponse,
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    handlers.install(app)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(buyers.router)
    app.include_router(orders.router)
    app.include_router(stats.router)
    app.include_router(demo.router)
    return app


def create_app(settings: Settings | None = None) -> Edge:
    settings = settings or get_settings()
    logs.configure(settings.log_level)
    api = create_fastapi(settings)
    edge = Edge(api, max_body=settings.max_body_bytes)
    api.state.edge = edge
    edge.fastapi = api  # type: ignore[attr-defined]
    return edge


def app_factory() -> Edge:
    """Entry point for granian (`--factory gateway.api.app:app_factory`)."""
    return create_app()
