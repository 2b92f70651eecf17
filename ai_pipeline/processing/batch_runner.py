"""Work through one batch: many requests in flight at once, each taken as far as it goes by
`RequestFlow` and settled by compare-and-set.

The run claims due requests in chunks, keeps up to `run_in_flight` predictions going (within the caps
all runs share: processing/in_flight.py), renews the leases of what it holds, and gives back what it
claimed but never started when it stops. No Dagster here: the batch asset calls `BatchRunner.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from replicate.client import Client
from sqlalchemy import Engine

from ai_pipeline.db.breakers import BreakerState
from ai_pipeline.db.claims import ClaimedRequest
from ai_pipeline.http_transport import pooled_async_transport
from ai_pipeline.processing.in_flight import SharedSlots, pool_capacities
from ai_pipeline.processing.request_flow import RequestFlow, RunContext
from ai_pipeline.processing.store import RunStore
from ai_pipeline.replicate.breaker import SharedBreaker, account_probe
from ai_pipeline.replicate.predictions import close_client
from ai_pipeline.replicate.rate_limit import SharedCreateLimiter, creates_bucket
from ai_pipeline.replicate.reconcile import UnrecordedPredictions, client_pages
from ai_pipeline.settings import Settings
from ai_pipeline.storage.allowlist import FetchPolicy

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one run did."""

    batch_id: str
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # How long the run waited for Replicate's circuit breaker (the account refused, or an outage).
    paused_seconds: float = 0.0

    @property
    def handled(self) -> int:
        return sum(self.outcomes.values())


