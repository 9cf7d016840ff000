"""The device manifest: keys, revocations, sealed tickets readable only with their own code, deltas."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.orders import ticketcodes
from gateway.scanning import seal
from gateway.scanning.events import EventCache
from tests.scanning.conftest import buy, drain_ledger
from tests.utils.factories import auth

pytestmark = pytest.mark.anyio
DOC = Path(__file__).resolve().parents[2] / "docs" / "scanning.md"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 written out, so the test does not trust the code under test for the derivation."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def open_as_documented(code: str, sealed: str) -> dict:
    key = hkdf_sha256(code.strip().upper().encode("ascii"), b"flashgate-seal-v1", b"ticket")
    raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    return orjson.loads(AESGCM(key).decrypt(raw[:12], raw[12:], None))


def test_the_documented_vector():
    text = DOC.read_text()
    block = text[text.index("Test vector (the code"):]
    fields = dict(re.findall(r"^(code|key|nonce|plain|sealed)\s+(\S.*)$", block, re.MULTILINE)[:5])
    assert hkdf_sha256(fields["code"].encode(), b"flashgate-seal-v1", b"ticket").hex() == fields["key"]
    assert seal.derive_key(fields["code"]).hex() == fields["key"]
    made = seal.seal(fields["code"], orjson.loads(fields["plain"]), nonce=bytes.fromhex(fields["nonce"]))
    assert made == fields["sealed"]
    assert open_as_documented(fields["code"], fields["sealed"]) == orjson.loads(fields["plain"])
    assert seal.open_sealed(fields["code"].lower() + "\n", made) == orjson.loads(fields["plain"])
    other = ticketcodes.encode(private_key=bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
                               key_id=1, event_id=42, serial=2)
    with pytest.raises(seal.SealError):
        seal.open_sealed(other, made)
    with pytest.raises(seal.SealError):
        seal.open_sealed(fields["code"], made[:-2] + ("A" if made[-2] != "A" else "B") + made[-1])


async def test_manifest_round_trip_and_deltas(client, door, app, redis_sync, settings):
    tok = auth(door["north"]["token"])
    resp = await client.get("/v1/scan/manifest", headers={**tok, "X-Scanner-Queue": "4"})
    assert resp.status_code == 200, resp.text
    m = resp.json()
    assert m["event_id"] == door["id"] and m["gate"] == "north" and m["device_id"] == door["north"]["device_id"]
    assert m["full"] is True and m["version"] == 2 and m["revoked"] == [] and m["seal"] == seal.SCHEME
    public = redis_sync.hget(f"{settings.redis_prefix}:{{ev:{door['id']}}}:info", "signing_public")
    assert m["keys"] == [{"key_id": 1, "public_key": public.hex()}]
    sealed = dict(m["tickets"])
    assert sorted(sealed) == sorted(t["serial"] for t in door["tickets"])
    for t in door["tickets"]:
        claims = ticketcodes.verify(t["code"], {k["key_id"]: bytes.fromhex(k["public_key"]) for k in m["keys"]})
        data = open_as_documented(t["code"], sealed[claims.serial])
        assert data == {"seat": t["seat"], "section": t["seat"].split("-")[0] if t["seat"] else None,
                        "type": t["type"], "holder": "ada@example.org" if t["seat"] else "grace@example.org"}
    # No ticket opens with another ticket's code.
    with pytest.raises(Exception):
        open_as_documented(door["tickets"][0]["code"], sealed[door["tickets"][1]["serial"]])
    # Nothing readable without the codes.
    blob = resp.content
    for word in (b"ada@", b"grace@", b"A-1-1"):
        assert word not in blob

    # A sale and a refund later: the delta holds only them; any worker gives the same version.
    order = await buy(client, door["id"], {"seats": ["A-2-5"]}, "late@example.org")
    await drain_ledger(app)
    refunded = await client.post(f"/v1/orders/{door['orders'][0]['order_id']}/refund", json={}, headers=auth(door["api_key"]))
    assert refunded.status_code == 200, refunded.text
    delta = (await client.get(f"/v1/scan/manifest?since={m['version']}", headers=tok)).json()
    assert delta["full"] is False and delta["version"] == m["version"] + 2
    assert [s for s, _ in delta["tickets"]] == [order["tickets"][0]["serial"]]
    assert delta["revoked"] == sorted(t["serial"] for t in door["orders"][0]["tickets"])
    assert open_as_documented(order["tickets"][0]["code"], delta["tickets"][0][1])["holder"] == "late@example.org"
    same = (await client.get(f"/v1/scan/manifest?since={delta['version']}", headers=tok)).json()
    assert same["full"] is False and same["tickets"] == [] and same["revoked"] == []
    for since in ("999", "abc", "-1", ""):
        full = (await client.get(f"/v1/scan/manifest?since={since}", headers=tok)).json()
        assert full["full"] is True and len(full["tickets"]) == len(door["tickets"]) + 1
    fresh = EventCache(redis=app.gateway.runtime.redis, prefix=settings.redis_prefix, sealer=app.gateway.runtime.sealer)
    assert (await fresh.get(door["id"])).registry.version == delta["version"]

    stats = (await client.get(f"/v1/events/{door['id']}/scans", headers=auth(door["api_key"]))).json()
    [north] = stats["gates"]["north"]["devices"]
    assert north["queue_length"] == 4 and north["last_contact_at"] and north["name"] == "north phone"


async def test_manifest_of_an_event_never_opened(client, door):
    spec = {"name": "Draft", "currency": "EUR", "ga": [{"code": "ga", "name": "GA", "capacity": 5, "price_minor": 1}]}
    created = await client.post("/v1/events", json=spec, headers=auth(door["api_key"]))
    dev = await client.post(f"/v1/events/{created.json()['id']}/devices", json={"gate": "g"},
                            headers=auth(door["api_key"]))
    assert dev.status_code == 201
    resp = await client.get("/v1/scan/manifest", headers=auth(dev.json()["token"]))
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_on_sale"
