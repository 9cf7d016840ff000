"""`GET /metrics`: Prometheus text format, every gateway worker's figures added up.

Access: with `FLASHGATE_METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <token>` (401
otherwise); without it, only loopback clients may scrape (403 for others), which suits a development
machine and a Prometheus on the same host. The figures name events and organisations by id and show
sales volume, so they are not public.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import GatewayDep, bearer_token
from gateway.core import metrics
from gateway.core.errors import DomainError

router = APIRouter(tags=["ops"])


def _loopback(request: Request) -> bool:
    client = request.scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request, gw: GatewayDep) -> Response:
    expected = gw.settings.metrics_token
    if expected:
        token = await bearer_token(request)
        if not token or not hmac.compare_digest(token.encode(), expected.encode()):
            raise DomainError("unauthorized", "Send the metrics token as `Authorization: Bearer <token>`.",
                              headers={"WWW-Authenticate": "Bearer"})
    elif not _loopback(request):
        raise DomainError("forbidden", "Metrics are served to loopback clients only until FLASHGATE_METRICS_TOKEN "
                          "is set; then scrape with that token.")
    return Response(await metrics.render(gw), media_type=metrics.CONTENT_TYPE)
