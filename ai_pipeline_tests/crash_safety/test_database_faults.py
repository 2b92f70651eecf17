"""Dropped database connections: a unit of work runs again on a fresh connection, and nothing half-done
is left behind; runs and sensors carry on while their backends are being terminated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from dagster import SensorResult
from sqlalchemy import Connection, Engine, create_engine, text

from ai_pipeline.credits import grant
from ai_pipeline.db import batches, claims
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.db.transactions import TransactionRunner, run_in_transaction
from ai_pipeline.storage.uploads import object_check
from ai_pipeline_tests.crash_safety.crashes import batch_statuses, request_row
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness

TERMINATE_PIPELINE_BACKENDS = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE application_name = 'ai_pipeline' AND datname = current_database() AND pid <> pg_backend_pid()"
)


@contextmanager
def backends_terminated_every(database_url: str, seconds: float) -> Iterator[list[int]]:
    """Terminate the pipeline's backends on this database every `seconds` while the block runs."""
    killer = create_engine(database_url, connect_args={"application_name": "ai_pipeline_tests_killer"})
    stop = threading.Event()
    terminated: list[int] = []

    def loop() -> None:
        while not stop.wait(seconds):
            with killer.begin() as conn:
                terminated.append(conn.execute(TERMINATE_PIPELINE_BACKENDS).scalar_one())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield terminated
    finally:
        stop.set()
        thread.join()
        killer.dispose()


def _terminate_own_backend(conn: Connection) -> None:
    conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))


def test_a_transaction_whose_connection_drops_runs_again_and_applies_once(
    engine: Engine, unique: str
) -> None:
    batch, user = f"db-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 5)
        request_id = insert_request(conn, user, model="emulator/image", batch_id=batch)
    calls = []

    def claim_then_lose_the_connection_once(conn: Connection) -> list[Any]:
        claimed = claims.claim_requests(conn, batch, f"run-{unique}", 10, 60)
        calls.append(len(claimed))
        if len(calls) == 1:
            _terminate_own_backend(conn)  # the claim above rolls back with it
        return claimed

    claimed = run_in_transaction(engine, claim_then_lose_the_connection_once)

    row = request_row(engine, request_id)
    assert calls == [1, 1] and [r.id for r in claimed] == [request_id]
    assert row.status == "processing" and row.attempts == 1 and row.lease_owner == f"run-{unique}"


def _backend_pid(conn: Connection) -> int:
    return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_runner_keeps_its_connection_and_replaces_it_once_its_backend_is_gone(engine: Engine) -> None:
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    runner = TransactionRunner(engine, threads=1)
    try:
        first = runner.run_sync(_backend_pid)
        assert runner.run_sync(_backend_pid) == first  # one connection for the thread, not one per call
        with engine.begin() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
        replaced = runner.run_sync(_backend_pid)  # the dead connection fails, the call runs again
        assert replaced != first
        assert runner.run_sync(_backend_pid) == replaced
    finally:
        runner.close()
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]  # closing gave it back


def test_a_run_finishes_its_batch_while_its_database_connections_are_terminated(
    harness: PipelineHarness, engine: Engine, database_url: str, unique: str
) -> None:
    batch, user = f"db-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 100)
        for i in range(40):
            insert_request(
                conn, user, model="emulator/image", batch_id=batch, input={"prompt": f"glacier {i} {unique}"}
            )
    harness.emulator.configure(predict_seconds=1.0, predict_jitter_seconds=0.5)

    with backends_terminated_every(database_url, 0.5) as terminated:
        run = harness.run_batch(batch, defs=harness.definitions(sync_wait_seconds=1))

    assert sum(terminated) > 0
    assert run.success
    assert batch_statuses(engine, batch) == {"succeeded": 40}
    with engine.connect() as conn:
        report = check_invariants(conn, batch_id=batch, verify_object=object_check(harness.s3))
    assert report.ok, report.summary()
    assert harness.emulator.stats()["creates_by_input"]["duplicate_creates"] == 0


def test_the_batch_sensor_tick_survives_a_connection_dropped_mid_transaction(
    harness: PipelineHarness, engine: Engine, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    batch, user = f"db-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 5)
        insert_request(conn, user, model="emulator/image", batch_id=batch)
    real_due_batches = batches.due_batches
    calls = []

    def due_batches_losing_the_connection_once(conn: Connection) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            _terminate_own_backend(conn)
        return real_due_batches(conn)

    monkeypatch.setattr(batches, "due_batches", due_batches_losing_the_connection_once)

    result = harness.tick()

    assert len(calls) == 2
    assert isinstance(result, SensorResult) and batch in {r.partition_key for r in result.run_requests}
