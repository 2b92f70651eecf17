"""The create limit shared by every run: a reservation bucket in Postgres."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine, event

from ai_pipeline.db.rate_limits import BucketConfig, ensure_bucket, penalise, reserve
from ai_pipeline.db.transactions import TransactionRunner
from ai_pipeline.replicate.rate_limit import SharedCreateLimiter


def _bucket(engine: Engine, unique: str, per_minute: float, burst: float) -> BucketConfig:
    config = BucketConfig(f"test-{unique}", per_minute, burst)
    with engine.begin() as conn:
        ensure_bucket(conn, config)
    return config


def test_reservations_within_the_burst_do_not_wait(engine: Engine, unique: str) -> None:
    config = _bucket(engine, unique, per_minute=60, burst=3)
    with engine.begin() as conn:
        assert [reserve(conn, config.name) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_reservations_beyond_the_burst_wait_their_turn_at_the_refill_rate(
    engine: Engine, unique: str
) -> None:
    config = _bucket(engine, unique, per_minute=60, burst=1)  # one token a second
    with engine.begin() as conn:
        waits = [reserve(conn, config.name) for _ in range(4)]
    assert waits[0] == 0.0
    assert waits[1:] == pytest.approx([1.0, 2.0, 3.0], abs=0.1)


def test_a_429_holds_every_caller_back_for_retry_after(engine: Engine, unique: str) -> None:
    config = _bucket(engine, unique, per_minute=600, burst=10)
    with engine.begin() as conn:
        penalise(conn, config.name, 5.0)
        assert reserve(conn, config.name) == pytest.approx(5.1, abs=0.15)


def test_a_run_reserves_tokens_a_few_at_a_time(engine: Engine, unique: str) -> None:
    config = _bucket(engine, unique, per_minute=6000, burst=100)  # 100/s: batches of 10
    runner = TransactionRunner(engine, threads=1)
    calls: list[float] = []

    async def counting(fn, *args):  # type: ignore[no-untyped-def]
        calls.append(args[1])
        return await runner.statement(fn, *args)

    async def take(n: int) -> None:
        limiter = SharedCreateLimiter(counting, config)
        await asyncio.gather(*(limiter.acquire() for _ in range(n)))

    asyncio.run(take(25))
    runner.close()
    assert calls == [10.0, 10.0, 10.0]


def test_a_reservation_and_a_penalty_are_one_statement_each(engine: Engine, unique: str) -> None:
    """The limiter runs them outside a transaction (`TransactionRunner.statement`)."""
    config = _bucket(engine, unique, per_minute=600, burst=10)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    for call in (lambda conn: reserve(conn, config.name, 2.0), lambda conn: penalise(conn, config.name, 1.0)):
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            event.listen(conn, "before_cursor_execute", count)
            statements.clear()
            call(conn)
            event.remove(conn, "before_cursor_execute", count)
        assert len(statements) == 1, statements
    runner = TransactionRunner(engine, threads=1)
    try:
        assert runner.statement_sync(reserve, config.name, 1.0) > 0  # the penalty holds it back
    finally:
        runner.close()
