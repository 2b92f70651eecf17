"""Webhooks out: events from the outbox (written by the database with each status change, migration
0022) delivered as signed POSTs, the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<HMAC-SHA256>`, signed with the application's `whsec_` secret by the
`standardwebhooks` package, as Replicate signs its own).

- claimed under a lease, like requests: a worker killed mid-delivery leaves the event to the next claim,
  so an event is delivered at least once (receivers dedupe on `webhook-id`, which never changes);
- the body is built once and kept, so every attempt sends the same bytes;
- retried with backoff (the project's `retry.Backoff`) until a 2xx, for `AI_PIPELINE_WEBHOOK_RETRY_HOURS`;
- only to hosts on `AI_PIPELINE_WEBHOOK_HOSTS`, checked at submission and again, with every address the
  host resolves to, before each attempt (the checks of output downloads: no private, link-local or
  metadata addresses unless the entry is that IP literal); the connection goes to the checked address;
  redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from standardwebhooks import Webhook

from ai_pipeline.db import api_batches, api_keys, submissions, webhook_outbox
from ai_pipeline.db.summaries import batch_summaries
from ai_pipeline.db.webhook_outbox import OutboxEvent
from ai_pipeline.retry import Backoff
from ai_pipeline.service import views
from ai_pipeline.settings import Settings
from ai_pipeline.storage.addresses import (
    DEFAULT_PORTS,
    ascii_host,
    checked_addresses,
    effective_port,
    pinned_request,
    resolve_with_event_loop,
)
from ai_pipeline.storage.allowlist import AllowedHost
from ai_pipeline.storage.errors import OutputRefused, OutputUnavailable, redact_url

if TYPE_CHECKING:
    from ai_pipeline.db.transactions import TransactionRunner

log = logging.getLogger(__name__)

USER_AGENT = "ai-pipeline-webhooks/1"
# Delays between attempts: up to 2 s, 4 s, 8 s, ... at most an hour, with full jitter.
RETRY_BACKOFF = Backoff(attempts=1_000_000, base_seconds=2.0, max_seconds=3600.0)
CLAIM_LIMIT = 20


class WebhookRefused(ValueError):
    """The URL may not receive webhooks (scheme, credentials, host not on the allow-list)."""


@dataclass(frozen=True)
class WebhookPolicy:
    """Where webhooks may go, and how long a delivery may take."""

    allowed_hosts: tuple[str, ...]
    timeout_seconds: float
    retry_seconds: float
    allowlist: tuple[AllowedHost, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowlist", tuple(AllowedHost.parse(e) for e in self.allowed_hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            allowed_hosts=settings.webhook_hosts,
            timeout_seconds=settings.webhook_timeout_seconds,
            retry_seconds=settings.webhook_retry_hours * 3600,
        )

    def check_url(self, url: str) -> str:
        """The URL, if webhooks may be sent to it (addresses are checked again at each delivery)."""
        if not self.allowlist:
            raise WebhookRefused("this service sends no webhooks (no AI_PIPELINE_WEBHOOK_HOSTS configured)")
        if len(url) > 2000:
            raise WebhookRefused("the URL is longer than 2000 characters")
        if not url.isprintable() or not url.isascii() or " " in url:
            raise WebhookRefused("the URL holds spaces, control or non-ASCII characters: percent-encode them")
        try:
            parsed = httpx.URL(url)
            host = ascii_host(parsed).rstrip(".")
        except (httpx.InvalidURL, UnicodeError, ValueError, TypeError):
            raise WebhookRefused("not a valid URL") from None
        if parsed.scheme not in DEFAULT_PORTS or not host:
            raise WebhookRefused("use an http:// or https:// URL with a host")
        if parsed.userinfo:
            raise WebhookRefused("the URL must not carry credentials")
        if not any(entry.matches(host, effective_port(parsed)) for entry in self.allowlist):
            raise WebhookRefused(f"host {host}:{effective_port(parsed)} is not on the webhook allow-list")
        return url


class WebhookWorker:
    """Delivers due outbox events until stopped; one per `serve` process (several are safe: claims
    skip each other's rows)."""

    def __init__(
        self,
        db: TransactionRunner,
        policy: WebhookPolicy,
        *,
        poll_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.owner = f"webhooks:{socket.gethostname()}:{os.getpid()}"
        # Longer than one attempt can take (the deadline covers resolving, connecting and the answer).
        self.lease_seconds = policy.timeout_seconds * 2 + 5
        self._transport = transport or httpx.AsyncHTTPTransport(retries=0)
        self._secrets: dict[str, str] = {}

    async def run(self) -> None:
        """Deliver what is due, then look again every `poll_seconds`; a failed round is logged, not fatal."""
        while True:
            try:
                delivered = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; trying again")
                delivered = 0
            if delivered < CLAIM_LIMIT:
                await asyncio.sleep(self.poll_seconds)

    async def deliver_due(self) -> int:
        """One round: claim due events and attempt each once; returns how many were claimed."""
        events = await self.db.statement(
            webhook_outbox.claim_due_events, self.owner, CLAIM_LIMIT, self.lease_seconds
        )
        await asyncio.gather(*(self._attempt(event) for event in events))
        return len(events)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def _attempt(self, event: OutboxEvent) -> None:
        age = (datetime.now(UTC) - event.created_at).total_seconds()
        status: int | None = None
        try:
            secret = await self._secret(event)
            payload = event.payload or await self.db.statement(
                webhook_outbox.keep_payload, event.id, self.owner, await self._payload(event)
            )
            answered = await self._post(event, secret, json.dumps(payload, separators=(",", ":")))
        except (OutputRefused, WebhookRefused, LookupError) as exc:
            log.warning("webhook %s given up: %s", event.event_id, exc)
            await self.db.statement(webhook_outbox.give_up, event.id, self.owner, None, str(exc))
            return
        except (OutputUnavailable, httpx.TransportError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= answered < 300:
                await self.db.statement(webhook_outbox.mark_delivered, event.id, self.owner, answered)
                return
            status, error = answered, f"answered {answered}"
        if age > self.policy.retry_seconds:
            await self.db.statement(
                webhook_outbox.give_up, event.id, self.owner, status, f"retries ran out; {error}"
            )
            return
        delay = RETRY_BACKOFF.delay(event.attempts - 1)
        log.info(
            "webhook %s attempt %d not acknowledged (%s); again in %.0f s",
            event.event_id,
            event.attempts,
            error,
            delay,
        )
        await self.db.statement(webhook_outbox.reschedule, event.id, self.owner, delay, status, error)

    async def _secret(self, event: OutboxEvent) -> str:
        if event.application_id is None:
            raise LookupError("the event belongs to no application, so there is no secret to sign it with")
        secret = self._secrets.get(event.application_id)
        if secret is None:
            secret = await self.db(api_keys.webhook_secret, event.application_id)
            if secret is None:
                raise LookupError(f"application {event.application_id!r} does not exist")
            self._secrets[event.application_id] = secret
        return secret

    async def _payload(self, event: OutboxEvent) -> dict[str, Any]:
        """The event's body: its type, when it happened, and the object as the API shows it."""
        data: dict[str, Any]
        if event.request_id is not None:
            row = await self.db(submissions.generation_by_id, event.request_id)
            if row is None:
                raise LookupError(f"request {event.request_id} does not exist")
            data = views.generation(row)
        else:
            assert event.batch_id is not None
            record = await self.db(api_batches.batch, event.batch_id, None)
            if record is None:
                raise LookupError(f"batch {event.batch_id} does not exist")
            summaries = await self.db(batch_summaries, event.batch_id)
            data = views.batch(record, summaries[0] if summaries else None)
        return {"type": event.event_type, "timestamp": views.iso(event.created_at), "data": data}

    async def _post(self, event: OutboxEvent, secret: str, body: str) -> int:
        url = httpx.URL(self.policy.check_url(event.url))
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(event.event_id, now, body),
        }
        async with asyncio.timeout(self.policy.timeout_seconds):
            addresses = await checked_addresses(url, self.policy.allowlist, resolve_with_event_loop)
            last: Exception | None = None
            for address in addresses:
                request = pinned_request(
                    "POST",
                    url,
                    address,
                    headers=headers,
                    content=body.encode(),
                    timeout_seconds=self.policy.timeout_seconds,
                )
                try:
                    response = await self._transport.handle_async_request(request)
                except httpx.ConnectError as exc:
                    last = exc
                    continue
                try:
                    await response.aread()  # drain, so the connection can be reused
                finally:
                    await response.aclose()
                return response.status_code
        raise OutputUnavailable(f"cannot connect to {redact_url(url)}: {last}", url=redact_url(url))


@contextlib.asynccontextmanager
async def running_worker(worker: WebhookWorker) -> Any:
    """Run the worker in the background for the block's duration."""
    task = asyncio.create_task(worker.run(), name="webhook-worker")
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.aclose()
