"""A run's share of the slots every run draws from: its requests never hold more than the pools allow
between all runs, idle slots go back, a waiting run gets an even share, and the database sees a
statement a second rather than two per prediction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine

from ai_pipeline.db.flight import pools_in_use
from ai_pipeline.db.transactions import TransactionRunner
from ai_pipeline.processing.in_flight import ALL_PREDICTIONS, SharedSlots, model_pool


class InFlight:
    """How many requests hold a slot now, in all and of the capped model, and the most at once."""

    def __init__(self, capped: str) -> None:
        self.capped = capped
        self.now = {"all": 0, "capped": 0}
        self.most = {"all": 0, "capped": 0}

    async def predict(self, slots: SharedSlots, model: str, seconds: float) -> None:
        kinds = ["all", "capped"] if model == self.capped else ["all"]
        async with slots.slot(model):
            for kind in kinds:
                self.now[kind] += 1
                self.most[kind] = max(self.most[kind], self.now[kind])
            await asyncio.sleep(seconds)
            for kind in kinds:
                self.now[kind] -= 1


def _with_runs(engine: Engine, runs: int, scenario: Callable[[list[SharedSlots]], Awaitable[None]]) -> None:
    statements = TransactionRunner(engine, threads=2)

    async def main() -> None:
        made = [
            SharedSlots(statements.statement, statements, owner=f"run-{n}", lease_seconds=30)
            for n in range(runs)
        ]
        try:
            await scenario(made)
        finally:
            for slots in made:
                await slots.stop()

    try:
        asyncio.run(main())
    finally:
        statements.close()


def _held(engine: Engine, pool: str) -> int:
    with engine.connect() as conn:
        return next(use.held for use in pools_in_use(conn) if use.name == pool)


def test_requests_of_all_runs_never_hold_more_than_the_pools_allow(engine: Engine, unique: str) -> None:
    capped = f"capped-{unique}"
    capacities = {ALL_PREDICTIONS: 4, model_pool(capped): 2}
    in_flight = InFlight(capped)

    async def scenario(runs: list[SharedSlots]) -> None:
        for slots in runs:
            await slots.start(capacities)
        await asyncio.gather(
            *(in_flight.predict(slots, "uncapped", 0.05) for slots in runs for _ in range(12)),
            *(in_flight.predict(slots, capped, 0.05) for slots in runs for _ in range(6)),
        )

    _with_runs(engine, 3, scenario)

    assert in_flight.most == {"all": 4, "capped": 2}
    assert _held(engine, ALL_PREDICTIONS) == 0  # every run gave its slots back when it stopped


def test_a_waiting_run_gets_an_even_share_of_what_another_holds(engine: Engine, unique: str) -> None:
    pool = f"model:even-{unique}"
    model = pool.removeprefix("model:")

    async def scenario(runs: list[SharedSlots]) -> None:
        first, second = runs
        for slots in runs:
            await slots.start({ALL_PREDICTIONS: 100, pool: 6})
        stop = asyncio.Event()

        async def keep_busy() -> None:  # the first run's predictions end and it starts more
            while not stop.is_set():
                await InFlight(model).predict(first, model, 0.1)

        busy = [asyncio.create_task(keep_busy()) for _ in range(6)]
        await asyncio.sleep(0.5)
        assert first._pools[pool].in_use == 6
        waiting = [asyncio.create_task(InFlight(model).predict(second, model, 60)) for _ in range(6)]
        await asyncio.sleep(3.0)
        assert (first._pools[pool].in_use, second._pools[pool].in_use) == (3, 3)
        stop.set()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*busy, *waiting, return_exceptions=True)

    _with_runs(engine, 2, scenario)


def test_idle_slots_go_back_and_a_busy_pool_costs_a_few_statements(engine: Engine, unique: str) -> None:
    pool = f"model:idle-{unique}"

    async def scenario(runs: list[SharedSlots]) -> None:
        (slots,) = runs
        await slots.start({ALL_PREDICTIONS: 100, pool: 5})
        model = pool.removeprefix("model:")
        in_flight = InFlight(model)
        await asyncio.gather(*(in_flight.predict(slots, model, 0.02) for _ in range(200)))  # 0.8 s of work
        assert slots.syncs <= 10  # 200 predictions, 400 slots taken and given back
        assert _held(engine, pool) == 5
        await asyncio.sleep(2.5)
        assert _held(engine, pool) == 0

    _with_runs(engine, 1, scenario)
