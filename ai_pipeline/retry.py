"""The one way a failed call is tried again: a few attempts, exponential backoff with full jitter, never
sooner than the other side asked, only for failures the caller says are worth it.

Used by every retry in the pipeline: calls to Replicate and output downloads (the runner), listing pages
(reconciliation) and transactions whose connection dropped (`db.transactions`). Ours rather than
tenacity's: the runner makes about ten guarded calls per request and nearly all succeed at once, and
tenacity's `AsyncRetrying` cost 46 µs of CPU per successful call measured here (a plain call: 0.1 µs),
which would be about 7 % of a run's CPU; the first try below costs nothing extra.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """`attempts` tries in all (the first included), waiting up to `base_seconds * 2**n` (at most
    `max_seconds`) before try n+2."""

    attempts: int
    base_seconds: float
    max_seconds: float

    def delay(self, retry: int, at_least: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first): full jitter, so many callers
        failing together do not come back together, and never less than `at_least`."""
        return max(random.uniform(0, min(self.max_seconds, self.base_seconds * 2**retry)), at_least or 0.0)


def _no_hint(exc: Exception) -> float | None:
    return None


async def retry_async(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retry_if: Callable[[Exception], bool],
    retry_after: Callable[[Exception], float | None] = _no_hint,
    before_retry: Callable[[Exception], Awaitable[None]] | None = None,
) -> T:
    """`await call()`, tried again after the backoff while it raises what `retry_if` accepts; the last
    failure (or one `retry_if` refuses) propagates. `before_retry` runs before each new try."""
    for retry in range(backoff.attempts):
        try:
            return await call()
        except Exception as exc:
            if retry == backoff.attempts - 1 or not retry_if(exc):
                raise
            await asyncio.sleep(backoff.delay(retry, retry_after(exc)))
            if before_retry is not None:
                await before_retry(exc)
    raise AssertionError("unreachable: attempts must be at least 1")


def retry_sync(
    call: Callable[[], T],
    backoff: Backoff,
    *,
    retry_if: Callable[[Exception], bool],
    before_retry: Callable[[Exception], None] | None = None,
) -> T:
    """`retry_async` for blocking code."""
    for retry in range(backoff.attempts):
        try:
            return call()
        except Exception as exc:
            if retry == backoff.attempts - 1 or not retry_if(exc):
                raise
            time.sleep(backoff.delay(retry))
            if before_retry is not None:
                before_retry(exc)
    raise AssertionError("unreachable: attempts must be at least 1")
