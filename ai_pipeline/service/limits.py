"""Limits: how large a request body may be, and how fast one API key may call.

The rate limit is a token bucket per key in this process's memory, not a row in Postgres: it costs no
round trip on the hot path (a shared bucket row would be one more statement per request, and every
request of a key would queue on that row's lock), at the price of each `serve` process counting on its
own (N processes allow N times the rate). The database's own limits (the ledger, unique keys) do not
depend on it; it only keeps one key from crowding out the others.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ai_pipeline.service.problems import Problem, problem_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Problem):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "too-large", "Request body too large", f"the limit is {limit} bytes", limit=limit
        )


class BodyLimit:
    """ASGI middleware: refuses a body larger than its limit, by Content-Length up front or while it
    streams in (so a chunked upload cannot get past it). Uploads (`upload_paths`) have their own limit."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, max_upload_bytes: int, upload_paths: tuple[str, ...]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope["path"] in self.upload_paths else self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await problem_response(BodyTooLarge(limit))(scope, receive, send)
                return
        received = 0
        over = False
        answered = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded(message: Message) -> None:
            # Once the body ran over, the client gets the 413 below, whatever the app made of the
            # exception (FastAPI turns an error while reading a body into a 400).
            nonlocal answered
            if not over:
                answered = True
                await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counted, guarded)
        if over and not answered:
            await problem_response(BodyTooLarge(limit))(scope, receive, send)


class RateLimiter:
    """Token buckets per key: `burst` requests at once, refilled at `per_second`."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one token of `key`'s bucket, or raise 429 with Retry-After."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.per_second)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.per_second)
                raise Problem(
                    429,
                    "rate-limited",
                    "Too many requests",
                    f"this key may make {self.per_second:g} requests per second (bursts of {self.burst:g})",
                    headers={"Retry-After": str(max(1, wait))},
                )
            self._buckets[key] = (tokens - 1.0, now)
