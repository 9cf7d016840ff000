"""Proof of work on joining a waiting room (off by default; docs/waiting-room.md, "Sybil protections").

Hashcash-style: a join without a proof is answered `428 proof_of_work_required` with a challenge, a
signed token bound to the buyer and the event with the difficulty `d` (leading zero bits). The
client finds a nonce such that SHA-256 of `<challenge>:<nonce>` (ASCII) starts with `d` zero bits
(about 2^d hashes on average) and joins again with `X-Proof-Of-Work: <challenge>:<nonce>`. Checking
costs one HMAC (remembered per worker, as for every token) and one SHA-256; nothing is stored. A
proof stays good for the same buyer and event until the challenge expires, so a rejoin (refresh,
new tab) reuses it.

It prices automation, it does not stop it: a bot pays the same seconds per identity as a buyer's
browser pays once, and native code on a GPU pays far less.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.tokens import TokenSigner

HEADER = b"x-proof-of-work"
ALGORITHM = "sha256-leading-zero-bits"
_NONCE_MAX = 64


def leading_zero_bits(digest: bytes) -> int:
    """How many leading bits of `digest` are zero."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


class ProofOfWork:
    def __init__(self, settings: Settings, signer: TokenSigner) -> None:
        self.enabled = settings.queue_pow and settings.queue_pow_bits > 0
        self.bits = settings.queue_pow_bits
        self.ttl_s = settings.queue_pow_ttl_s
        self.signer = signer

    def challenge(self, event_id: int, buyer: str, now: float | None = None) -> dict[str, Any]:
        """A new challenge for this buyer and event, as the 428 answer's details carry it."""
        exp = int(now or time.time()) + self.ttl_s
        token = self.signer.sign("w", {"ev": event_id, "sub": buyer, "d": self.bits, "exp": exp,
                                       "r": os.urandom(8).hex()})
        return {"challenge": token, "difficulty_bits": self.bits, "algorithm": ALGORITHM, "expires_at": exp,
                "header": "X-Proof-Of-Work",
                "how": "find a nonce (at most 64 characters) such that SHA-256 of the ASCII text "
                       "`<challenge>:<nonce>` starts with difficulty_bits zero bits, then join again with "
                       "the header `X-Proof-Of-Work: <challenge>:<nonce>`"}

    def check(self, event_id: int, buyer_token: str | None, proof: str | None) -> None:
        """Nothing when proof of work is off, or `proof` solves a live challenge of this buyer and
        event at today's difficulty; else 428 `proof_of_work_required` with a new challenge."""
        if not self.enabled or not buyer_token:
            return  # no buyer token: the join itself answers 401
        buyer = self.signer.verify(buyer_token, "b")["sub"]
        reason = "missing" if not proof else self._fault(event_id, buyer, proof)
        if reason is None:
            return
        message = {"missing": "This waiting room asks for a proof of work before you join.",
                   "expired": "Your proof of work has expired; solve the new challenge.",
                   }.get(reason, "Your proof of work does not solve a challenge of yours for this event.")
        raise DomainError("proof_of_work_required", message + " Solve the challenge in `details` and join again "
                          "with the header X-Proof-Of-Work.",
                          details={"reason": reason, **self.challenge(event_id, buyer)})

    def _fault(self, event_id: int, buyer: str, proof: str) -> str | None:
        challenge, sep, nonce = proof.rpartition(":")
        if not sep or not challenge or not nonce or len(nonce) > _NONCE_MAX:
            return "malformed"
        try:
            claims = self.signer.verify(challenge, "w")
        except DomainError as err:
            return "expired" if err.code == "token_expired" else "invalid_challenge"
        if claims.get("ev") != event_id or claims.get("sub") != buyer:
            return "not_yours"
        bits = claims.get("d")
        if not isinstance(bits, int) or bits < self.bits:
            return "too_easy"
        if leading_zero_bits(hashlib.sha256(proof.encode("latin-1", "replace")).digest()) < bits:
            return "wrong_nonce"
        return None


def solve(challenge: str, bits: int) -> str:
    """A proof for `challenge` (a reference solver: the buyer page does the same in the browser)."""
    prefix = challenge + ":"
    nonce = 0
    while True:
        proof = prefix + str(nonce)
        if leading_zero_bits(hashlib.sha256(proof.encode()).digest()) >= bits:
            return proof
        nonce += 1
