"""Download one output file from a Replicate delivery host, safely.

The URL comes from a third party, so every hop is checked before a byte is sent:
- scheme http or https, no credentials in the URL;
- host on the allowlist (`FetchPolicy.allowed_hosts`: exact names, `*.suffix`, or `host:port` for one
  port only);
- every address the host resolves to is checked: link-local, multicast, unspecified, reserved and cloud
  metadata addresses are always refused; private and loopback ones only pass when the allowlist entry
  that matched is itself an IP literal or `localhost` (the local emulator at `127.0.0.1:8787`), so a
  delivery name that resolves to 10.x is refused;
- the connection goes to the address that was checked (the request is pinned to it, with the original
  Host header and TLS server name), so a second, different DNS answer cannot slip past the check
  (DNS rebinding);
- redirects are followed by hand, at most `max_redirects`, each hop checked again;
- the body is streamed and abandoned once it passes `max_bytes`; one deadline covers everything.

Requests go straight to an httpx transport, not through an `httpx.AsyncClient`: every feature a client
adds (base URL, default headers, auth, cookies, redirects) is one this module must not use, and in the
run worker the client layer cost about as much CPU as the transport under it (cProfile).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from ai_pipeline.settings import Settings
from ai_pipeline.storage.errors import (
    OutputFetchError,
    OutputGone,
    OutputRefused,
    OutputUnavailable,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves (host, port) to IP address strings. The default uses the event loop's getaddrinfo."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"
USER_AGENT = "ai-pipeline (output download)"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_GONE_STATUSES = frozenset({401, 403, 404, 410})
_DEFAULT_PORTS = {"http": 80, "https": 443}

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


@dataclass(frozen=True)
class AllowedHost:
    """One parsed allowlist entry."""

    host: str  # lower case, no trailing dot; for wildcards the suffix without "*."
    port: int | None  # None: any port
    wildcard: bool

    @classmethod
    def parse(cls, entry: str) -> AllowedHost:
        """Parse `name`, `*.suffix`, `host:port`, `1.2.3.4`, `::1` or `[::1]:8787`."""
        text = entry.strip().lower()
        wildcard = text.startswith("*.")
        if wildcard:
            text = text[2:]
        host, port = text, None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                port = _parse_port(rest.removeprefix(":"), entry)
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = _parse_port(port_text, entry)
        host = host.rstrip(".")
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        literal = _ip_literal(host)
        if literal is not None:
            host = str(literal)
        if not host:
            raise ValueError(f"empty host in allowlist entry {entry!r}")
        return cls(host=host, port=port, wildcard=wildcard)

    @property
    def trusts_private_addresses(self) -> bool:
        """An operator who lists an IP literal or `localhost` means that very machine: let it through."""
        return not self.wildcard and (self.host == "localhost" or _ip_literal(self.host) is not None)

    def matches(self, host: str, port: int) -> bool:
        """Whether a URL's (normalised) host and effective port fall under this entry."""
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched: allowed hosts, the size cap and the overall deadline per file."""

    allowed_hosts: tuple[str, ...]
    max_bytes: int
    timeout_seconds: float
    max_redirects: int = 3
    allowlist: tuple[AllowedHost, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parsed once, so a malformed entry fails at start-up rather than on the first download.
        object.__setattr__(self, "allowlist", tuple(AllowedHost.parse(e) for e in self.allowed_hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The policy configured by `AI_PIPELINE_OUTPUT_HOSTS`, `…_MAX_BYTES`, `…_TIMEOUT_SECONDS`."""
        return cls(
            allowed_hosts=settings.output_hosts,
            max_bytes=settings.output_max_bytes,
            timeout_seconds=settings.output_timeout_seconds,
        )


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded output. `source_url` is the URL asked for (before any redirect)."""

    content: bytes
    content_type: str
    source_url: str


async def fetch_output(
    transport: httpx.AsyncBaseTransport,
    url: str,
    policy: FetchPolicy,
    *,
    resolve: Resolver | None = None,
) -> FetchedFile:
    """Download one output file under `policy`.

    Raises `OutputRefused` (policy says no; permanent), `OutputGone` (404/410/403; permanent) or
    `OutputUnavailable` (5xx, 429, timeouts, connection and DNS errors; transient). The headers sent
    are Host, Accept and User-Agent: never the Replicate token or a cookie.
    """
    resolver = resolve or _resolve_with_event_loop
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            return await _fetch_following_redirects(transport, url, policy, resolver)
    except TimeoutError:
        raise OutputUnavailable(
            f"fetching {redact_url(url)} took longer than {policy.timeout_seconds:g}s", url=redact_url(url)
        ) from None


def redact_url(url: str | httpx.URL) -> str:
    """Scheme, host, port and path of a URL: what may be logged. Query, fragment, userinfo dropped."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
        return str(parsed.copy_with(query=None, fragment=None, userinfo=b""))
    except Exception:
        return "<unparseable url>"


