"""Door scanning routes (docs/scanning.md): the organiser's devices and re-entry rules, and the
device routes. `POST /v1/scan`, `POST /v1/scan/batch` and `GET /v1/scan/manifest` are answered by
the edge (gateway/api/hot.py) with the same service calls; they are here for `/docs` and for any
front without the edge."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import DoorDep, GatewayDep, TokenDep  # DoorDep: admin and door keys
from gateway.api.responses import OrjsonResponse
from gateway.core.errors import DomainError
from gateway.scanning.devices import GATE

router = APIRouter(tags=["door"])
EventId = Annotated[int, Path(ge=1, le=10**18)]
QueueHeader = Annotated[str | None, Header(alias="X-Scanner-Queue", max_length=16)]


class DeviceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: Annotated[str, Field(pattern=GATE.pattern, description="the gate this device scans at")]
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class ReentrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ga: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=100)
    sections: list[Annotated[str, Field(max_length=24)]] = Field(default_factory=list, max_length=1000)


class ScanRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reentry: ReentrySpec


# The device bodies are checked by hand (gateway/scanning/requests.py: the edge answers these routes without
# pydantic); these schemas describe them for /docs and the OpenAPI document, nothing more.
_TIME = {"anyOf": [{"type": "string", "maxLength": 40, "description": "RFC 3339 with a time zone"},
                   {"type": "integer", "minimum": 946_684_800_000, "maximum": 4_102_444_800_000,
                    "description": "milliseconds since the epoch"}]}
_SCAN_PROPS = {"code": {"type": "string", "maxLength": 1000},
               "scan_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
               "direction": {"type": "string", "enum": ["in", "out"]}, "scanned_at": _TIME}
SCAN_BODY = {"type": "object", "properties": _SCAN_PROPS, "required": ["code"], "additionalProperties": False}
BATCH_BODY = {"type": "object", "additionalProperties": False, "required": ["scans"], "properties": {
    "scans": {"type": "array", "minItems": 1, "maxItems": 500, "items": {
        "type": "object", "additionalProperties": False, "required": ["code", "scan_id", "scanned_at"],
        "properties": {**_SCAN_PROPS, "local_result": {"type": "string", "enum": [
            "admitted", "duplicate", "invalid", "wrong_event", "void", "exited", "not_inside"]}}}},
    "sent_at": _TIME,
    "queue_length": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 1_000_000},
                               {"type": "string", "pattern": "^[0-9]{1,7}$"}]}}}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DomainError("malformed_json", "The request body is not valid JSON.", details={"error": str(exc)},
                          status=400) from None


# -- organiser ---------------------------------------------------------------------------------------

@router.post("/v1/events/{event_id}/devices", status_code=201)
async def create_device(event_id: EventId, spec: DeviceSpec, org: DoorDep, gw: GatewayDep) -> Any:
    """A scanning device for one gate; the answer carries its token, shown this once."""
    return OrjsonResponse(await gw.door.create_device(org, event_id, spec.gate, spec.name), status_code=201)


@router.get("/v1/events/{event_id}/devices")
async def list_devices(event_id: EventId, org: DoorDep, gw: GatewayDep) -> Any:
    return {"devices": await gw.door.list_devices(org, event_id)}


@router.delete("/v1/events/{event_id}/devices/{device_id}")
async def revoke_device(event_id: EventId, device_id: Annotated[str, Path(max_length=64)], org: DoorDep,
                        gw: GatewayDep) -> Any:
    """Revoke a device: every gateway worker refuses its token from this answer on."""
    return await gw.door.revoke_device(org, event_id, device_id)


@router.get("/v1/events/{event_id}/scan-rules")
async def get_scan_rules(event_id: EventId, org: DoorDep, gw: GatewayDep) -> Any:
    return await gw.door.rules(org, event_id)


@router.put("/v1/events/{event_id}/scan-rules")
async def set_scan_rules(event_id: EventId, rules: ScanRules, org: DoorDep, gw: GatewayDep) -> Any:
    """Which ticket types allow re-entry (general-admission type codes, section names)."""
    return await gw.door.set_rules(org, event_id, rules.model_dump())


@router.get("/v1/events/{event_id}/scans")
async def door_figures(event_id: EventId, org: DoorDep, gw: GatewayDep) -> Any:
    """The door per gate: admitted, duplicates, people inside, devices' last contact and queue."""
    return await gw.door.stats(org, event_id)


# -- door device (answered by the edge; described here) -----------------------------------------------

@router.get("/v1/scan/manifest")
async def scan_manifest(gw: GatewayDep, token: TokenDep, queue: QueueHeader = None,
                        since: Annotated[str | None, Query(max_length=20)] = None) -> Any:
    """What a device needs offline: event, gate, public keys, revoked serials, sealed tickets, version."""
    return await gw.scanning.manifest(token, since, queue)


@router.post("/v1/scan", openapi_extra=_body_doc(SCAN_BODY))
async def scan(request: Request, gw: GatewayDep, token: TokenDep, queue: QueueHeader = None) -> Any:
    """One scan: `{code, scan_id?, direction?, scanned_at?}` -> admitted / duplicate / invalid / wrong_event /
    void / exited / not_inside."""
    return await gw.scanning.scan(token, await _json(request), queue)


@router.post("/v1/scan/batch", openapi_extra=_body_doc(BATCH_BODY))
async def scan_batch(request: Request, gw: GatewayDep, token: TokenDep, queue: QueueHeader = None) -> Any:
    """Offline scans: `{sent_at?, queue_length?, scans: [...]}`; idempotent per (device, scan id)."""
    return await gw.scanning.batch(token, await _json(request), queue)
