"""Buyer identity: a signed buyer token issued by the gateway.

While an event is in queue mode, the waiting room's admission token is what
holds and checkout accept; otherwise a buyer token identifies the buyer.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(prefix="/v1", tags=["buyer"])

BUYER_TOKEN_TTL_S = 24 * 3600


@router.post("/buyer-token", status_code=201)
async def buyer_token(request: Request) -> Any:
    signer = request.app.state.runtime.extras["signer"]
    buyer_id = "b_" + os.urandom(12).hex()
    exp = int(time.time()) + BUYER_TOKEN_TTL_S
    return {"buyer_id": buyer_id, "buyer_token": signer.sign("b", {"sub": buyer_id, "exp": exp}), "expires_at": exp}
