"""Buyer API: buyer tokens, the waiting room, availability, holds and checkout.

The hottest of these (availability, queue join/poll, holds, checkout) are
answered by the edge (gateway/api/hot.py) before FastAPI sees them; the routes
here describe them in the OpenAPI document and serve them when no edge is in
front. Both fronts parse the request and call the same service function.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from gateway.api.deps import GatewayDep, TokenDep
from gateway.api.responses import error_responses
from gateway.sale.holds import event_of_hold

router = APIRouter(prefix="/v1", tags=["buyer"])

EventId = Annotated[int, Path(ge=1, le=10**18)]
AdmissionHeader = Annotated[str | None, Header(alias="X-Admission-Token", description="In queue mode: the "
                            "admission token from the waiting room.")]
_NO_STORE = {"cache-control": "no-store"}


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=_NO_STORE)


class BuyerToken(BaseModel):
    buyer_id: str
    buyer_token: str
    expires_at: int


class HoldView(BaseModel):
    hold_id: str
    event_id: int
    seats: list[str]
    ga: dict[str, int]
    count: int
    expires_at: str
    expires_at_ms: int
    total_minor: int
    currency: str


class Ticket(BaseModel):
    ticket_id: str
    seat: str | None
    type: str | None
    code: str
    serial: int


class OrderView(BaseModel):
    order_id: str
    event_id: int
    status: str
    order_token: str
    total_minor: int
    currency: str
    tickets: list[Ticket]
    order_page_url: str
    order_page_expires_at: int


class QueueAnswer(BaseModel):
    """`status` is `waiting` (position, eta_s, poll_after_s), `prequeue`, `admitted` (admission_token,
    expires_at), `sold_out` or `expired`. A join also answers the `queue_token` to poll with."""

    model_config = ConfigDict(extra="allow")
    status: str
    event_id: int
    position: int | None = None
    eta_s: int | None = None
    queue_token: str | None = None
    admission_token: str | None = None


@router.post("/buyer-token", status_code=201, response_model=BuyerToken)
async def buyer_token(request: Request, gw: GatewayDep) -> Any:
    """A new buyer identity (stateless signed token, valid 24 h). 429 `rate_limited` with Retry-After when
    too many were made from the caller's address or network just now."""
    gw.mint.check(gw.addresses.of_scope(request.scope))
    return gw.gate.issue()


@router.get("/events/{event_id}/availability")
async def availability(event_id: EventId, gw: GatewayDep, seats: Annotated[int, Query(ge=0, le=1)] = 1,
                       since: Annotated[int | None, Query(ge=0, le=10**18)] = None) -> Response:
    """Per section and GA type counts, and (unless `seats=0`) one character per seat: 0 free, 1 held,
    2 sold. Served from the worker's snapshot (`stale: true` when Redis is away); with `since` equal to
    the current version the answer is only `unchanged: true`."""
    return _json(await gw.snapshots.availability(event_id, with_seats=bool(seats), since=since))


@router.post("/events/{event_id}/queue", response_model=QueueAnswer, responses={201: {"model": QueueAnswer}})
async def join_queue(event_id: EventId, request: Request, gw: GatewayDep, token: TokenDep,
                     proof: Annotated[str | None, Header(alias="X-Proof-Of-Work", description="When the waiting "
                                      "room asks for one (428 proof_of_work_required): `<challenge>:<nonce>`.")]
                     = None) -> Response:
    """Join the waiting room with a buyer token (201 for a new place, 200 for the same buyer again). When
    proof of work is on, 428 `proof_of_work_required` carries a challenge to solve first."""
    gw.pow.check(event_id, token, proof)
    created, body = await gw.room.join(event_id, token, gw.addresses.of_scope(request.scope))
    return _json(orjson.dumps(body), 201 if created else 200)


@router.get("/events/{event_id}/queue", response_model=QueueAnswer)
async def poll_queue(event_id: EventId, request: Request, gw: GatewayDep, token: TokenDep,
                     seen: Annotated[int | None, Query(ge=0, le=10**9)] = None) -> Response:
    """Poll with the queue token: position and ETA, the admission token once admitted, or sold out.
    `seen`: the position this buyer was last shown (0 once admitted); the answer never shows more."""
    return _json(await gw.room.poll(event_id, token, gw.addresses.of_scope(request.scope), seen))


@router.get("/events/{event_id}/queue/log")
async def admission_log(event_id: EventId, gw: GatewayDep,
                        start: Annotated[int, Query(alias="from", ge=1, le=2**31)] = 1,
                        count: Annotated[int, Query(ge=1, le=10_000)] = 1_000) -> Response:
    """The public admission log, for anyone to check the waiting room's fairness (no buyer identity):
    per place from `from` (at most `count`, up to the admitted-up-to place), the Unix second it was
    admitted or null if it was skipped (its buyer stopped polling), and for the pre-queue's places the
    arrival number each holds, with the revealed seed. `docs/verify_shuffle.py` checks it."""
    return _json(orjson.dumps(await gw.room.admission_log(event_id, start, count)))


@router.post("/events/{event_id}/holds", status_code=201, response_model=HoldView)
async def create_hold(event_id: EventId, request: Request, gw: GatewayDep, token: TokenDep,
                      admission: AdmissionHeader = None,
                      body: Annotated[dict[str, Any], Body(openapi_examples={
                          "seats": {"value": {"seats": ["A-1-12", "A-1-13"]}},
                          "ga": {"value": {"ga": {"floor": 2}}},
                          "best": {"value": {"best": {"section": "A", "count": 4}}}})] = ...) -> Any:
    """Hold seats (`seats`), general-admission tickets (`ga`) or the best adjacent seats of a section
    (`best`) for the event's hold time. 409 `seat_unavailable` / `sold_out`, 429 `limit_exceeded` (per
    buyer) / `address_limit_exceeded` (tickets held at once from one address)."""
    buyer = await gw.gate.admitted_buyer(event_id, token, admission)
    return await gw.holds.create(event_id, buyer, body, gw.addresses.of_scope(request.scope))


@router.delete("/holds/{hold_id}")
async def release_hold(hold_id: str, gw: GatewayDep, token: TokenDep) -> Any:
    """Give a hold back (its seats return to sale at once)."""
    return await gw.holds.release(hold_id, gw.gate.buyer(token))


@router.post("/holds/{hold_id}/checkout", status_code=201, response_model=OrderView, responses=error_responses(402))
async def checkout(hold_id: str, gw: GatewayDep, token: TokenDep, admission: AdmissionHeader = None,
                   idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
                   body: Annotated[dict[str, Any] | None, Body(openapi_examples={
                       "email": {"value": {"email": "ada@example.com"}}})] = None) -> Any:
    """Pay for a hold. Repeating the same Idempotency-Key returns the same order. 402
    `payment_declined`, 409 `hold_expired`, 503 `payments_unavailable` with Retry-After (the hold is
    kept: retry with the same key)."""
    buyer = await gw.gate.admitted_buyer(event_of_hold(hold_id), token, admission)
    return _json(orjson.dumps(await gw.checkout.checkout_request(hold_id=hold_id, buyer=buyer, key=idempotency_key,
                                                                 body=body if body is not None else {})), 201)
