"""Caps on predictions in flight that hold across every run and host: `AI_PIPELINE_MAX_IN_FLIGHT` for
all of them, a catalogue model's `max_in_flight` for that model.

A run holds slots of the shared pools in Postgres (db/flight.py, migration 0013) and hands them to its
own requests in memory: a request takes its model's slot (when the model is capped), then one of the
`replicate` pool, from charge until its prediction ends. About once a second, and when its requests
wait for more, one statement gives back slots the run left idle for a whole second and asks for what
its requests wait for. While another run waits, a run keeps no more than an even share and gives back
the rest as its predictions end. A run that dies frees its slots when its lease on them runs out (or at
once, when the run-failure sensor releases the run).

Why not Dagster's concurrency pools: they count steps, and one step of one run holds dozens of
predictions for minutes; a pool per prediction would mean an op (and its ~90 ms of bookkeeping) per
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.db.flight import Hold, ensure_pools, sync_holds

log = logging.getLogger(__name__)

ALL_PREDICTIONS = "replicate"
# How often a run gives back idle slots and renews its lease on the rest; and the longest it waits
# before asking again for slots its requests wait for.
SYNC_SECONDS = 1.0
# The first wait before asking again, after an answer that granted less than asked for (doubles).
RETRY_SECONDS = 0.05


def model_pool(model: str) -> str:
    """The pool of a catalogue model's own cap."""
    return f"model:{model}"


@dataclass
class _Pool:
    name: str
    held: int = 0  # slots the database says this run holds
    in_use: int = 0  # of those, held by a request now
    share: int | None = None  # the most to keep (an even share while another run waits)
    idle_low: int = 0  # the fewest idle slots since the last sync: idle the whole time, given back
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    @property
    def idle(self) -> int:
        return self.held - self.in_use

    def limit(self) -> int:
        return self.held if self.share is None else min(self.held, self.share)


def pool_capacities(max_in_flight: int, catalogue: Mapping[str, ModelSpec]) -> dict[str, int]:
    """Every pool and its cap: all predictions, and each catalogue model that has a cap of its own."""
    capacities = {ALL_PREDICTIONS: max_in_flight}
    capacities.update(
        {model_pool(name): spec.max_in_flight for name, spec in catalogue.items() if spec.max_in_flight}
    )
    return capacities


class SharedSlots:
    """One run's slots of the shared pools. `statement` runs a one-statement function, `transaction`
    a function in a transaction (`TransactionRunner`)."""

    def __init__(
        self,
        statement: Callable[..., Awaitable[Any]],
        transaction: Callable[..., Awaitable[Any]],
        *,
        owner: str,
        lease_seconds: float,
    ) -> None:
        self._statement = statement
        self._transaction = transaction
        self.owner = owner
        self._lease = float(lease_seconds)
        self._pools: dict[str, _Pool] = {}
        self._wake = asyncio.Event()  # a request waits, and the last sync left none waiting
        self._stop = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self.syncs = 0

    async def start(self, capacities: Mapping[str, int]) -> None:
        """Create or resize the pools (`pool_capacities`), then keep this run's holds of them in step
        until `stop`."""
        await self._transaction(ensure_pools, capacities)
        self._pools = {name: _Pool(name) for name in capacities}
        self._syncer = asyncio.create_task(self._sync_loop())

    async def stop(self) -> None:
        """Give every slot back (after a sync under way: cancelled, it would still run, and could take
        slots after these were given back)."""
        if self._syncer is not None:
            self._stop.set()
            await self._syncer
        held = {pool.name: (0, 0) for pool in self._pools.values() if pool.held}
        if held:
            await self._statement(sync_holds, self.owner, held, self._lease)
        for pool in self._pools.values():
            pool.held = 0

    @contextlib.asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        """Hold a slot for one prediction of `model` (its model's pool first, when it has one)."""
        names = [name for name in (model_pool(model), ALL_PREDICTIONS) if name in self._pools]
        taken: list[str] = []
        try:
            for name in names:
                await self._acquire(self._pools[name])
                taken.append(name)
            yield
        finally:
            for name in reversed(taken):
                self._release(self._pools[name])

    async def _acquire(self, pool: _Pool) -> None:
        if not pool.waiters and pool.in_use < pool.limit():
            pool.in_use += 1
            pool.idle_low = min(pool.idle_low, pool.idle)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        self._wake.set()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(pool)  # handed a slot just as it was cancelled
            else:
                with contextlib.suppress(ValueError):
                    pool.waiters.remove(waiter)
            raise

    def _release(self, pool: _Pool) -> None:
        pool.in_use -= 1
        self._serve(pool)

    def _serve(self, pool: _Pool) -> None:
        """Hand idle slots to waiting requests, in the order they came, as far as the share allows."""
        while pool.waiters and pool.in_use < pool.limit():
            waiter = pool.waiters.popleft()
            if not waiter.done():
                pool.in_use += 1
                waiter.set_result(None)
        pool.idle_low = min(pool.idle_low, pool.idle)

    async def _sync_loop(self) -> None:
        """Sync once a second, and at once when a request waits after a sync that left none waiting;
        while requests still wait after a sync (every slot is taken), again after 0.05 s, doubling
        up to a second: new waiters do not hurry it, so a busy pool costs a statement a second."""
        retry, short = RETRY_SECONDS, False
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(retry if short else SYNC_SECONDS):
                    await (self._stop if short else self._wake).wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            if not any(pool.held or pool.waiters for pool in self._pools.values()):
                short = False
                continue  # an idle run asks nothing of the database
            try:
                short = await self._sync()
            except Exception:  # the next sync tries again; the lease has slack for that
                log.exception("could not sync the slots for predictions in flight")
                short = True
            retry = min(SYNC_SECONDS, retry * 2) if short else RETRY_SECONDS

    async def _sync(self) -> bool:
        """Give back what stayed idle (and what is over the run's share), ask for what requests wait
        for; returns whether some still wait."""
        changes: dict[str, tuple[int, int]] = {}
        given_back: dict[str, int] = {}
        for pool in self._pools.values():
            over_share = max(0, pool.held - pool.limit())
            given_back[pool.name] = min(pool.idle, max(pool.idle_low, over_share))
            pool.held -= given_back[pool.name]  # not handed out again meanwhile
            changes[pool.name] = (pool.held, len(pool.waiters))
        self.syncs += 1
        try:
            holds: list[Hold] = await self._statement(sync_holds, self.owner, changes, self._lease)
        except Exception:
            for pool in self._pools.values():
                pool.held += given_back[pool.name]
            raise
        for hold in holds:
            pool = self._pools[hold.pool]
            pool.held, pool.share = hold.held, hold.share
            self._serve(pool)
            pool.idle_low = pool.idle
        return any(pool.waiters for pool in self._pools.values())
