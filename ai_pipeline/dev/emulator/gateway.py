"""Everything that happens to a request before it reaches a route: counting, the bearer-token check,
billing, rate limits, injected HTTP faults, dropped connections, and slow or failing downloads.

A pure ASGI layer (no per-request objects beyond a closure) so it costs microseconds per request.

Dropping a connection: returning a non-None value from the ASGI callable makes uvicorn close the
socket without writing a byte, so httpx raises ``RemoteProtocolError("Server disconnected without
sending a response.")`` - what a client sees when a load balancer resets the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ai_pipeline.dev.emulator.config import API_KINDS
from ai_pipeline.dev.emulator.faults import DROP, SLOW
from ai_pipeline.dev.emulator.problems import (
    BILLING_REQUIRED,
    PROBLEM_CONTENT_TYPE,
    UNAUTHENTICATED,
    injected_error,
    problem_body,
    throttled_body,
)
from ai_pipeline.dev.emulator.service import EmulatorService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[Any]]

DROP_CONNECTION = "emulator-dropped-connection"


def endpoint_kind(method: str, path: str) -> str:
    """Classify a request: create / get / other (API), download, stream, control or unknown."""
    if path.startswith("/v1/"):
        if method == "POST" and (
            path == "/v1/predictions"
            or (path.endswith("/predictions") and path.startswith(("/v1/models/", "/v1/deployments/")))
        ):
            return "create"
        if method == "GET" and path.startswith("/v1/predictions/") and path.count("/") == 3:
            return "get"
        return "other"
    if path.startswith("/_delivery/"):
        return "download"
    if path.startswith("/_stream/"):
        return "stream"
    if path.startswith("/_emulator/"):
        return "control"
    return "unknown"


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` (or legacy ``Token <token>``) header."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("bearer", "token"):
                return token.strip() or None
            return None
    return None


class _DropConnectionLogFilter(logging.Filter):
    """Keeps uvicorn from logging our deliberate connection drops as application errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.args, tuple) and DROP_CONNECTION in record.args)


def install_log_filter() -> None:
    """Silence uvicorn's complaint about deliberately dropped connections (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropConnectionLogFilter) for f in logger.filters):
        logger.addFilter(_DropConnectionLogFilter())


class Gateway:
    """ASGI wrapper around the Starlette app that applies access rules and injected faults."""

    def __init__(self, app: ASGIApp, service: EmulatorService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return None
        service = self.service
        stats = service.stats
        config = service.config
        kind = endpoint_kind(scope["method"], scope["path"])
        stats.requests += 1
        stats.requests_by_kind[kind] += 1
        extra_headers: list[tuple[bytes, bytes]] = []

        if kind in API_KINDS:
            token = bearer_token(scope)
            if not service.accepts_token(token):
                stats.responses_401 += 1
                return await self._answer(
                    send, 401, problem_body(401, *UNAUTHENTICATED), PROBLEM_CONTENT_TYPE
                )
            if kind == "create" and config.billing_required:
                return await self._answer(
                    send, 402, problem_body(402, *BILLING_REQUIRED), PROBLEM_CONTENT_TYPE
                )
            if config.rate_limits_enabled:
                decision = service.limiter.take(
                    token or "", "create" if kind == "create" else "other", time.time()
                )
                extra_headers = [
                    (b"ratelimit-remaining", str(decision.remaining).encode()),
                    (b"ratelimit-reset", str(decision.reset_seconds).encode()),
                ]
                if not decision.allowed:
                    stats.responses_429[kind] += 1
                    retry_after = [(b"retry-after", str(decision.reset_seconds).encode())]
                    body = throttled_body(decision.reset_seconds)
                    return await self._answer(
                        send, 429, body, PROBLEM_CONTENT_TYPE, extra_headers + retry_after
                    )
            fault = service.injector.http_fault(config, kind)
            if fault == DROP:
                stats.record_fault(kind, "drop")
                if kind == "create" and config.dropped_create_still_creates:
                    await self.app(scope, receive, _discard)  # the work happens, the answer is lost
                return DROP_CONNECTION
            if fault is not None:
                stats.record_fault(kind, f"http_{fault}")
                if fault == 429:
                    stats.responses_429[kind] += 1
                    extra_headers = [*extra_headers, (b"retry-after", b"1")]
                body, content_type = injected_error(int(fault))
                return await self._answer(send, int(fault), body, content_type, extra_headers)
        elif kind == "download":
            download_fault = service.injector.download_fault(config)
            if download_fault == DROP:
                stats.record_fault(kind, "drop")
                return DROP_CONNECTION
            if download_fault == SLOW:
                stats.record_fault(kind, "download_slow")
                await asyncio.sleep(config.download_delay_seconds)
            elif download_fault is not None:
                stats.record_fault(kind, f"download_{download_fault}")
                stats.downloads_by_status[int(download_fault)] += 1
                body = b"Not Found" if download_fault == 404 else b"Internal Server Error"
                return await self._answer(send, int(download_fault), body, "text/plain; charset=utf-8")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                stats.responses_by_status[status] += 1
                if kind == "download":
                    stats.downloads_by_status[status] += 1
                if extra_headers:
                    message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
        return None

    async def _answer(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.service.stats.responses_by_status[status] += 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or ()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _discard(message: Message) -> None:
    """An ASGI ``send`` that throws the answer away (the connection is about to be dropped)."""
