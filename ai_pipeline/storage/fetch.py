"""Download one output file from a Replicate delivery host, safely.

The URL comes from a third party, so every hop is checked before a byte is sent:
- scheme http or https, no credentials in the URL;
- host on the allowlist and every address it resolves to acceptable (storage/allowlist.py,
  storage/addresses.py);
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
from dataclasses import dataclass

import httpx

from ai_pipeline.storage.addresses import (
    DEFAULT_PORTS,
    IPAddress,
    Resolver,
    checked_addresses,
    pinned_request,
    resolve_with_event_loop,
)
from ai_pipeline.storage.allowlist import AllowedHost, FetchPolicy
from ai_pipeline.storage.errors import (
    OutputFetchError,
    OutputGone,
    OutputRefused,
    OutputUnavailable,
    redact_url,
)

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "USER_AGENT",
    "AllowedHost",
    "FetchPolicy",
    "FetchedFile",
    "Resolver",
    "fetch_output",
    "redact_url",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
USER_AGENT = "ai-pipeline (output download)"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_GONE_STATUSES = frozenset({401, 403, 404, 410})


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
    resolver = resolve or resolve_with_event_loop
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            return await _fetch_following_redirects(transport, url, policy, resolver)
    except TimeoutError:
        raise OutputUnavailable(
            f"fetching {redact_url(url)} took longer than {policy.timeout_seconds:g}s", url=redact_url(url)
        ) from None


async def _fetch_following_redirects(
    transport: httpx.AsyncBaseTransport,
    url: str,
    policy: FetchPolicy,
    resolver: Resolver,
) -> FetchedFile:
    current = _parse_url(url)
    for _hop in range(policy.max_redirects + 1):
        addresses = await checked_addresses(current, policy.allowlist, resolver)
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
    if parsed.scheme not in DEFAULT_PORTS:
        where = redact_url(parsed)
        raise OutputRefused(f"scheme {parsed.scheme!r} not allowed: {where}", url=where)
    if not parsed.host:
        where = redact_url(parsed)
        raise OutputRefused(f"output URL has no host: {where}", url=where)
    if parsed.userinfo:
        where = redact_url(parsed)
        raise OutputRefused(f"output URL carries credentials: {where}", url=where)
    return parsed


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
        except httpx.TransportError as exc:
            raise _unavailable(exc, url, "fetching") from None
        try:
            return await _read_response(response, url, policy)
        except httpx.TransportError as exc:
            raise _unavailable(exc, url, "reading") from None
        finally:
            await response.aclose()
    if last_error is None:  # unreachable: checked_addresses never returns an empty list
        where = redact_url(url)
        raise OutputUnavailable(f"no address to connect to for {where}", url=where)
    raise _unavailable(last_error, url)


def _pinned_request(url: httpx.URL, address: IPAddress, policy: FetchPolicy) -> httpx.Request:
    """A GET to the checked address, presenting the original host name (Host header, TLS SNI)."""
    return pinned_request(
        "GET",
        url,
        address,
        headers={"Accept": "*/*", "User-Agent": USER_AGENT},
        timeout_seconds=policy.timeout_seconds,
    )


async def _read_response(
    response: httpx.Response, url: httpx.URL, policy: FetchPolicy
) -> tuple[bytes, str] | str:
    status = response.status_code
    if not 200 <= status < 300:
        where = redact_url(url)
        if status in _REDIRECT_STATUSES:
            location: str | None = response.headers.get("location")
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


def _unavailable(exc: httpx.TransportError, url: httpx.URL, doing: str = "fetching") -> OutputUnavailable:
    if isinstance(exc, httpx.TimeoutException):
        where = redact_url(url)
        return OutputUnavailable(f"timed out {doing} {where}", url=where)
    # httpx messages can quote the request URL; keep the query string out of ours.
    detail = str(exc)
    if url.query:
        detail = detail.replace(url.query.decode("ascii", "replace"), "…")
    where = redact_url(url)
    return OutputUnavailable(f"cannot fetch {where}: {type(exc).__name__}: {detail}", url=where)
