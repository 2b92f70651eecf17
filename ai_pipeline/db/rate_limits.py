"""Token buckets in Postgres, shared by every run: the state behind `replicate.rate_limit`.

A reservation is one UPDATE that takes tokens even when the bucket goes below zero and returns how long
the caller must wait before using them, so it is one round trip, never a polling loop, and runs on
different machines queue fairly behind each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from ai_pipeline.db.transactions import one_statement

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