async def _fetch_following_redirects(
    transport: httpx.AsyncBaseTransport,
    url: str,
    policy: FetchPolicy,
    resolver: Resolver,
) -> FetchedFile:
    current = _parse_url(url)
    for _hop in range(policy.max_redirects + 1):
        addresses = await _checked_addresses(current, policy.allowlist, resolver)
        outcome = await _get(transport, current, addresses, policy)
        if isinstance(outcome, str):
            current = _parse_url(str(current.join(outcome)))
            continue
        content, content_type = outcome
        return FetchedFile(content=content, content_type=content_type, source_url=url)
    raise OutputRefused(
        f"more than {policy.max_redirects} redirects fetching {redact_url(url)}", url=redact_url(url)
    )


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise OutputRefused("invalid output URL", url=redact_url(url)) from None
    if parsed.scheme not in _DEFAULT_PORTS:
        where = redact_url(parsed)
        raise OutputRefused(f"scheme {parsed.scheme!r} not allowed: {where}", url=where)
    if not parsed.host:
        where = redact_url(parsed)
        raise OutputRefused(f"output URL has no host: {where}", url=where)
    if parsed.userinfo:
        where = redact_url(parsed)
        raise OutputRefused(f"output URL carries credentials: {where}", url=where)
    return parsed


def _effective_port(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


async def _checked_addresses(
    url: httpx.URL, allowlist: tuple[AllowedHost, ...], resolver: Resolver
) -> list[IPAddress]:
    """The addresses `url` may be fetched from, or OutputRefused/OutputUnavailable."""
    host, port = _ascii_host(url).rstrip("."), _effective_port(url)
    literal = _ip_literal(host)
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


async def _get(
    transport: httpx.AsyncBaseTransport, url: httpx.URL, addresses: list[IPAddress], policy: FetchPolicy
) -> tuple[bytes, str] | str:
    """One GET: (content, content type), or the Location of a redirect."""
    last_error: httpx.TransportError | None = None
    # Try each checked address in turn, as a normal client would; only connection failures move on.
    for address in addresses:
        request = _pinned_request(url, address, policy)
        try:
            response = await transport.handle_async_request(request)
        except httpx.ConnectError as exc:
            last_error = exc
            continue
        except httpx.TimeoutException:
            where = redact_url(url)
            raise OutputUnavailable(f"timed out fetching {where}", url=where) from None
        except httpx.TransportError as exc:
            raise _unavailable(exc, url) from None
        try:
            return await _read_response(response, url, policy)
        except httpx.TimeoutException:
            where = redact_url(url)
            raise OutputUnavailable(f"timed out reading {where}", url=where) from None
        except httpx.TransportError as exc:
            raise _unavailable(exc, url) from None
        finally:
            await response.aclose()
    if last_error is None:  # unreachable: _checked_addresses never returns an empty list
        where = redact_url(url)
        raise OutputUnavailable(f"no address to connect to for {where}", url=where)
    raise _unavailable(last_error, url)


def _pinned_request(url: httpx.URL, address: IPAddress, policy: FetchPolicy) -> httpx.Request:
    """A GET to the checked address, presenting the original host name (Host header, TLS SNI)."""
    extensions: dict[str, object] = {"timeout": httpx.Timeout(policy.timeout_seconds).as_dict()}
    target = url
    if _ip_literal(url.host) is None:
        target = url.copy_with(host=str(address))
        extensions["sni_hostname"] = _ascii_host(url)
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "*/*", "User-Agent": USER_AGENT}
    return httpx.Request("GET", target, headers=headers, extensions=extensions)


async def _read_response(
    response: httpx.Response, url: httpx.URL, policy: FetchPolicy
) -> tuple[bytes, str] | str:
    status = response.status_code
    if not 200 <= status < 300:
        where = redact_url(url)
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise OutputFetchError(f"redirect {status} without Location from {where}", url=where)
            return location
        if status in _GONE_STATUSES:
            raise OutputGone(f"{where} answered {status}: the file is gone", url=where, status_code=status)
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise OutputUnavailable(f"{where} answered {status}", url=where, status_code=status)
        raise OutputFetchError(f"{where} answered {status}", url=where, status_code=status)

    declared = response.headers.get("content-length")
    # Content-Length counts encoded bytes; only trust it for an early refusal when nothing is encoded.
    unencoded = "content-encoding" not in response.headers
    if unencoded and declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise _too_large(url, policy)
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > policy.max_bytes:
            raise _too_large(url, policy)
        chunks.append(chunk)
    content_type = response.headers.get("content-type", "").strip() or DEFAULT_CONTENT_TYPE
    return b"".join(chunks), content_type


def _too_large(url: httpx.URL, policy: FetchPolicy) -> OutputRefused:
    where = redact_url(url)
    return OutputRefused(f"{where} is larger than {policy.max_bytes} bytes", url=where)


def _unavailable(exc: httpx.TransportError, url: httpx.URL) -> OutputUnavailable:
    # httpx messages can quote the request URL; keep the query string out of ours.
    detail = str(exc)
    if url.query:
        detail = detail.replace(url.query.decode("ascii", "replace"), "…")
    where = redact_url(url)
    return OutputUnavailable(f"cannot fetch {where}: {type(exc).__name__}: {detail}", url=where)


def _ascii_host(url: httpx.URL) -> str:
    """The host as sent on the wire (IDNA-encoded, lower case)."""
    return url.raw_host.decode("ascii").lower()


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port in allowlist entry {entry!r}")
    return int(text)


async def _resolve_with_event_loop(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
