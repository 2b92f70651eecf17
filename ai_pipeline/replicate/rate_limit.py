"""A token bucket in Postgres, shared by every run, for Replicate's per-account create limit.

Callers *reserve* tokens: one UPDATE takes them even when the bucket goes below zero and returns how
long the caller must wait before using them. So a reservation is one round trip, never a polling loop,
and runs on different machines queue fairly behind each other. A 429 from Replicate empties the bucket
for its `retry_after`, which holds back every run, not only the one that saw it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ai_pipeline.db.rate_limits import BucketConfig, penalise, reserve

CREATES_BUCKET = "replicate-creates"


def creates_bucket(creates_per_minute: int) -> BucketConfig:
    """The create bucket: a small burst so a fresh run does not spend a minute's allowance at once."""
    return BucketConfig(CREATES_BUCKET, float(creates_per_minute), burst=max(1.0, creates_per_minute / 60.0))


class SharedCreateLimiter:
    """Hands out create tokens to one run's tasks, reserving them from the shared bucket a few at a time.

    One reservation per few creates instead of one per create keeps the database out of the hot
    path; tasks queue on a lock, so they are served in order and sleep only as long as the bucket says.
    `run_statement` runs a one-statement function (`TransactionRunner.statement`): a reservation is a
    single UPDATE, so it needs no BEGIN and COMMIT around it.
    """

    def __init__(self, run_statement: Callable[..., Awaitable[Any]], config: BucketConfig) -> None:
        self._run = run_statement
        self._config = config
        # About half a second's worth per reservation, between 1 and 10 tokens: at most that many go
        # unused when a run ends, and other runs queue behind a reservation no longer than that.
        self._batch = int(min(10.0, max(1.0, config.refill_per_second / 2)))
        self._available = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until this task may create one prediction."""
        async with self._lock:
            if self._available == 0:
                wait = await self._run(reserve, self._config.name, float(self._batch))
                if wait > 0:
                    await asyncio.sleep(wait)
                self._available = self._batch
            self._available -= 1

    async def throttled(self, retry_after: float | None) -> None:
        """Replicate said 429: hold back every run, and drop the tokens this run still had."""
        self._available = 0
        await self._run(penalise, self._config.name, retry_after or 2.0)
