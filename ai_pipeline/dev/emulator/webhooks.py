"""Signed webhooks, sent the way Replicate sends them (Standard Webhooks / Svix style).

Each delivery is a POST of the prediction JSON with ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the base64-decoded
part of the secret after ``whsec_``. Events: ``start`` (on create), ``output`` / ``logs`` (while processing,
at most every 500 ms), ``completed`` (terminal). Only the terminal webhook is retried, with doubling
back-off, for ``webhook_retry_window_seconds``; retries keep the same ``webhook-id`` and body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import string
import time
from typing import TYPE_CHECKING, Any

import httpx

from ai_pipeline.dev.emulator.predictions import PROCESSING, Prediction

if TYPE_CHECKING:
    from ai_pipeline.dev.emulator.service import EmulatorService

UPDATE_INTERVAL_SECONDS = 0.5
_ID_ALPHABET = string.ascii_letters + string.digits


def generate_secret(rng: random.Random) -> str:
    """A signing secret in Replicate's format: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(rng.randbytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for this message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, webhook_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """All headers of one delivery attempt."""
    return {
        "content-type": "application/json",
        "user-agent": "Replicate-Webhooks/1.0 (emulator)",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


class WebhookDispatcher:
    """Follows predictions that asked for webhooks and delivers their events."""

    def __init__(self, service: EmulatorService, rng: random.Random) -> None:
        self._service = service
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def follow(self, prediction: Prediction) -> None:
        """Start delivering the events of a new prediction (call from the event loop)."""
        task = asyncio.get_running_loop().create_task(self._follow(prediction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        """Stop following every prediction (reset and shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop all deliveries and close the HTTP client."""
        await self.cancel_all()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _follow(self, prediction: Prediction) -> None:
        events = prediction.webhook_events
        url = prediction.webhook
        if url and "start" in events:
            await self._deliver(url, prediction, "start", retry=False)
        wants_updates = bool(url) and bool(events & {"output", "logs"})
        last_output: Any = None
        last_logs = ""
        while not prediction.is_terminal(now := time.time()):
            if wants_updates and prediction.status_at(now) == PROCESSING:
                output, logs = prediction.output_at(now, prediction.base_url), prediction.logs_at(now)
                event = None
                # An event means something new was produced: an empty output is not an output.
                if "output" in events and output and output != last_output:
                    event = "output"
                elif "logs" in events and logs and logs != last_logs:
                    event = "logs"
                if event is not None and url:
                    last_output, last_logs = output, logs
                    await self._deliver(url, prediction, event, retry=False)
                delay = UPDATE_INTERVAL_SECONDS
            else:
                delay = prediction.next_change_after(now) - now
            await self._service.wait_for_change(
                prediction, min(delay, prediction.next_change_after(now) - now)
            )
        if url and "completed" in events:
            await self._deliver(url, prediction, "completed", retry=True)
        elif (
            url
            and "output" in events
            and prediction.output_at(time.time(), prediction.base_url) != last_output
        ):
            await self._deliver(url, prediction, "output", retry=False)
        if prediction.webhook_completed:
            await self._deliver(prediction.webhook_completed, prediction, "completed", retry=True)

    async def _deliver(self, url: str, prediction: Prediction, event: str, *, retry: bool) -> None:
        service = self._service
        stats = service.stats
        webhook_id = "msg_" + "".join(self._rng.choices(_ID_ALPHABET, k=27))
        body = json.dumps(service.render(prediction, prediction.base_url), separators=(",", ":")).encode()
        config = service.config
        backoff = config.webhook_retry_initial_seconds
        deadline = time.monotonic() + config.webhook_retry_window_seconds
        while True:
            headers = signed_headers(service.webhook_secret, webhook_id, body, int(time.time()))
            stats.webhook_attempts += 1
            try:
                response = await self._http().post(
                    url, content=body, headers=headers, timeout=config.webhook_timeout_seconds
                )
                delivered = 200 <= response.status_code < 300
            except httpx.HTTPError:
                delivered = False
            if delivered:
                stats.webhooks_delivered += 1
                stats.webhooks_by_event[event] += 1
                return
            stats.webhook_failures += 1
            if not retry or time.monotonic() + backoff > deadline:
                return
            await asyncio.sleep(backoff)
            backoff *= 2

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Replicate does not follow redirects when delivering webhooks.
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self._client
