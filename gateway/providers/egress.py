"""Where the platform may send organiser webhooks: public Internet addresses only.

A webhook URL is chosen by an organiser, so without a check it would let anyone make the gateway's
network reach what only the gateway should reach: its own Redis and Postgres on loopback, the
cloud metadata service (169.254.169.254), private networks. Every address a destination resolves
to must be global unicast; loopback, private, link-local, multicast, shared (CGNAT), documentation,
reserved and unspecified addresses are refused, IPv4-mapped IPv6 included. The check runs when an
organiser registers a URL and again on the resolved address of every delivery, which then connects
to exactly the address that was checked (so a DNS answer that changes in between, "DNS rebinding",
cannot reach a refused address).

`FLASHGATE_NOTIFY_WEBHOOK_ALLOW_NETWORKS` (comma-separated CIDRs, empty by default) lets chosen
networks through, e.g. `127.0.0.0/8` for a receiver on a development machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT_S = 3.0


class DestinationRefused(Exception):
    """The destination is not a public address (or cannot be resolved). The message is safe to show."""


def parse_networks(spec: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def refusal(address: Address) -> str | None:
    """Why `address` is not a webhook destination, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason, flag in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                         ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
                         ("private", address.is_private), ("reserved", address.is_reserved)):
        if flag:
            return reason
    if not address.is_global:  # shared address space (100.64.0.0/10), 6to4 relays and the like
        return "non-public"
    return None


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked delivery target: connect to `address`, send `Host: host` (and TLS SNI `hostname`)."""

    url: str
    scheme: str
    hostname: str
    port: int
    address: Address


class EgressPolicy:
    def __init__(self, allow: str = "") -> None:
        self.allow = parse_networks(allow)

    def check_address(self, address: Address) -> None:
        if any(address in net for net in self.allow):
            return
        reason = refusal(address)
        if reason is not None:
            raise DestinationRefused(f"the destination resolves to a {reason} address, which webhooks may not reach")

    async def resolve(self, url: str) -> Destination:
        """Parse, resolve and check a webhook URL; every address it resolves to must pass."""
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise DestinationRefused("the URL does not parse") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise DestinationRefused("the URL must be http:// or https:// with a host name")
        if parts.username is not None or parts.password is not None:
            raise DestinationRefused("the URL must not carry a user name or password")
        try:
            addresses = [ipaddress.ip_address(hostname)]
        except ValueError:
            addresses = await _lookup(hostname, port)
        for address in addresses:
            self.check_address(address)
        return Destination(url=url, scheme=parts.scheme, hostname=hostname, port=port, address=addresses[0])


async def _lookup(hostname: str, port: int) -> list[Address]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(hostname, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError, UnicodeError):
        raise DestinationRefused("the host name does not resolve") from None
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise DestinationRefused("the host name does not resolve")
    return found


def pinned_url(target: Destination) -> str:
    """The URL with its host replaced by the checked address (the Host header and TLS SNI keep the name)."""
    parts = urlsplit(target.url)
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return parts._replace(netloc=f"{host}:{target.port}").geturl()
