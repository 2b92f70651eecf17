"""The sweeper settles what dead runs leave behind, retries retryable failures once, and is idempotent."""

from __future__ import annotations

import threading
from typing import Any

import replicate
from sqlalchemy import Engine, text

from ai_pipeline.credits import balance, grant
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline_tests.crash_safety.crashes import DeadRun, failed_ago, request_row, sweep_once
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness


def _requests(engine: Engine, unique: str, count: int, credits: int = 20) -> tuple[str, str, list[int]]:
    batch, user = f"sweep-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, credits)
        ids = [
            insert_request(
                conn, user, model="emulator/image", batch_id=batch, input={"prompt": f"fox {i} {unique}"}
            )
            for i in range(count)
        ]
    return batch, user, ids


def _batch_state(engine: Engine, batch: str) -> tuple[list[Any], list[Any]]:
    """Every row of the batch (and its retries) and every ledger entry of its requests."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM generation_requests WHERE batch_id = :b ORDER BY id"), {"b": batch}
        ).all()
        ledger = conn.execute(
            text("SELECT * FROM credit_ledger WHERE request_id = ANY(:ids) ORDER BY id"),
            {"ids": [row.id for row in rows]},
        ).all()
    return rows, ledger


def _retries_of(engine: Engine, request_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id, status, input FROM generation_requests WHERE retry_of = :id"),
                {"id": request_id},
            )
        )


def test_a_dead_runs_request_out_of_attempts_is_failed_refunded_and_its_prediction_canceled(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    harness.emulator.configure(predict_seconds=60)
    _, user, (request_id,) = _requests(engine, unique, 1, credits=3)
    dead = DeadRun(engine, replicate_client, f"dead-{unique}")
    (request,) = dead.claim(f"sweep-{unique}")
    dead.charge(request)
    prediction_id = dead.create(request)
    dead.record(request, prediction_id)
    dead.die()

    sweep_once(harness, max_attempts=1)

    row = request_row(engine, request_id)
    assert row.status == "failed" and row.retryable and "gave up after 1 attempts" in row.error
    assert (row.debits, row.refunds) == (1, 1)
    with engine.connect() as conn:
        assert balance(conn, user) == 3
    assert replicate_client.predictions.get(prediction_id).status == "canceled"


def test_what_a_dead_run_held_is_resumed_before_the_rest_of_its_batch(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, ids = _requests(engine, unique, 5)
    dead = DeadRun(engine, replicate_client, f"dead-{unique}")
    for request in dead.claim(batch, limit=2):
        dead.charge(request)
    dead.die()

    sweep_once(harness)
    resumed = DeadRun(engine, replicate_client, f"next-{unique}").claim(batch, limit=2)

    assert [r.id for r in resumed] == ids[:2]
    assert all(r.prediction_intent_at is not None for r in resumed)


def test_a_retryable_failure_is_retried_once_after_the_backoff(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    _, _, (recent, old) = _requests(engine, unique, 2)
    failed_ago(engine, recent, retryable=True, seconds_ago=5)
    failed_ago(engine, old, retryable=True, seconds_ago=120)

    sweep_once(harness, retry_backoff_seconds=60)
    sweep_once(harness, retry_backoff_seconds=60)

    assert _retries_of(engine, recent) == []
    (retry,) = _retries_of(engine, old)
    assert retry.status == "pending" and retry.input == request_row(engine, old).input


def test_failures_that_cannot_pass_and_retries_are_not_retried(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    _, _, (refused, original) = _requests(engine, unique, 2)
    failed_ago(engine, refused, retryable=False, seconds_ago=120)
    failed_ago(engine, original, retryable=True, seconds_ago=120)
    sweep_once(harness, retry_backoff_seconds=60)
    (retry,) = _retries_of(engine, original)
    failed_ago(engine, retry.id, retryable=True, seconds_ago=120)

    sweep_once(harness, retry_backoff_seconds=60)

    assert _retries_of(engine, refused) == [] and _retries_of(engine, retry.id) == []


def test_a_second_sweep_right_after_the_first_changes_nothing(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, ids = _requests(engine, unique, 4)
    dead = DeadRun(engine, replicate_client, f"dead-{unique}")
    claimed = dead.claim(batch, limit=3)
    for request in claimed:
        dead.charge(request)
    dead.die()
    failed_ago(engine, ids[3], retryable=True, seconds_ago=120)
    sweep_once(harness, retry_backoff_seconds=60)
    before = _batch_state(engine, batch)

    sweep_once(harness, retry_backoff_seconds=60)

    assert _batch_state(engine, batch) == before


def test_sweepers_running_at_once_settle_each_request_once(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, ids = _requests(engine, unique, 40, credits=40)
    dead = DeadRun(engine, replicate_client, f"dead-{unique}")
    for request in dead.claim(batch, limit=40):
        dead.charge(request)
    dead.die()
    reports = []

    def sweep_in_thread() -> None:
        reports.append(sweep_once(harness, max_attempts=1))

    threads = [threading.Thread(target=sweep_in_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(reports) == 4
    with engine.connect() as conn:
        report = check_invariants(conn, batch_id=batch)
    assert report.ok, report.summary()
    assert {(row.status, row.debits, row.refunds) for row in map(lambda i: request_row(engine, i), ids)} == {
        ("failed", 1, 1)
    }
