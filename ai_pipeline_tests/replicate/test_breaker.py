"""The circuit breaker all runs share: one run's trouble with the account pauses every run, one probe
decides when they all resume, and a failure from before the breaker closed does not open it again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from replicate.exceptions import ReplicateError
from sqlalchemy import Engine

from ai_pipeline.db.breakers import BreakerState, ensure_breaker, read_breaker
from ai_pipeline.db.transactions import TransactionRunner
from ai_pipeline.replicate.breaker import SERVICE_DOWN_STREAK, SharedBreaker

REVOKED = ReplicateError(status=401, title="Unauthenticated", detail="You did not pass a valid token")


class Account:
    """What the probe finds: the account refused until `restore()`; counts the probes."""

    def __init__(self) -> None:
        self.refused = True
        self.probes = 0

    async def probe(self) -> object:
        self.probes += 1
        if self.refused:
            raise REVOKED
        return {"username": "emulator"}


def _breakers(
    engine: Engine, unique: str, account: Account, runs: int = 2
) -> tuple[list[SharedBreaker], list[list[BreakerState]], TransactionRunner]:
    name = f"test-{unique}"
    with engine.begin() as conn:
        ensure_breaker(conn, name)
    statements = TransactionRunner(engine, threads=2)
    heard: list[list[BreakerState]] = [[] for _ in range(runs)]
    made = [
        SharedBreaker(
            statements.statement,
            owner=f"run-{n}-{unique}",
            probe=account.probe,
            first_cooldown=0.2,
            on_change=heard[n].append,
            name=name,
            poll_seconds=0.05,
        )
        for n in range(runs)
    ]
    return made, heard, statements


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


def _run(engine: Engine, unique: str, account: Account, scenario: Callable[..., Awaitable[None]]) -> None:
    breakers, heard, statements = _breakers(engine, unique, account)

    async def main() -> None:
        for breaker in breakers:
            await breaker.start()
        try:
            await scenario(breakers, heard)
        finally:
            for breaker in breakers:
                breaker.stop()

    try:
        asyncio.run(main())
    finally:
        statements.close()


def test_one_runs_refused_token_pauses_every_run_until_a_probe_passes(engine: Engine, unique: str) -> None:
    account = Account()

    async def scenario(breakers: list[SharedBreaker], heard: list[list[BreakerState]]) -> None:
        first, second = breakers
        await first.failed(REVOKED, first.generation)
        assert first.is_open  # at once, for this run's other tasks
        await _until(lambda: second.is_open)  # the other run, at its next look
        waiting = asyncio.create_task(second.wait_closed())
        await asyncio.sleep(0.6)  # probes fail meanwhile: nobody resumes
        assert not waiting.done() and account.probes >= 1
        account.refused = False
        await asyncio.wait_for(waiting, 5)
        await _until(lambda: not first.is_open)
        assert not heard[0][0].closed and heard[0][-1].closed
        assert "401" in (heard[1][0].reason or "")
        assert first.paused_seconds > 0.5

    _run(engine, unique, account, scenario)


def test_a_probe_is_made_by_one_run_at_a_time_and_waits_longer_after_each_failure(
    engine: Engine, unique: str
) -> None:
    account = Account()

    async def scenario(breakers: list[SharedBreaker], heard: list[list[BreakerState]]) -> None:
        first, _ = breakers
        await first.failed(REVOKED, first.generation)
        await asyncio.sleep(1.6)  # cool-downs 0.2, 0.4, 0.8: three probes, not one per run per look
        assert 2 <= account.probes <= 4
        assert first.state.cooldown_seconds >= 0.8

    _run(engine, unique, account, scenario)


def test_a_refusal_of_a_call_sent_before_the_breaker_closed_does_not_pause_again(
    engine: Engine, unique: str
) -> None:
    account = Account()

    async def scenario(breakers: list[SharedBreaker], heard: list[list[BreakerState]]) -> None:
        first, second = breakers
        sent_before = second.generation
        await first.failed(REVOKED, first.generation)
        account.refused = False
        await _until(lambda: not first.is_open and not second.is_open and second.generation > sent_before)

        await second.failed(REVOKED, sent_before)  # its answer arrives after the probe passed

        assert not second.is_open and not first.is_open

    _run(engine, unique, account, scenario)


def test_a_run_of_failed_calls_pauses_work_and_an_answer_in_between_does_not(
    engine: Engine, unique: str
) -> None:
    account = Account()
    account.refused = False

    async def scenario(breakers: list[SharedBreaker], heard: list[list[BreakerState]]) -> None:
        first, _ = breakers
        down = ReplicateError(status=502, detail="Bad Gateway")
        for _ in range(SERVICE_DOWN_STREAK - 1):
            await first.failed(down, first.generation)
        await first.failed(ReplicateError(status=404, detail="not found"), first.generation)  # it answered
        for _ in range(SERVICE_DOWN_STREAK - 1):
            await first.failed(httpx.ConnectError("refused"), first.generation)
        assert not first.is_open
        await first.failed(down, first.generation)
        assert first.is_open and "20 calls in a row failed" in (first.state.reason or "")
        await _until(lambda: not first.is_open)  # the probe passes

    _run(engine, unique, account, scenario)


def test_a_run_that_starts_while_work_is_paused_waits(engine: Engine, unique: str) -> None:
    account = Account()
    breakers, _, statements = _breakers(engine, unique, account, runs=2)

    async def main() -> None:
        first, late = breakers
        await first.start()
        await first.failed(REVOKED, first.generation)
        await late.start()
        assert late.is_open
        with engine.connect() as conn:
            assert not read_breaker(conn, late.name).closed
        first.stop()
        late.stop()

    try:
        asyncio.run(main())
    finally:
        statements.close()
