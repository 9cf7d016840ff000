"""One secret for every gateway of a deployment: a host whose secret differs from the others' is not ready.

Every token (buyer, queue, admission, order, device) is signed by whichever host answered and checked by
whichever host answers next, and event signing keys are sealed in Redis with the secret. A host started with
another `FLASHGATE_SECRET_KEY` (a typo, a forgotten variable: in development each data directory makes its
own secret) would answer `invalid_token` to every buyer the load balancer sends it. So each gateway's
`/readyz` compares a fingerprint of its secret (an HMAC of a fixed text: it tells nothing about the secret)
with the one recorded under `<prefix>:gateway:secret` by the gateways already serving that Redis prefix, and
is not ready while they differ; the load balancer keeps it out of the rotation and the body names the cause.

The first gateway to ask records its fingerprint; every ready check of a gateway with the same secret keeps
the record alive for `RECORD_TTL_S`. After the secret is changed on every host (which voids every token and
sealed key made with the old one: not during a sale), the new one is accepted at the latest `RECORD_TTL_S`
after the last gateway with the old secret stopped.
"""

from __future__ import annotations

import hashlib
import hmac

from redis.asyncio import Redis

RECORD_TTL_S = 30


class SecretMismatch(RuntimeError):
    pass


def fingerprint(secret: bytes) -> str:
    return hmac.new(secret, b"flashgate gateway secret fingerprint", hashlib.sha256).hexdigest()[:32]


def record_key(prefix: str) -> str:
    return f"{prefix}:gateway:secret"


async def check_shared_secret(redis: Redis, prefix: str, secret: bytes) -> None:
    """Record this gateway's secret fingerprint if none is recorded, else compare; raise `SecretMismatch`
    when another secret is in use. Two round trips at most (a ready check, not a request path)."""
    key, mine = record_key(prefix), fingerprint(secret)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(key, mine, nx=True, ex=RECORD_TTL_S)
        pipe.get(key)
        _, theirs = await pipe.execute()
    if theirs is not None and theirs.decode() != mine:
        raise SecretMismatch("FLASHGATE_SECRET_KEY differs from the one the other gateways of this Redis prefix "
                             "use: tokens they sign would be refused here; give every gateway the same secret")
    await redis.expire(key, RECORD_TTL_S)
