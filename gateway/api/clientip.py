"""The buyer's address, for the per-address limits (waiting room joins and polls, token minting).

Behind a load balancer or CDN every request arrives from the proxy's address, so the limits would
treat a whole stadium as one client. `FLASHGATE_TRUSTED_PROXIES` lists the networks whose
`X-Forwarded-For` is believed (comma-separated CIDRs, e.g. `10.0.0.0/8,127.0.0.1/32`); empty (the
default) believes no one. The client is the right-most address in `X-Forwarded-For` that is not
itself a trusted proxy, as each proxy appends the address it saw; anything a client writes into the
header itself sits to the left of that and is ignored. A header that does not parse falls back to
the peer's address.
"""

from __future__ import annotations

import ipaddress

FORWARDED_FOR = b"x-forwarded-for"
_MEMO = 4096


class ClientAddresses:
    def __init__(self, trusted: str) -> None:
        self.networks = tuple(ipaddress.ip_network(part.strip(), strict=False)
                              for part in trusted.split(",") if part.strip())
        self._trusted: dict[str, bool] = {}

    def trusts(self, address: str) -> bool:
        hit = self._trusted.get(address)
        if hit is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                hit = False
            else:
                hit = any(ip in net for net in self.networks)
            if len(self._trusted) >= _MEMO:
                self._trusted.clear()
            self._trusted[address] = hit
        return hit

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address given the TCP peer and the `X-Forwarded-For` header (if any)."""
        if not self.networks or not forwarded_for or not self.trusts(peer):
            return peer
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not self.trusts(hop):
                return hop
        return peer

    def of_scope(self, scope: dict) -> str:
        client = scope.get("client")
        peer = client[0] if client else "-"
        if not self.networks:
            return peer
        forwarded = None
        for key, value in scope["headers"]:
            if key == FORWARDED_FOR:
                forwarded = value.decode("latin-1") if forwarded is None else forwarded + "," + value.decode("latin-1")
        return self.resolve(peer, forwarded)
