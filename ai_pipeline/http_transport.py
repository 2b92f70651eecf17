"""HTTP transports for many requests in flight at once.

A run keeps dozens of requests to Replicate and its delivery host in flight, and httpcore 1.0's
connection pool is costly at that size, measured at about 3 ms of CPU per pipeline request:

- its clean-up loop runs on every request and, for each idle connection, builds a list of all
  connections only to take its length (quadratic in the pool size);
- its "did the server close this idle connection?" check rebuilds a dict of socket attributes,
  `getpeername` included, every time, and makes a `poll` system call, for every idle connection on
  every request (counted: about 150 polls per pipeline request with 50 in flight).

`pooled_async_transport` returns httpx's transport with a pool that does the same with a length and a
remembered socket, and checks only the connection it is about to reuse (all of them once a second).
It is only installed on the httpcore line it was checked against (1.0.x); any other
version keeps httpx's own pool.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore._utils import is_socket_readable

_CHECKED_HTTPCORE = "1.0."


class _CachedSocketStream(AnyIOStream):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._raw_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_socket_readable(self._raw_socket)
        return super().get_extra_info(info)

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        upgraded = await super().start_tls(*args, **kwargs)
        return _CachedSocketStream(upgraded._stream)  # type: ignore[attr-defined]


class _CachedSocketBackend(AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(*args, **kwargs)
        return _CachedSocketStream(stream._stream)  # type: ignore[attr-defined]


class _LinearConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, with its per-request clean-up made linear in the number of connections, and
    the "did the server close it?" check (a `poll` system call per idle connection) made only for the
    connection about to be reused, plus a full sweep at most once per `SWEEP_SECONDS`."""

    SWEEP_SECONDS = 1.0
    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[Any]:
        closing_connections: list[Any] = []
        now = time.monotonic()
        # The clean-up visits every connection: once a second, or when the pool is full and a closed or
        # surplus idle connection may be in the way of a new one. In between, a closed connection is
        # skipped (it is not available) and an expired idle one is dropped when it comes up for reuse.
        if now >= self._next_sweep or len(self._connections) >= self._max_connections:
            self._next_sweep = now + self.SWEEP_SECONDS
            for connection in list(self._connections):
                if connection.is_closed():
                    self._connections.remove(connection)
                elif connection.has_expired() or (
                    connection.is_idle() and len(self._connections) > self._max_keepalive_connections
                ):
                    self._connections.remove(connection)
                    closing_connections.append(connection)

        for pool_request in [request for request in self._requests if request.is_queued()]:
            origin = pool_request.request.url.origin
            available = None
            for candidate in list(self._connections):
                if not (candidate.can_handle_request(origin) and candidate.is_available()):
                    continue
                if candidate.is_idle() and candidate.has_expired():  # closed by the server, or too old
                    self._connections.remove(candidate)
                    closing_connections.append(candidate)
                    continue
                available = candidate
                break
            if available is not None:
                # To the back of the line: the connections at the front were assigned longest ago, so
                # they are the likeliest to be free, and the next search stops early.
                self._connections.remove(available)
                self._connections.append(available)
                pool_request.assign_to_connection(available)
            elif len(self._connections) < self._max_connections:
                connection = self.create_connection(origin)
                self._connections.append(connection)
                pool_request.assign_to_connection(connection)
            else:
                idle = next((c for c in self._connections if c.is_idle()), None)
                if idle is not None:
                    self._connections.remove(idle)
                    closing_connections.append(idle)
                    connection = self.create_connection(origin)
                    self._connections.append(connection)
                    pool_request.assign_to_connection(connection)
        return closing_connections


def pooled_async_transport(
    max_connections: int, max_keepalive: int | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's async transport with up to `max_connections`, keeping `max_keepalive` idle ones."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive if max_keepalive is not None else max_connections,
    )
    transport = httpx.AsyncHTTPTransport(limits=limits)
    stock = getattr(transport, "_pool", None)
    if httpcore.__version__.startswith(_CHECKED_HTTPCORE) and type(stock) is httpcore.AsyncConnectionPool:
        transport._pool = _LinearConnectionPool(
            ssl_context=stock._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CachedSocketBackend(),
        )
    return transport
