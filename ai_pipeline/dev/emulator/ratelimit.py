"""Replicate's rate limits as token buckets: one for creates, one for every other call, per API token."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ai_pipeline.dev.emulator.config import EmulatorConfig


@dataclass(frozen=True)
class RateDecision:
    """The outcome of taking one token: allowed or not, and what the rate-limit headers say."""

    allowed: bool
    remaining: int
    reset_seconds: int  # whole seconds until a token is back (denied) or the bucket is full (allowed)


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)  # a bucket that can never hold a whole token would deny forever
        self.tokens = self.capacity
        self.updated = now

    def take(self, now: float) -> RateDecision:
        """Take one token if there is one."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            refill = (self.capacity - self.tokens) / self.rate
            return RateDecision(True, int(self.tokens), math.ceil(refill))
        wait = (1 - self.tokens) / self.rate
        return RateDecision(False, 0, max(1, math.ceil(wait)))


class RateLimiter:
    """Buckets per (token, bucket name); bucket ``"create"`` for creates, ``"other"`` for the rest."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.configure(config)

    def configure(self, config: EmulatorConfig) -> None:
        """Adopt new rates; buckets restart full."""
        self._limits = {
            "create": (config.create_rate_per_minute / 60.0, config.create_burst),
            "other": (config.other_rate_per_minute / 60.0, config.other_burst),
        }
        self._buckets.clear()

    def take(self, token: str, bucket: str, now: float) -> RateDecision:
        """Take a token from ``bucket`` of ``token``'s account."""
        key = (token, bucket)
        state = self._buckets.get(key)
        if state is None:
            rate, capacity = self._limits[bucket]
            state = self._buckets[key] = TokenBucket(rate, capacity, now)
        return state.take(now)
