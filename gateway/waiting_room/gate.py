"""Who may hold and check out: the buyer behind a request, and, while the event
is in queue mode, proof that the waiting room admitted that buyer.

Takes token strings (the HTTP fronts extract them from headers) and answers the
buyer id, or raises the error the buyer should see.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gateway.core.errors import DomainError
from gateway.core.tokens import TokenSigner
from gateway.waiting_room.cache import QueueCache

BUYER_TOKEN_TTL_S = 24 * 3600


class BuyerGate:
    def __init__(self, *, signer: TokenSigner, cache: QueueCache | None) -> None:
        self.signer = signer
        self.cache = cache  # None: no waiting room in this process (every event sells freely)

    def issue(self) -> dict[str, Any]:
        """A new buyer identity: an id and its signed token (no state kept anywhere)."""
        buyer_id = "b_" + os.urandom(12).hex()
        exp = int(time.time()) + BUYER_TOKEN_TTL_S
        return {"buyer_id": buyer_id, "buyer_token": self.signer.sign("b", {"sub": buyer_id, "exp": exp}),
                "expires_at": exp}

    def buyer(self, buyer_token: str | None) -> str:
        if not buyer_token:
            raise DomainError("unauthorized", "Send your buyer token as `Authorization: Bearer <token>`.")
        return self.signer.verify(buyer_token, "b")["sub"]

    async def admitted_buyer(self, event_id: int, buyer_token: str | None, admission_token: str | None, *,
                             releasing: bool = False) -> str:
        """The buyer of a hold or checkout request. In queue mode the buyer also needs an admission
        token for this event issued to this buyer; giving inventory back never needs one."""
        buyer = self.buyer(buyer_token)
        cache = self.cache
        if releasing or cache is None:
            return buyer
        mode = cache.known_mode(event_id)
        if not (mode if mode is not None else await cache.queue_mode(event_id)):
            return buyer
        if not admission_token:
            raise DomainError("admission_required", "This sale has a waiting room: join it with POST "
                              f"/v1/events/{event_id}/queue and send the admission token you get as "
                              "`X-Admission-Token`.", details={"event_id": event_id})
        claims = self.signer.verify(admission_token, "a")
        if claims.get("ev") != event_id:
            raise DomainError("wrong_event", "This admission token belongs to another event.",
                              details={"event_id": event_id})
        if claims.get("sub") != buyer:
            raise DomainError("forbidden", "This admission token was issued to another buyer.")
        return buyer
