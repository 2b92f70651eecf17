"""The circuit breaker's row: runs racing to open, probe and close it agree on one outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text

from ai_pipeline.db import breakers
from ai_pipeline.db.breakers import (
    close_breaker,
    ensure_breaker,
    open_breaker,
    probe_failed,
    read_breaker,
    take_probe,
)


def _breaker(engine: Engine, unique: str) -> str:
    name = f"test-{unique}"
    with engine.begin() as conn:
        ensure_breaker(conn, name)
    return name


def _open(conn: Connection, name: str, reason: str = "Replicate 401: no", generation: int = 0) -> bool:
    return open_breaker(conn, name, reason, generation=generation, first_cooldown=30, longest_cooldown=600)


def _probe_now(conn: Connection, name: str) -> None:
    conn.execute(text("UPDATE circuit_breakers SET probe_at = now() WHERE name = :n"), {"n": name})


def test_a_breaker_opens_once_and_says_why_and_when_it_will_probe(engine: Engine, unique: str) -> None:
    name = _breaker(engine, unique)
    with engine.begin() as conn:
        assert read_breaker(conn, name).closed
        assert _open(conn, name, "Replicate 401: You did not pass a valid authentication token")
        assert not _open(conn, name, "Replicate 402: billing")  # open already: the first reason stays
        state = read_breaker(conn, name)

    assert state.state == "open" and not state.probe_due
    assert state.reason == "Replicate 401: You did not pass a valid authentication token"
    assert state.probe_at is not None and state.opened_at is not None
    assert (state.probe_at - state.opened_at).total_seconds() == pytest.approx(30)
    assert "paused since" in state.describe() and "next probe at" in state.describe()


def test_one_caller_takes_a_due_probe_and_another_only_once_it_expired(engine: Engine, unique: str) -> None:
    name = _breaker(engine, unique)
    with engine.begin() as conn:
        _open(conn, name)
        assert not take_probe(conn, name, "run-a", 60)  # not due yet
        _probe_now(conn, name)
        assert read_breaker(conn, name).probe_due
        assert take_probe(conn, name, "run-a", 60)
        assert not take_probe(conn, name, "run-b", 60)
        assert read_breaker(conn, name).state == "half_open"
        conn.execute(
            text("UPDATE circuit_breakers SET probe_expires_at = now() - interval '1 s' WHERE name = :n"),
            {"n": name},
        )
        assert take_probe(conn, name, "run-b", 60)  # run-a died probing
        assert not close_breaker(conn, name, "run-a")
        assert close_breaker(conn, name, "run-b")
        state = read_breaker(conn, name)
    assert state.closed and state.generation == 1


def test_a_failure_of_a_call_sent_before_the_breaker_closed_does_not_open_it(
    engine: Engine, unique: str
) -> None:
    name = _breaker(engine, unique)
    with engine.begin() as conn:
        _open(conn, name)
        _probe_now(conn, name)
        take_probe(conn, name, "run-a", 60)
        close_breaker(conn, name, "run-a")

        assert not _open(conn, name, generation=0)
        assert read_breaker(conn, name).closed
        assert _open(conn, name, generation=1)


def test_each_failed_probe_doubles_the_cooldown_up_to_the_longest(engine: Engine, unique: str) -> None:
    name = _breaker(engine, unique)
    cooldowns = []
    with engine.begin() as conn:
        _open(conn, name)
        for _ in range(6):
            _probe_now(conn, name)
            assert take_probe(conn, name, "run-a", 60)
            assert probe_failed(conn, name, "run-a", "probe failed: Replicate 401: no", longest_cooldown=600)
            cooldowns.append(read_breaker(conn, name).cooldown_seconds)
        state = read_breaker(conn, name)
    assert cooldowns == [60, 120, 240, 480, 600, 600]
    assert state.state == "open" and state.reason == "probe failed: Replicate 401: no"


def test_a_breaker_that_opens_again_soon_after_closing_waits_longer(engine: Engine, unique: str) -> None:
    """A 402: the probe (a read) passes, the next create is refused again."""
    name = _breaker(engine, unique)
    with engine.begin() as conn:
        _open(conn, name, "Replicate 402: billing")
        _probe_now(conn, name)
        take_probe(conn, name, "run-a", 60)
        close_breaker(conn, name, "run-a")
        _open(conn, name, "Replicate 402: billing", generation=1)
        assert read_breaker(conn, name).cooldown_seconds == 60
        conn.execute(
            text(
                "UPDATE circuit_breakers SET closed_at = now() - interval '1 hour', state = 'closed'"
                " WHERE name = :n"
            ),
            {"n": name},
        )
        _open(conn, name, "Replicate 401: no", generation=1)  # long after: starts afresh
        assert read_breaker(conn, name).cooldown_seconds == 30


def test_every_move_of_the_breaker_is_one_statement(engine: Engine, unique: str) -> None:
    """The runs send them outside a transaction (`TransactionRunner.statement`)."""
    name = _breaker(engine, unique)
    # In this order each takes effect: open, probe (fails), probe again (passes), read.
    moves: list[tuple[str, Callable[[Connection], Any], Callable[[Connection], Any] | None]] = [
        ("open_breaker", lambda conn: _open(conn, name), None),
        ("take_probe", lambda conn: take_probe(conn, name, "run-a", 60), lambda conn: _probe_now(conn, name)),
        ("probe_failed", lambda conn: probe_failed(conn, name, "run-a", "no", longest_cooldown=600), None),
        (
            "close_breaker",
            lambda conn: close_breaker(conn, name, "run-a"),
            lambda conn: _take_now(conn, name),
        ),
        ("read_breaker", lambda conn: read_breaker(conn, name), None),
    ]
    marked = {fn_name for fn_name, fn in vars(breakers).items() if getattr(fn, "one_statement", False)}
    assert marked == {label for label, _, _ in moves}
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    for label, move, before in moves:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if before is not None:
                before(conn)
            event.listen(conn, "before_cursor_execute", count)
            statements.clear()
            assert move(conn), label
            event.remove(conn, "before_cursor_execute", count)
        assert len(statements) == 1, f"{label}: {statements}"


def _take_now(conn: Connection, name: str) -> None:
    _probe_now(conn, name)
    assert take_probe(conn, name, "run-a", 60)
