"""Abuse: forged, altered, expired and other-event tokens; bypass; replay by another buyer; rate limits."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from gateway.core.tokens import TokenSigner
from tests.utils.factories import auth
from tests.waiting_room.conftest import app_client, join, leader, new_buyer, poll, queue_event, wait_for

pytestmark = pytest.mark.anyio


def _alter(token: str, **changes) -> str:
    kind, body, mac = token.split(".")
    payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{kind}.{base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b'=').decode()}.{mac}"


async def admitted(client, settings, event_id, count=1):
    buyers = [await new_buyer(client) for _ in range(count)]
    tokens = [(await join(client, event_id, b))["queue_token"] for b in buyers]
    async with leader(settings):
        async def ready():
            bodies = [await poll(client, event_id, t) for t in tokens]
            return bodies if all(b["status"] == "admitted" for b in bodies) else None

        bodies = await wait_for(ready)
    assert bodies, "not admitted"
    return buyers, bodies


async def test_bad_queue_tokens_are_refused(qclient, database_url, settings):
    event = await queue_event(qclient, database_url, rate=50)
    other = await queue_event(qclient, database_url, rate=50)
    me = await new_buyer(qclient)
    token = (await join(qclient, event["id"], me))["queue_token"]
    url = f"/v1/events/{event['id']}/queue"
    forged = TokenSigner(b"not-the-secret").sign("q", {"ev": event["id"], "n": 1, "sub": "x",
                                                       "exp": time.time() + 60})
    expired = TokenSigner(settings.secret_bytes).sign("q", {"ev": event["id"], "n": 1, "sub": "x",
                                                            "exp": time.time() - 1})
    cases = [
        (forged, 401, "invalid_token"),
        (_alter(token, n=999), 401, "invalid_token"),        # altered place
        (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 401, "invalid_token"),
        ("garbage", 401, "invalid_token"),
        (me["buyer_token"], 401, "invalid_token"),           # a buyer token is not a queue token
        (expired, 401, "token_expired"),
    ]
    for bad, status, code in cases:
        resp = await qclient.get(url, headers=auth(bad))
        assert resp.status_code == status and resp.json()["error"]["code"] == code, (bad, resp.text)
    resp = await qclient.get(f"/v1/events/{other['id']}/queue", headers=auth(token))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "wrong_event"
    resp = await qclient.get(url)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    resp = await qclient.post(url)  # joining needs a buyer token
    assert resp.status_code == 401


async def test_holds_need_an_admission_of_this_buyer_and_event(qclient, database_url, settings):
    event = await queue_event(qclient, database_url, rate=50, ga={"floor": 50})
    other = await queue_event(qclient, database_url, rate=50, ga={"floor": 50})
    holds = f"/v1/events/{event['id']}/holds"
    body = {"ga": {"floor": 1}}
    (alice, bob), (a_body, b_body) = await admitted(qclient, settings, event["id"], 2)
    a_adm = a_body["admission_token"]
    # bypass: a buyer token alone while the event is in queue mode
    resp = await qclient.post(holds, json=body, headers=auth(alice["buyer_token"]))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admission_required"
    # replay: Bob presents Alice's admission
    resp = await qclient.post(holds, json=body, headers={**auth(bob["buyer_token"]), "X-Admission-Token": a_adm})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    # forged / altered / expired admissions
    forged = TokenSigner(b"nope").sign("a", {"sub": alice["buyer_id"], "ev": event["id"], "exp": time.time() + 60})
    expired = TokenSigner(settings.secret_bytes).sign("a", {"sub": alice["buyer_id"], "ev": event["id"],
                                                            "exp": time.time() - 1})
    for bad, code in ((forged, "invalid_token"), (_alter(a_adm, sub=bob["buyer_id"]), "invalid_token"),
                      (expired, "token_expired"), (a_body["admission_token"][:-3], "invalid_token")):
        resp = await qclient.post(holds, json=body, headers={**auth(alice["buyer_token"]), "X-Admission-Token": bad})
        assert resp.status_code == 401 and resp.json()["error"]["code"] == code, resp.text
    # another event's admission
    resp = await qclient.post(f"/v1/events/{other['id']}/holds", json=body,
                              headers={**auth(alice["buyer_token"]), "X-Admission-Token": a_adm})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "wrong_event"
    # the real thing
    resp = await qclient.post(holds, json=body, headers={**auth(alice["buyer_token"]), "X-Admission-Token": a_adm})
    assert resp.status_code == 201, resp.text
    hold = resp.json()
    # releasing gives inventory back and needs no admission
    resp = await qclient.delete(f"/v1/holds/{hold['hold_id']}", headers=auth(alice["buyer_token"]))
    assert resp.status_code == 200


async def test_events_without_queue_take_buyer_tokens(qclient, database_url):
    from tests.utils.factories import new_org, open_event, seat_spec

    _, key = await new_org(database_url)
    plain = await open_event(qclient, key, seat_spec(ga={"floor": 5}))
    me = await new_buyer(qclient)
    resp = await qclient.post(f"/v1/events/{plain['id']}/holds", json={"ga": {"floor": 1}},
                              headers=auth(me["buyer_token"]))
    assert resp.status_code == 201, resp.text


async def test_admission_expires_and_the_buyer_rejoins(database_url, settings):
    async with app_client(settings, queue_admission_ttl_s=2, queue_poll_per_token_per_s=1e6,
                          queue_cache_s=0.05) as client:
        event = await queue_event(client, database_url, rate=50, ga={"floor": 10})
        (me,), (body,) = await admitted(client, settings, event["id"])
        token = (await join(client, event["id"], me))["queue_token"]
        time.sleep(0)  # the admission lasts 2 s from the moment of admission
        expired = await wait_for(lambda: _status_is(client, event["id"], token, "expired"), timeout=5)
        assert expired["reason"] == "admission_expired"
        resp = await client.post(f"/v1/events/{event['id']}/holds", json={"ga": {"floor": 1}},
                                 headers={**auth(me["buyer_token"]), "X-Admission-Token": body["admission_token"]})
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "token_expired"
        again = await join(client, event["id"], me, expect=201)  # a new place at the back
        assert again["place"] > body["place"] and again["status"] == "waiting"


async def _status_is(client, event_id, token, status):
    body = await poll(client, event_id, token)
    return body if body["status"] == status else None


async def test_rate_limits_answer_429_with_retry_after(database_url, settings):
    async with app_client(settings, queue_poll_per_token_per_s=1, queue_join_per_ip_per_min=4,
                          queue_join_per_ip_per_s=1000) as client:
        event = await queue_event(client, database_url, rate=1)
        url = f"/v1/events/{event['id']}/queue"
        token = (await join(client, event["id"], await new_buyer(client)))["queue_token"]
        codes = [(await client.get(url, headers=auth(token))).status_code for _ in range(12)]
        assert codes[:5] == [200] * 5 and 429 in codes  # burst 5, then 1/s
        resp = await client.get(url, headers=auth(token))
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"
        assert int(resp.headers["retry-after"]) >= 1
        statuses = [(await client.post(url, headers=auth((await new_buyer(client))["buyer_token"]))).status_code
                    for _ in range(5)]
        assert statuses[:3] == [201] * 3 and statuses[-1] == 429  # the Redis counter: 4 joins a minute per IP
    async with app_client(settings, queue_join_per_ip_per_s=1) as client:
        event = await queue_event(client, database_url, rate=1)
        url = f"/v1/events/{event['id']}/queue"
        statuses = [(await client.post(url, headers=auth((await new_buyer(client))["buyer_token"]))).status_code
                    for _ in range(8)]
        assert statuses[:5] == [201] * 5 and statuses[-1] == 429  # the in-process bucket sheds first


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _respellings(token: str) -> list[str]:
    """Other spellings of the same bytes (or of bytes a lenient decoder would read the same way)."""
    kind, body, mac = token.split(".")
    out = [token + "=", token + "==", token + "!", f"{kind}.{body}=.{mac}", f"{kind}.{body}.{mac}%3D",
           f"{kind}.{body[:2]}\n{body[2:]}.{mac}"]
    for part in ("body", "mac"):  # flip an unused low bit of the last character
        text = body if part == "body" else mac
        unused = {2: 4, 3: 2}.get(len(text) % 4, 0)  # 2 chars -> 4 unused bits, 3 chars -> 2
        if unused:
            last = _B64.index(text[-1]) ^ 1
            text = text[:-1] + _B64[last]
            out.append(f"{kind}.{text}.{mac}" if part == "body" else f"{kind}.{body}.{text}")
    return out


@pytest.mark.parametrize("kind", ["b", "q", "a", "o", "d"])
def test_only_the_canonical_spelling_of_a_token_verifies(kind):
    signer = TokenSigner(b"k" * 32)
    for n in range(40):  # payload lengths with every remainder mod 3
        token = signer.sign(kind, {"sub": "x" * n, "exp": int(time.time()) + 60})
        assert signer.verify(token, kind)["sub"] == "x" * n
        variants = _respellings(token)
        assert len(variants) >= 6
        for variant in variants:
            with pytest.raises(Exception) as info:
                TokenSigner(b"k" * 32).verify(variant, kind)  # a fresh signer: no remembered tokens
            assert getattr(info.value, "code", None) == "invalid_token", variant


async def test_a_respelled_queue_token_is_refused_over_the_api(qclient, database_url):
    event = await queue_event(qclient, database_url, rate=0.001)
    body = await join(qclient, event["id"], await new_buyer(qclient))
    token = body["queue_token"]
    for variant in _respellings(token):
        if "\n" in variant:
            continue  # not a valid header value at all
        resp = await qclient.get(f"/v1/events/{event['id']}/queue", headers=auth(variant))
        assert resp.status_code == 401, (variant, resp.text)
        assert resp.json()["error"]["code"] == "invalid_token"
