"""The circuit breaker every run shares for Replicate: trouble with the account pauses the pipeline
instead of failing (and refunding) every request in it.

A 401, 402 or 403 (a revoked token, billing stopped, access refused: every call fails alike until a
person fixes the account), or `SERVICE_DOWN_STREAK` calls in a row that Replicate failed or never
answered, open it (state in Postgres: db/breakers.py). While it is open no run creates a prediction:
a request's task waits (`wait_closed`) holding its request and its debit, then carries on where it was.
Nothing is failed, refunded or charged again for it.

It closes when a probe succeeds: after a cool-down (`breaker_cooldown_seconds`, doubling after each
failed probe up to `LONGEST_COOLDOWN_SECONDS`) the one run that takes the probe calls
`GET /v1/account`. That proves the token and the service, not billing (Replicate says 402 only to a
create): a breaker a 402 opened closes, the next creates answer 402, and it opens again with twice the
cool-down. A few refused creates per cycle, nothing lost.

Each run reads the shared row once a second, so every run pauses within a second of another's trouble
and resumes within a second of the probe; a request's own calls read only memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from replicate.client import Client

from ai_pipeline.db.breakers import (
    BreakerState,
    close_breaker,
    closed_breaker,
    open_breaker,
    probe_failed,
    read_breaker,
    take_probe,
)
from ai_pipeline.replicate.errors import classify_failure

T = TypeVar("T")
log = logging.getLogger(__name__)

REPLICATE_BREAKER = "replicate"
# Calls in a row (of one run) that Replicate failed or never answered before the run calls it an outage.
# With a fifth of all calls failing at random (the chaos suite), 20 in a row happen about once in 10^14.
SERVICE_DOWN_STREAK = 20
LONGEST_COOLDOWN_SECONDS = 600.0
POLL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 30.0

Probe = Callable[[], Awaitable[object]]
OnChange = Callable[[BreakerState], None]


def account_probe(client: Client) -> Probe:
    """The probe: `GET /v1/account`, the cheapest call that needs a working token and service."""
    return client.accounts.async_current


class SharedBreaker:
    """One run's view of the shared breaker: a gate its tasks wait at, kept in step with the row.

    `statement` runs a one-statement function (`TransactionRunner.statement`); `on_change` hears every
    pause and resume this run sees (the run's log, the Dagster UI).
    """

    def __init__(
        self,
        statement: Callable[..., Awaitable[Any]],
        *,
        owner: str,
        probe: Probe,
        first_cooldown: float,
        on_change: OnChange | None = None,
        name: str = REPLICATE_BREAKER,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._run = statement
        self.owner = owner
        self.name = name
        self._probe = probe
        self._first_cooldown = first_cooldown
        self._on_change = on_change
        self._poll_seconds = poll_seconds
        self._state = closed_breaker(name)
        self._announced = self._state
        self._closed = asyncio.Event()
        self._closed.set()
        self._streak = 0
        self._watcher: asyncio.Task[None] | None = None
        self._paused_at: float | None = None
        self.paused_seconds = 0.0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def generation(self) -> int:
        """How often the breaker has closed: a call notes it when sent (see `failed`)."""
        return self._state.generation

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    async def start(self) -> None:
        """Read the shared state, then follow it (a second apart) until `stop`."""
        self._apply(await self._run(read_breaker, self.name))
        self._watcher = asyncio.create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._paused_at is not None:
            self.paused_seconds += time.monotonic() - self._paused_at
            self._paused_at = None

    async def wait_closed(self) -> None:
        """Return at once while work goes on; while it is paused, when it resumes."""
        if not self._closed.is_set():
            await self._closed.wait()

    async def watched(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, its answer or failure told to the breaker (`succeeded`, `failed`)."""
        generation = self.generation
        try:
            result = await call()
        except Exception as exc:
            await self.failed(exc, generation)
            raise
        self.succeeded()
        return result

    def succeeded(self) -> None:
        """A call was answered: Replicate works."""
        self._streak = 0

    async def failed(self, exc: BaseException, generation: int) -> None:
        """A call sent when the breaker was at `generation` failed with `exc`: open the breaker when
        Replicate refused the account, or when it has failed this run's last `SERVICE_DOWN_STREAK` calls."""
        failure = classify_failure(exc)
        if failure.account:
            reason = failure.message
        elif failure.service_trouble:
            self._streak += 1
            if self._streak < SERVICE_DOWN_STREAK:
                return
            reason = f"{self._streak} calls in a row failed, the last: {failure.message}"
        else:
            if failure.status is not None:  # an answer (a 404, a 429...): the service is there
                self._streak = 0
            return
        if generation < self.generation or self.is_open:
            return  # sent before the breaker last closed, or paused already
        try:
            await self._trip(reason, generation)
        except Exception:  # this run stays paused; its next look at the row sets it right
            log.exception("could not open the Replicate circuit breaker")

    async def _trip(self, reason: str, generation: int) -> None:
        self._closed.clear()  # at once: this run's other tasks stop before the row is written
        if self._paused_at is None:
            self._paused_at = time.monotonic()
        await self._run(
            open_breaker,
            self.name,
            reason,
            generation=generation,
            first_cooldown=self._first_cooldown,
            longest_cooldown=LONGEST_COOLDOWN_SECONDS,
        )
        # Opened by this call, by another run's, or closed since the call was sent: the row says which.
        self._apply(await self._run(read_breaker, self.name))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                state = await self._run(read_breaker, self.name)
                self._apply(state)
                if state.probe_due and await self._run(
                    take_probe, self.name, self.owner, PROBE_TIMEOUT_SECONDS * 2
                ):
                    await self._run_probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next look tries again
                log.exception("could not follow the Replicate circuit breaker")

    async def _run_probe(self) -> None:
        try:
            await asyncio.wait_for(self._probe(), PROBE_TIMEOUT_SECONDS)
        except Exception as exc:
            reason = f"probe failed: {classify_failure(exc).message}"
            await self._run(
                probe_failed, self.name, self.owner, reason, longest_cooldown=LONGEST_COOLDOWN_SECONDS
            )
        else:
            await self._run(close_breaker, self.name, self.owner)
            self._streak = 0
        self._apply(await self._run(read_breaker, self.name))

    def _apply(self, state: BreakerState) -> None:
        """Follow the shared state: open or close the gate, and say so when it changed."""
        self._state = state
        if state.closed:
            if self._paused_at is not None:
                self.paused_seconds += time.monotonic() - self._paused_at
                self._paused_at = None
            self._closed.set()
        else:
            if self._paused_at is None:
                self._paused_at = time.monotonic()
            self._closed.clear()
        # Paused, resumed, or still paused after a failed probe (it set the next one).
        announced = self._announced
        if state.closed != announced.closed or (not state.closed and state.probe_at != announced.probe_at):
            self._announced = state
            if self._on_change is not None:
                self._on_change(state)
