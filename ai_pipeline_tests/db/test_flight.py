"""Slots for predictions in flight, in Postgres: no more than a pool's capacity held by live runs at
once, shared evenly while runs wait, and freed when a run dies."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, event, text

from ai_pipeline.db import claims
from ai_pipeline.db.flight import Hold, ensure_pools, pools_in_use, sync_holds


def _pool(engine: Engine, unique: str, capacity: int) -> str:
    name = f"test-{unique}"
    with engine.begin() as conn:
        ensure_pools(conn, {name: capacity})
    return name


def _sync(conn: Connection, owner: str, pool: str, keep: int, want: int, lease: float = 60) -> Hold:
    (hold,) = sync_holds(conn, owner, {pool: (keep, want)}, lease)
    return hold


def _held(conn: Connection, pool: str) -> int:
    return next(use.held for use in pools_in_use(conn) if use.name == pool)


def test_runs_are_granted_no_more_than_the_capacity_between_them(engine: Engine, unique: str) -> None:
    pool = _pool(engine, unique, capacity=5)
    with engine.begin() as conn:
        assert _sync(conn, "run-a", pool, keep=0, want=3).held == 3
        assert _sync(conn, "run-b", pool, keep=0, want=4).held == 2
        assert _sync(conn, "run-b", pool, keep=2, want=2).held == 2  # nothing free
        assert _held(conn, pool) == 5
        assert _sync(conn, "run-a", pool, keep=1, want=0).held == 1  # gives two back
        assert _sync(conn, "run-b", pool, keep=2, want=2).held == 4
        assert _held(conn, pool) == 5


def test_while_a_run_waits_another_keeps_no_more_than_an_even_share(engine: Engine, unique: str) -> None:
    pool = _pool(engine, unique, capacity=10)
    with engine.begin() as conn:
        assert _sync(conn, "run-a", pool, keep=0, want=10) == Hold(pool, 10, 10)
        assert _sync(conn, "run-b", pool, keep=0, want=10).held == 0  # b waits now
        a = _sync(conn, "run-a", pool, keep=10, want=5)
        assert (a.held, a.share) == (10, 5)  # a is told to come down to 5, and gets nothing more
        assert _sync(conn, "run-a", pool, keep=5, want=5).held == 5
        b = _sync(conn, "run-b", pool, keep=0, want=10)
        assert (b.held, b.share) == (5, 5)


def test_keeping_is_absolute_so_a_repeated_sync_gives_nothing_back_twice(engine: Engine, unique: str) -> None:
    """A sync whose connection dropped is sent again: the second must change nothing."""
    pool = _pool(engine, unique, capacity=6)
    with engine.begin() as conn:
        _sync(conn, "run-a", pool, keep=0, want=6)
        assert _sync(conn, "run-a", pool, keep=4, want=0).held == 4
        assert _sync(conn, "run-a", pool, keep=4, want=0).held == 4
        assert _sync(conn, "run-a", pool, keep=9, want=0).held == 4  # keeping more is not taking more


def test_a_dead_runs_slots_come_back_when_its_lease_runs_out(engine: Engine, unique: str) -> None:
    pool = _pool(engine, unique, capacity=4)
    with engine.begin() as conn:
        _sync(conn, "run-dead", pool, keep=0, want=4)
        assert _sync(conn, "run-b", pool, keep=0, want=4).held == 0
        conn.execute(
            text("UPDATE flight_holds SET expires_at = now() - interval '1 s' WHERE owner = 'run-dead'")
        )
        assert _sync(conn, "run-b", pool, keep=0, want=4).held == 4


def test_releasing_a_failed_run_gives_back_its_slots_at_once(engine: Engine, unique: str) -> None:
    pool = _pool(engine, unique, capacity=4)
    run_id = f"run-{unique}"
    with engine.begin() as conn:
        _sync(conn, f"{run_id}:0", pool, keep=0, want=2)
        _sync(conn, f"{run_id}:1", pool, keep=0, want=2)
        claims.release_run(conn, run_id, "run failed")
        assert _held(conn, pool) == 0


def test_a_run_that_holds_and_wants_nothing_leaves_no_row(engine: Engine, unique: str) -> None:
    pool = _pool(engine, unique, capacity=4)
    with engine.begin() as conn:
        _sync(conn, "run-a", pool, keep=0, want=2)
        _sync(conn, "run-a", pool, keep=0, want=0)
        rows = conn.execute(text("SELECT count(*) FROM flight_holds WHERE pool = :p"), {"p": pool}).scalar()
    assert rows == 0


def test_a_sync_is_one_statement_for_every_pool(engine: Engine, unique: str) -> None:
    """Runs send it outside a transaction (`TransactionRunner.statement`)."""
    pools = [_pool(engine, f"{unique}-{n}", capacity=3) for n in range(3)]
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        event.listen(conn, "before_cursor_execute", count)
        holds = sync_holds(conn, "run-a", {pool: (0, 2) for pool in pools}, 60)
        event.remove(conn, "before_cursor_execute", count)
        sync_holds(conn, "run-a", {pool: (0, 0) for pool in pools}, 60)
    assert [hold.held for hold in holds] == [2, 2, 2]
    assert len(statements) == 1
