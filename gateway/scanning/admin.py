"""The organiser's side of the door: devices (create, list, revoke), re-entry rules, figures."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.core.runtime import Runtime
from gateway.organisers import events
from gateway.scanning import manifest as manifests
from gateway.scanning.devices import Devices
from gateway.scanning.stats import scan_stats
from gateway.sale.layout import EventLayout
from gateway.store.keys import event_key


class DoorAdmin:
    def __init__(self, runtime: Runtime, devices: Devices) -> None:
        self.runtime = runtime
        self.devices = devices

    async def create_device(self, organisation_id: int, event_id: int, gate: Any, name: Any) -> dict[str, Any]:
        return await self.devices.create(await self.runtime.pg(), organisation_id=organisation_id,
                                         event_id=event_id, gate=gate, name=name)

    async def list_devices(self, organisation_id: int, event_id: int) -> list[dict[str, Any]]:
        return await self.devices.list(await self.runtime.pg(), organisation_id=organisation_id, event_id=event_id)

    async def revoke_device(self, organisation_id: int, event_id: int, device_id: str) -> dict[str, Any]:
        return await self.devices.revoke(await self.runtime.pg(), organisation_id=organisation_id,
                                         event_id=event_id, device_id=device_id)

    async def _layout(self, organisation_id: int, event_id: int) -> EventLayout:
        pool = await self.runtime.pg()
        await events.get_event(pool, organisation_id=organisation_id, event_id=event_id)
        raw = await self.runtime.redis.get(event_key(self.runtime.prefix, event_id, "layout"))
        return EventLayout.from_json(raw) if raw is not None else await events.load_layout(pool, event_id)

    async def rules(self, organisation_id: int, event_id: int) -> dict[str, Any]:
        await self._layout(organisation_id, event_id)
        return {"reentry": manifests.rules_view(await manifests.get_rules(self.runtime.redis, self.runtime.prefix,
                                                                          event_id))}

    async def set_rules(self, organisation_id: int, event_id: int, body: Any) -> dict[str, Any]:
        """Which ticket types allow re-entry; effective at once (the check-in script reads them)."""
        keys = manifests.rule_keys(await self._layout(organisation_id, event_id), body)
        await manifests.set_rules(self.runtime.redis, self.runtime.prefix, event_id, keys)
        view = manifests.rules_view(keys)
        pool = await self.runtime.pg()  # a copy beside the event, for the record
        await pool.execute("UPDATE events SET settings = settings || $2::jsonb WHERE id = $1", event_id,
                           orjson.dumps({"scan_rules": {"reentry": view}}).decode())
        return {"reentry": view}

    async def stats(self, organisation_id: int, event_id: int) -> dict[str, Any]:
        """The door per gate (figures from Redis; device names from the read replica when one is set)."""
        await events.check_owner_for_reads(self.runtime, organisation_id=organisation_id, event_id=event_id)

        async def names(pool: Any) -> list[Any]:
            return await pool.fetch("SELECT id, name FROM devices WHERE event_id = $1", event_id)

        rows, _ = await self.runtime.reads.run(names)
        return await scan_stats(self.runtime.redis, self.runtime.prefix, event_id,
                                {str(r["id"]): r["name"] for r in rows})
