"""Sealing: signing keys are stored in Redis encrypted, bound to their event, under the app secret."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings as hsettings, strategies as st

from gateway.core.config import Settings
from gateway.core.sealing import HKDF_INFO, OVERHEAD, Sealer, SealError, event_context

SECRET = b"test-" + b"x" * 40
OTHER_SECRET = b"test-" + b"y" * 40
# The RFC 8032 TEST 1 seed (also the ticket-code test vector key): a realistic 32-byte private key.
KEY = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
CTX = b"event:42"
# Sealed once with SECRET and CTX by version 1. Blobs already in Redis must keep opening after any
# change to this module, so this vector pins the key derivation and the layout.
VECTOR = bytes.fromhex(
    "01ebfb4c5dc1b90e824ca0047c74fc9035a0cc38b67771bef0e8c7273a6a80fede2161097ee89b553f623a6c4df9031b03415d"
    "af6a1079dc46fdf77949")

SEALER = Sealer(SECRET)


def test_round_trip():
    blob = SEALER.seal(KEY, context=CTX)
    assert SEALER.unseal(blob, context=CTX) == KEY
    assert len(blob) == len(KEY) + OVERHEAD and blob[0] == 1


def test_a_new_sealer_with_the_same_secret_opens_it():
    # Another worker process builds its own Sealer from the same secret.
    assert Sealer(SECRET).unseal(SEALER.seal(KEY, context=CTX), context=CTX) == KEY


def test_the_blob_does_not_contain_the_plaintext():
    blob = SEALER.seal(KEY, context=CTX)
    assert KEY not in blob
    # Nor any 8-byte window of it.
    assert not any(KEY[i:i + 8] in blob for i in range(len(KEY) - 7))


def test_two_seals_differ():
    blobs = {SEALER.seal(KEY, context=CTX) for _ in range(20)}
    assert len(blobs) == 20
    assert len({b[1:13] for b in blobs}) == 20  # the nonces


def test_tampering_any_byte_fails():
    blob = SEALER.seal(KEY, context=CTX)
    for i in range(len(blob)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= flip
            with pytest.raises(SealError):
                SEALER.unseal(bytes(bad), context=CTX)


@pytest.mark.parametrize("cut", ["truncated", "extended", "tag_only", "empty"])
def test_truncated_or_extended_blobs_fail(cut):
    blob = SEALER.seal(KEY, context=CTX)
    bad = {"truncated": blob[:-1], "extended": blob + b"\x00", "tag_only": blob[:OVERHEAD - 1],
           "empty": b""}[cut]
    with pytest.raises(SealError):
        SEALER.unseal(bad, context=CTX)


def test_error_reasons():
    blob = SEALER.seal(KEY, context=CTX)
    with pytest.raises(SealError) as err:
        SEALER.unseal(blob[:10], context=CTX)
    assert err.value.reason == "malformed"
    with pytest.raises(SealError) as err:
        SEALER.unseal(b"\x02" + blob[1:], context=CTX)
    assert err.value.reason == "unknown_version" and "0x02" in str(err.value)
    with pytest.raises(SealError) as err:
        SEALER.unseal(blob, context=b"event:43")
    assert err.value.reason == "unauthentic" and "another context" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(SealError) as err:
        SEALER.unseal(blob.hex(), context=CTX)  # type: ignore[arg-type]
    assert err.value.reason == "malformed"


def test_wrong_context_fails():
    blob = SEALER.seal(KEY, context=event_context(42))
    for other in (event_context(43), event_context(4), event_context(420), b"", b"event:42\x00", b"Event:42"):
        with pytest.raises(SealError):
            SEALER.unseal(blob, context=other)


def test_wrong_secret_fails():
    blob = SEALER.seal(KEY, context=CTX)
    for other in (OTHER_SECRET, SECRET + b"\x00", SECRET[:-1], b"flashgate-tokens|" + SECRET):
        with pytest.raises(SealError):
            Sealer(other).unseal(blob, context=CTX)


def test_event_context():
    assert event_context(42) == b"event:42" and event_context(0) == b"event:0"
    assert event_context(4_294_967_295) == b"event:4294967295"


def test_the_stored_vector_still_opens():
    assert SEALER.unseal(VECTOR, context=CTX) == KEY


def test_the_vector_follows_the_documented_format():
    # Independent of Sealer: HKDF-SHA256(secret, info=HKDF_INFO), AES-256-GCM, AAD = version byte + context.
    assert HKDF_INFO == b"flashgate/redis-signing-key/v1"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(SECRET)
    assert VECTOR[0] == 1
    assert AESGCM(key).decrypt(VECTOR[1:13], VECTOR[13:], b"\x01" + CTX) == KEY


def test_the_settings_secret_works(tmp_path):
    settings = Settings(environment="test", data_dir=tmp_path, secret_key="test-" + "x" * 40)
    assert Sealer(settings.secret_bytes).unseal(VECTOR, context=CTX) == KEY
    dev = Settings(environment="development", data_dir=tmp_path, secret_key=None)  # generated secret
    sealer = Sealer(dev.secret_bytes)
    assert sealer.unseal(sealer.seal(KEY, context=CTX), context=CTX) == KEY


def test_bad_secrets_are_refused():
    with pytest.raises(ValueError):
        Sealer(b"")
    with pytest.raises(TypeError):
        Sealer("not-bytes")  # type: ignore[arg-type]


def test_repr_does_not_show_key_material():
    assert repr(SEALER) == "Sealer(<secret>)" and not hasattr(SEALER, "__dict__")


def test_empty_plaintext_round_trips():
    blob = SEALER.seal(b"", context=CTX)
    assert len(blob) == OVERHEAD and SEALER.unseal(blob, context=CTX) == b""


@hsettings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=256), context=st.binary(max_size=64), other=st.binary(max_size=64),
       index=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_property_round_trip_and_binding(plaintext, context, other, index, flip):
    blob = SEALER.seal(plaintext, context=context)
    assert len(blob) == len(plaintext) + OVERHEAD
    assert SEALER.unseal(blob, context=context) == plaintext
    if len(plaintext) >= 8:  # (shorter ones may occur by chance in random bytes)
        assert plaintext not in blob
    if other != context:
        with pytest.raises(SealError):
            SEALER.unseal(blob, context=other)
    bad = bytearray(blob)
    bad[index % len(bad)] ^= flip
    with pytest.raises(SealError):
        SEALER.unseal(bytes(bad), context=context)
