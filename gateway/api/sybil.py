"""Sybil protections keyed on the client's address (docs/waiting-room.md, "Sybil protections").

A buyer identity (buyer token) costs nothing to make, so the limits that make many identities
expensive are keyed on what a client cannot mint: its network address. `AddressKeys` names the
*address* and the *network prefix* of a client as these limits see them (an IPv6 subscriber
usually has a whole /64, so its /64 is its address; IPv4: the address itself; prefixes /24 and
/48 by default). `MintLimits` rate-limits buyer-token minting per address and per prefix with
in-process token buckets (one dict lookup each, no Redis). The holds cap per address is enforced
by the hold scripts themselves (`address_take` in lua/lib/common.lua), fed the address key.

Not limited: loopback addresses outside production (this host: tools, a load generator on the same
machine; `FLASHGATE_SYBIL_EXEMPT_LOOPBACK` decides) and
addresses that are themselves trusted proxies (`FLASHGATE_TRUSTED_PROXIES`; a request resolves to
one only when no untrusted hop named a client: your own infrastructure, or a load generator you
trust to name its buyers; gateway/api/clientip.py). A reverse proxy on the same host must be
declared as trusted, or every buyer would arrive from loopback and go unlimited.
"""

from __future__ import annotations

import ipaddress
import math
import time

import hotpath

from gateway.api.clientip import ClientAddresses
from gateway.core.config import Settings
from gateway.core.errors import DomainError
from gateway.core.metrics import count_rate_limited

_MEMO = 65_536
_TABLE = 100_000


class AddressKeys:
    """The address and prefix keys of client addresses (memoised: one dict lookup per request)."""

    def __init__(self, settings: Settings, addresses: ClientAddresses) -> None:
        self.addresses = addresses
        self.v4_prefix = settings.ipv4_prefix_bits
        self.v6_address = settings.ipv6_address_bits
        self.v6_prefix = settings.ipv6_prefix_bits
        exempt = settings.sybil_exempt_loopback
        self.exempt_loopback = settings.environment != "production" if exempt is None else exempt
        self._memo: dict[str, tuple[str, str] | None] = {}

    def of(self, address: str) -> tuple[str, str] | None:
        """(address key, prefix key) of a client address; None when the address is exempt (loopback or
        a trusted proxy). Something that is not an IP address (a test client's name) is its own key."""
        hit = self._memo.get(address, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        keys: tuple[str, str] | None
        if self.addresses.networks and self.addresses.trusts(address):
            keys = None
        else:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                keys = (address, address)
            else:
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                if ip.is_loopback and self.exempt_loopback:
                    keys = None
                elif ip.version == 4:
                    net = ipaddress.ip_network(f"{ip}/{self.v4_prefix}", strict=False)
                    keys = (str(ip), str(net))
                else:
                    own = ipaddress.ip_network(f"{ip}/{self.v6_address}", strict=False)
                    net = ipaddress.ip_network(f"{ip}/{self.v6_prefix}", strict=False)
                    keys = (str(own), str(net))
        if len(self._memo) >= _MEMO:
            self._memo.clear()
        self._memo[address] = keys
        return keys

    def address_key(self, address: str) -> str | None:
        keys = self.of(address)
        return keys[0] if keys is not None else None


class MintLimits:
    """Buyer tokens per address and per network prefix: token buckets in this worker (each worker
    has its own, so a deployment of N workers lets up to N times the figures through)."""

    def __init__(self, settings: Settings, keys: AddressKeys) -> None:
        s = settings
        self.keys = keys
        self.per_ip = _table(s.buyer_token_per_ip_per_s, s.buyer_token_per_ip_burst)
        self.per_prefix = _table(s.buyer_token_per_prefix_per_s, s.buyer_token_per_prefix_burst)

    def check(self, address: str) -> None:
        """Spend one mint of this address and its prefix, or raise 429 `rate_limited` with Retry-After
        (nothing is spent when either refuses)."""
        keys = self.keys.of(address)
        if keys is None:
            return
        now = time.monotonic()
        own, prefix = keys
        per_ip, per_prefix = self.per_ip, self.per_prefix
        if per_ip is not None and per_ip.retry_after(own, now) > 0:
            raise _refused(per_ip.retry_after(own, now), "address", own)
        if per_prefix is not None and not per_prefix.allow(prefix, now):
            raise _refused(per_prefix.retry_after(prefix, now), "prefix", prefix)
        if per_ip is not None:
            per_ip.allow(own, now)


def _table(rate: float, burst: float) -> hotpath.TokenBucketTable | None:
    if rate <= 0 or burst <= 0:
        return None
    return hotpath.TokenBucketTable(rate, max(1.0, burst), _TABLE)


def _refused(retry_after: float, scope: str, key: str) -> DomainError:
    count_rate_limited("buyer_token_" + scope)
    wait = max(1, math.ceil(retry_after))
    where = "address" if scope == "address" else "network"
    return DomainError("rate_limited", f"Too many buyer tokens were made from your {where} just now; keep the "
                       f"one you have (it lasts 24 hours) or try again in {wait} s.",
                       details={"retry_after_s": wait, "scope": scope, "key": key},
                       headers={"Retry-After": str(wait)})
