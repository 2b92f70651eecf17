"""Where an output URL may be fetched from: its host on the allowlist, and every address it resolves to.

Link-local, multicast, unspecified, reserved and cloud metadata addresses are always refused (also as
IPv4-mapped or NAT64 IPv6); private and loopback ones only pass when the allowlist entry that matched
is itself an IP literal or `localhost` (the local emulator), so a delivery name resolving to 10.x is
refused. One refused address refuses the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import httpx

from ai_pipeline.storage.errors import OutputRefused, OutputUnavailable, redact_url

if TYPE_CHECKING:
    from ai_pipeline.storage.allowlist import AllowedHost

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves (host, port) to IP address strings. The default uses the event loop's getaddrinfo."""

DEFAULT_PORTS = {"http": 80, "https": 443}
"""The schemes outputs are fetched over, and the port each implies."""

# Instance metadata services that are not already link-local (169.254.0.0/16 always is).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


async def checked_addresses(
    url: httpx.URL, allowlist: Sequence[AllowedHost], resolver: Resolver
) -> list[IPAddress]:
    """The addresses `url` may be fetched from, or OutputRefused/OutputUnavailable."""
    host, port = ascii_host(url).rstrip("."), effective_port(url)
    literal = ip_literal(host)
    if literal is not None:
        host = str(literal)  # one spelling per address, as in the parsed allowlist
    matched = [entry for entry in allowlist if entry.matches(host, port)]
    if not matched:
        where = redact_url(url)
        raise OutputRefused(f"host {host}:{port} is not an allowed output host: {where}", url=where)
    trust_private = any(entry.trusts_private_addresses for entry in matched)

    if literal is not None:
        addresses = [literal]
    else:
        try:
            resolved = await resolver(host, port)
        except OSError as exc:
            raise OutputUnavailable(f"cannot resolve {host}: {exc}", url=redact_url(url)) from None
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
        if not addresses:
            raise OutputUnavailable(f"{host} resolved to no address", url=redact_url(url))

    for address in addresses:
        reason = _refusal_reason(address, trust_private)
        if reason:
            where = redact_url(url)
            raise OutputRefused(f"{host} resolves to {reason} address {address}: {where}", url=where)
    return addresses


def _refusal_reason(address: IPAddress, trust_private: bool) -> str | None:
    """Why we must not connect to `address`, or None when it is fine."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata"
    if address.is_link_local:
        return "a link-local"
    if address.is_multicast:
        return "a multicast"
    if address.is_unspecified:
        return "an unspecified"
    if not address.is_global and not trust_private:
        return "a private, loopback or reserved"
    return None


def ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells (with or without IPv6 brackets), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def ascii_host(url: httpx.URL) -> str:
    """The host as sent on the wire (IDNA-encoded, lower case)."""
    return url.raw_host.decode("ascii").lower()


def effective_port(url: httpx.URL) -> int:
    """The port a connection for `url` goes to (its scheme's default when the URL names none)."""
    return url.port or DEFAULT_PORTS[url.scheme]


def pinned_request(
    method: str,
    url: httpx.URL,
    address: IPAddress,
    *,
    headers: dict[str, str],
    timeout_seconds: float,
    content: bytes | None = None,
) -> httpx.Request:
    """A request sent to the checked `address`, presenting the URL's host name (Host header, TLS SNI), so
    a second, different DNS answer cannot slip past the check (DNS rebinding)."""
    extensions: dict[str, object] = {"timeout": httpx.Timeout(timeout_seconds).as_dict()}
    target = url
    if ip_literal(url.host) is None:
        target = url.copy_with(host=str(address))
        extensions["sni_hostname"] = ascii_host(url)
    return httpx.Request(
        method,
        target,
        headers={"Host": url.netloc.decode("ascii"), **headers},
        content=content,
        extensions=extensions,
    )


async def resolve_with_event_loop(host: str, port: int) -> list[str]:
    """The default `Resolver`: the event loop's getaddrinfo."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
