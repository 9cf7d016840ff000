"""Buyer API: the waiting list of a sold-out event (gateway/waiting_room/waitlist.py)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path
from starlette.responses import Response

from gateway.api.deps import GatewayDep, TokenDep
from gateway.waiting_room.waitlist import WaitingList
from gateway.wiring import Gateway

router = APIRouter(prefix="/v1", tags=["buyer"])

EventId = Annotated[int, Path(ge=1, le=10**18)]
_NO_STORE = {"cache-control": "no-store"}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=_NO_STORE)


def waiting_list(gw: Gateway) -> WaitingList:
    return WaitingList(settings=gw.settings, scripts=gw.runtime.scripts, redis=gw.runtime.redis, signer=gw.signer,
                       snapshots=gw.snapshots)


@router.post("/events/{event_id}/waitlist", status_code=201,
             responses={200: {"description": "The buyer's entry, already on the list"}})
async def join_waitlist(event_id: EventId, gw: GatewayDep, token: TokenDep,
                        body: Annotated[dict[str, Any] | None, Body(openapi_examples={
                            "email": {"value": {"email": "ada@example.com"}}})] = None) -> Response:
    """Join the waiting list of a sold-out event with a buyer token (201 new entry, 200 the same entry
    again), optionally with an e-mail address to be told of an offer. 409 `not_sold_out` while the
    waiting room still runs."""
    created, answer = await waiting_list(gw).join(event_id, gw.gate.buyer(token), body)
    return _json(answer, 201 if created else 200)


@router.get("/events/{event_id}/waitlist")
async def waitlist_status(event_id: EventId, gw: GatewayDep, token: TokenDep) -> Response:
    """The buyer's entry: `waiting` (position, length), `offered` (offer: count, seats, ga, expires_at),
    `accepted` (hold_id), `lapsed`, `full` (already has the most tickets a buyer may) or `left`."""
    return _json(await waiting_list(gw).status(event_id, gw.gate.buyer(token)))


@router.post("/events/{event_id}/waitlist/accept", status_code=201)
async def accept_offer(event_id: EventId, gw: GatewayDep, token: TokenDep,
                       body: Annotated[dict[str, Any] | None, Body(openapi_examples={
                           "two": {"value": {"count": 2}}})] = None) -> Response:
    """Take `count` (default: all) of the offered tickets as a hold of the event's hold time; the answer
    is the hold and an `admission_token` for its checkout. 409 `no_offer` / `offer_lapsed`."""
    return _json(await waiting_list(gw).accept(event_id, gw.gate.buyer(token), body), 201)


@router.delete("/events/{event_id}/waitlist")
async def leave_waitlist(event_id: EventId, gw: GatewayDep, token: TokenDep) -> Response:
    """Leave the waiting list; an open offer passes to the next listed buyer at once."""
    return _json(await waiting_list(gw).leave(event_id, gw.gate.buyer(token)))
