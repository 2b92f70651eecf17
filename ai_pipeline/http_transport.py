"""The HTTP transport under httpx for many requests in flight at once: aiohttp's connection pool.

A run keeps dozens of requests to Replicate (through the official client, which speaks httpx) and to
its delivery host in flight. Under httpx's own transport, httpcore's pool, h11 and anyio were about
half of the run worker's event-loop CPU (cProfile). `AiohttpTransport` keeps httpx's API (requests,
responses, timeouts, errors, proxy settings) and hands the wire to aiohttp, whose pool and HTTP parser
are C: the official client's create plus one download cost 1.5 ms of CPU here, 5.5 ms through httpx's
own transport (bench/bench_transport.py, bench/RESULTS.md).

Errors are mapped to httpx's so that callers can still tell "never sent" (`ConnectError`,
`ConnectTimeout`: safe to send again) from "sent, answer lost" (`RemoteProtocolError`, `ReadError`,
`ReadTimeout`: a create may have happened). A mapping that blurred the two would turn a lost answer
into a second billed prediction, so it is spelled out here and tested, not taken from a library.

Not the `httpx-aiohttp` package (0.2.0): no cheaper (median 1.02x our CPU over 8 alternating rounds,
0.79-1.32), and it maps a server that hangs up after the request, or resets, to `ConnectTimeout` (a
second billed prediction), lets a malformed answer escape as an aiohttp error, re-quotes URLs (`?x=%2F`
goes out as `?x=/`), adds Accept-Encoding and a cookie jar, and keeps one session for good (none in the
next event loop, none after `aclose`). Making it safe meant overriding every method it has.

Proxies: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY (either case) count as httpx counts them with
`trust_env` (read once, with httpx's own functions); http and https proxies only (aiohttp has no SOCKS).
A request pinned to a checked address (storage/fetch.py) is matched by its name (`sni_hostname`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl

# httpx's own reading of the proxy variables and its URL patterns, so that NO_PROXY means here what it
# means to httpx. Private to httpx; a rename shows up as an import error, and the proxy tests pin them.
from httpx._utils import URLPattern, get_environment_proxies

_CHUNK_BYTES = 64 * 1024


def transport_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for an aiohttp (or timeout) error raised while sending `request`."""
    message = str(exc) or type(exc).__name__
    # Never sent: nothing reached the server, so sending again is safe.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connecting, or waiting for a pooled one
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    # Sent (or partly sent): the answer was lost; the request may have taken effect.
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # the proxy refused the tunnel, as httpx reports it
        return httpx.ProxyError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed answer
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, OSError):  # ClientOSError and the like: reset while sending or reading
        return httpx.ReadError(message, request=request)
    return httpx.NetworkError(message, request=request)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK_BYTES):
                yield chunk
        except (OSError, aiohttp.ClientError) as exc:  # OSError includes TimeoutError
            raise transport_error(exc, self._request) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()  # abandoned half-way (e.g. too large): the connection is dropped


ProxyRoutes = list[tuple[URLPattern, httpx.Proxy | None]]


def environment_proxies() -> ProxyRoutes:
    """The proxy for each kind of URL as httpx reads the environment (most specific first; None: go
    direct). Raises ValueError for a proxy this transport cannot speak to."""
    routes = [
        (URLPattern(pattern), None if url is None else httpx.Proxy(url))
        for pattern, url in get_environment_proxies().items()
    ]
    for _pattern, proxy in routes:
        if proxy is not None and proxy.url.scheme not in ("http", "https"):
            raise ValueError(f"proxy {proxy.url} is not supported: aiohttp speaks to http and https proxies")
    return sorted(routes, key=lambda route: route[0].priority)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's async transport interface over one aiohttp session (per event loop).

    Bodies are passed through as they are (no decompression here: httpx decodes them, as with its own
    transport); the `sni_hostname` request extension sets the TLS server name, as httpcore does. With
    `trust_env` (the default, as in httpx) the proxy variables are read when the transport is made.
    """

    def __init__(self, max_connections: int, *, trust_env: bool = True) -> None:
        self._max_connections = max_connections
        self._proxies: ProxyRoutes = environment_proxies() if trust_env else []
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session (its connections) belongs to the loop it was made in.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=5.0,
                ttl_dns_cache=60,
                ssl=httpx.create_ssl_context(),  # certifi's CAs, as with httpx's own transport
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            self._loop = loop
        return self._session

    def _proxy_for(self, request: httpx.Request) -> httpx.Proxy | None:
        url = request.url
        name = request.extensions.get("sni_hostname")
        if name:  # pinned to a checked address: the request is for the name it presents
            url = url.copy_with(host=name)
        for pattern, proxy in self._proxies:
            if pattern.matches(url):
                return proxy
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_for_this_loop()
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        body = await request.aread()
        proxy = self._proxy_for(request) if self._proxies else None
        try:
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=[(name, value) for name, value in request.headers.multi_items()],
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=None if proxy is None else str(proxy.url),
                proxy_auth=None if proxy is None or proxy.auth is None else aiohttp.BasicAuth(*proxy.auth),
                proxy_headers=None if proxy is None else dict(proxy.headers),
            )
        except (OSError, aiohttp.ClientError) as exc:  # OSError includes TimeoutError
            raise transport_error(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def pooled_async_transport(max_connections: int, *, trust_env: bool = True) -> AiohttpTransport:
    """An httpx async transport with up to `max_connections` connections at once (idle ones are kept
    for 5 s), through the proxies the environment names unless `trust_env` is False."""
    return AiohttpTransport(max_connections, trust_env=trust_env)
