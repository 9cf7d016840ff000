"""Several gateway hosts share one secret: a host started with another one is not ready (docs/deployment.md)."""

from __future__ import annotations

import secrets

import httpx
import pytest

from gateway.api.app import create_app
from gateway.core.config import Settings
from gateway.core.shared_secret import RECORD_TTL_S, record_key
from tests.utils.servers import delete_prefix

pytestmark = pytest.mark.anyio


async def _ready_and_token(settings: Settings, token: str | None = None) -> tuple[httpx.Response, int | None, str]:
    """(readyz answer, status of a queue-free request with `token`, a buyer token this gateway made)."""
    app = create_app(settings)
    async with app.fastapi.router.lifespan_context(app.fastapi):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            ready = await c.get("/readyz")
            mine = (await c.post("/v1/buyer-token")).json()["buyer_token"]
            used = None
            if token is not None:  # a buyer token checked by this gateway (releasing a hold needs no admission)
                used = (await c.delete("/v1/holds/1-00000000000000000000", headers={"Authorization": f"Bearer {token}"}
                                       )).status_code
    return ready, used, mine


async def test_a_gateway_with_another_secret_stays_out_of_rotation(settings, redis_sync, payment_simulator):
    prefix = settings.redis_prefix + "sec"
    first = settings.model_copy(update={"redis_prefix": prefix})
    other = first.model_copy(update={"secret_key": "test-" + secrets.token_urlsafe(32)})
    try:
        ready, _, token = await _ready_and_token(first)
        assert ready.status_code == 200 and ready.json()["checks"]["secret"]["ok"] is True, ready.text
        assert 0 < redis_sync.ttl(record_key(prefix)) <= RECORD_TTL_S

        # What a mismatched host would do to buyers: refuse every token the other hosts signed ...
        ready, used, _ = await _ready_and_token(other, token)
        assert used == 401
        # ... so it is not ready, and says why (without showing either secret)
        assert ready.status_code == 503, ready.text
        check = ready.json()["checks"]["secret"]
        assert check["ok"] is False and "FLASHGATE_SECRET_KEY differs" in check["reason"]
        assert other.secret_key not in ready.text and first.secret_key not in ready.text

        # a host with the right secret accepts the token and is ready
        ready, used, _ = await _ready_and_token(first, token)
        assert ready.status_code == 200 and used != 401, ready.text

        # once no host with the old secret keeps the record alive, a new secret can take over (a rotation)
        redis_sync.delete(record_key(prefix))  # what RECORD_TTL_S seconds without a ready check of theirs do
        ready, _, _ = await _ready_and_token(other)
        assert ready.status_code == 200, ready.text
    finally:
        delete_prefix(settings.redis_url, prefix)
