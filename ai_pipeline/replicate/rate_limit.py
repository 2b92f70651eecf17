"""A token bucket in Postgres, shared by every run, for Replicate's per-account create limit.

Callers *reserve* tokens: one UPDATE takes them even when the bucket goes below zero and returns how
long the caller must wait before using them. So a reservation is one round trip, never a polling loop,
and runs on different machines queue fairly behind each other. A 429 from Replicate empties the bucket
for its `retry_after`, which holds back every run, not only the one that saw it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.requests import one_statement

CREATES_BUCKET = "replicate-creates"

_ENSURE = text(
    """
    INSERT INTO rate_limit_buckets (name, tokens, capacity, refill_per_second)
    VALUES (:name, :capacity, :capacity, :refill)
    ON CONFLICT (name) DO UPDATE
        SET capacity = EXCLUDED.capacity, refill_per_second = EXCLUDED.refill_per_second
        WHERE rate_limit_buckets.capacity <> EXCLUDED.capacity
           OR rate_limit_buckets.refill_per_second <> EXCLUDED.refill_per_second
    """
)
_RESERVE = text(
    """
    UPDATE rate_limit_buckets
    SET tokens = LEAST(capacity, tokens + EXTRACT(EPOCH FROM clock_timestamp() - updated_at)
                 * refill_per_second) - :n,
        updated_at = clock_timestamp()
    WHERE name = :name
    RETURNING tokens, refill_per_second
    """
)
_PENALISE = text(
    """
    UPDATE rate_limit_buckets
    SET tokens = LEAST(tokens + EXTRACT(EPOCH FROM clock_timestamp() - updated_at) * refill_per_second,
                       -(:seconds) * refill_per_second),
        updated_at = clock_timestamp()
    WHERE name = :name
    """
)


@dataclass(frozen=True)
class BucketConfig:
    """A bucket's shape: `per_minute` steady rate, `burst` tokens at most."""

    name: str
    per_minute: float
    burst: float

    @property
    def refill_per_second(self) -> float:
        return self.per_minute / 60.0


def creates_bucket(creates_per_minute: int) -> BucketConfig:
    """The create bucket: a small burst so a fresh run does not spend a minute's allowance at once."""
    return BucketConfig(CREATES_BUCKET, float(creates_per_minute), burst=max(1.0, creates_per_minute / 60.0))


def ensure_bucket(conn: Connection, config: BucketConfig) -> None:
    """Create the bucket, or reshape it when the configuration changed."""
    conn.execute(_ENSURE, {"name": config.name, "capacity": config.burst, "refill": config.refill_per_second})


@one_statement
def reserve(conn: Connection, name: str, n: float = 1.0) -> float:
    """Take `n` tokens; return the seconds to wait before using them (0 when available now)."""
    row = conn.execute(_RESERVE, {"name": name, "n": n}).one()
    return 0.0 if row.tokens >= 0 else -row.tokens / row.refill_per_second


@one_statement
def penalise(conn: Connection, name: str, seconds: float) -> None:
    """Hold every caller back for `seconds` (Replicate said to retry after that long)."""
    conn.execute(_PENALISE, {"name": name, "seconds": seconds})


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