class BatchRunner:
    """Processes the due requests of one batch under one owner (the Dagster run id)."""

    def __init__(
        self,
        engine: Engine,
        replicate_client: Client,
        s3_client: Any,
        settings: Settings,
        *,
        owner: str,
        on_replicate_state: Callable[[BreakerState], None] | None = None,
    ) -> None:
        """`on_replicate_state` hears every pause and resume of work at Replicate this run sees (the
        circuit breaker opening or closing), besides this module's log."""
        self.settings = settings
        self.owner = owner
        self.replicate = replicate_client
        self.store = RunStore(engine, owner, lease_seconds=settings.lease_seconds)
        self._uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3")
        self._held: set[int] = set()
        self._create_bucket = creates_bucket(settings.creates_per_minute)
        self._on_replicate_state = on_replicate_state
        self._breaker = SharedBreaker(
            self.store.statement,
            owner=owner,
            probe=account_probe(replicate_client),
            first_cooldown=settings.breaker_cooldown_seconds,
            on_change=self._replicate_state_changed,
        )
        self._context = RunContext(
            settings=settings,
            store=self.store,
            replicate=replicate_client,
            s3=s3_client,
            uploads=self._uploads,
            limiter=SharedCreateLimiter(self.store.statement, self._create_bucket),
            breaker=self._breaker,
            unrecorded=UnrecordedPredictions(client_pages(replicate_client, self._breaker)),
            catalogue={},
            run_slots=asyncio.Semaphore(settings.run_in_flight),
            slots=SharedSlots(
                self.store.statement,
                self.store.transactions,
                owner=owner,
                lease_seconds=settings.lease_seconds,
            ),
            fetch_policy=FetchPolicy.from_settings(settings),
        )
        self._flow = RequestFlow(self._context)

    def run(self, batch_id: str) -> RunReport:
        """Process the batch until nothing in it is due; blocking.

        On uvloop where it is installed: the event loop's own work is a large share of a run's CPU.
        """
        try:
            import uvloop
        except ImportError:  # e.g. on Windows
            return asyncio.run(self.run_async(batch_id))
        return uvloop.run(self.run_async(batch_id))

    async def run_async(self, batch_id: str) -> RunReport:
        report = RunReport(batch_id)
        started = time.monotonic()
        context = self._context
        context.catalogue = await self.store.catalogue()
        await self.store.ensure_bucket(self._create_bucket)
        await self.store.release_expired_leases(batch_id)
        await self._breaker.start()
        await context.slots.start(pool_capacities(self.settings.max_in_flight, context.catalogue))
        # Downloads are short: a small pool suffices.
        async with pooled_async_transport(max(8, self.settings.run_in_flight // 2)) as http:
            context.http = http
            renewer = asyncio.create_task(self._renew_leases())
            try:
                await self._drain(batch_id, report)
            finally:
                renewer.cancel()
                await context.slots.stop()
                self._breaker.stop()
                report.paused_seconds = self._breaker.paused_seconds
                context.unrecorded.close()
                context.http = None
                await close_client(self.replicate)  # its connections belong to this event loop
        self._uploads.shutdown(wait=True)
        self.store.close()
        report.seconds = time.monotonic() - started
        return report

    async def _drain(self, batch_id: str, report: RunReport) -> None:
        """Keep `run_in_flight` predictions going, refilling each freed slot from a queue of claimed requests.

        The queue is topped up by one claim of up to `claim_chunk` rows when it runs low, so a slot never
        waits for the database and the database sees one claim per many requests.
        """
        settings = self.settings
        in_flight: set[asyncio.Task[str]] = set()
        # Finished tasks arrive here (asyncio.wait would walk every task in flight on each call).
        finished: asyncio.Queue[asyncio.Task[str]] = asyncio.Queue()
        ready: deque[ClaimedRequest] = deque()
        # Tasks beyond the prediction bound are downloading, storing or settling finished work.
        max_tasks = settings.run_in_flight + max(4, settings.run_in_flight // 2)
        refill_below = max(1, settings.run_in_flight // 2)
        batch_empty = False
        try:
            while True:
                if not batch_empty and len(ready) < refill_below:
                    wanted = min(settings.claim_chunk, settings.run_in_flight)
                    claimed = await self.store.claim(batch_id, wanted)
                    batch_empty = len(claimed) < wanted
                    self._held.update(request.id for request in claimed)
                    ready.extend(claimed)
                while ready and len(in_flight) < max_tasks:
                    task = asyncio.create_task(self._process(ready.popleft()))
                    task.add_done_callback(finished.put_nowait)
                    in_flight.add(task)
                if not in_flight:
                    return
                done = await _finished_within(finished, 1.0)
                for task in done:
                    in_flight.discard(task)
                    report.outcomes[task.result()] += 1
                if batch_empty and done and not ready:
                    # Requests handed back with no delay, or released by a sweeper, are due again.
                    batch_empty = False
        finally:
            for task in in_flight:
                task.cancel()
            if ready:  # only on cancellation: give back what was claimed but never started
                await self.store.give_back_unstarted([r.id for r in ready])

    def _replicate_state_changed(self, state: BreakerState) -> None:
        if state.closed:
            log.warning("Replicate works again: resuming")
        else:
            log.warning("Replicate %s", state.describe())
        if self._on_replicate_state is not None:
            self._on_replicate_state(state)

    async def _process(self, request: ClaimedRequest) -> str:
        try:
            return await self._flow.process(request)
        finally:
            self._held.discard(request.id)

    async def _renew_leases(self) -> None:
        interval = max(1.0, self.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            held = list(self._held)
            try:
                still = await self.store.renew_leases(held)
            except Exception:  # the next renewal tries again; the lease has slack for that
                log.exception("lease renewal failed")
                continue
            lost = set(held) - still
            if lost:
                log.warning("lost the lease on %d request(s); another run holds them now", len(lost))


async def _finished_within(
    finished: asyncio.Queue[asyncio.Task[str]], timeout: float
) -> list[asyncio.Task[str]]:
    """Every task in `finished` once at least one is there, or none after `timeout` seconds."""
    done: list[asyncio.Task[str]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            done.append(await finished.get())
    while not finished.empty():
        done.append(finished.get_nowait())
    return done
