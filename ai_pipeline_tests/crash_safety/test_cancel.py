"""`ai-pipeline cancel`: pending work ends uncharged, work in flight is stopped at Replicate and refunded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import replicate
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from ai_pipeline.cli import main
from ai_pipeline.credits import balance, grant
from ai_pipeline.db import recovery, settling
from ai_pipeline_tests.crash_safety.crashes import DeadRun, batch_statuses, request_row, sweep_once
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness

Cancel = Callable[..., Result]


@pytest.fixture
def cancel(database_url: str) -> Cancel:
    """`ai-pipeline cancel ARGS...` against the test database."""

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["cancel", *args], env={"AI_PIPELINE_DATABASE_URL": database_url})

    return invoke


def _batch(engine: Engine, unique: str, count: int, credits: int = 10) -> tuple[str, str, list[int]]:
    batch, user = f"cancel-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, credits)
        ids = [
            insert_request(
                conn, user, model="emulator/image", batch_id=batch, input={"prompt": f"crane {i} {unique}"}
            )
            for i in range(count)
        ]
    return batch, user, ids


def test_canceling_a_batch_ends_its_pending_requests_canceled_and_uncharged(
    cancel: Cancel, engine: Engine, unique: str
) -> None:
    batch, user, ids = _batch(engine, unique, 3)

    result = cancel("--batch", batch)

    assert result.exit_code == 0, result.output
    assert "3 canceled now (0 of them refunded), 0 in flight" in result.output
    assert batch_statuses(engine, batch) == {"canceled": 3}
    assert {(request_row(engine, i).debits, request_row(engine, i).error) for i in ids} == {
        (0, "canceled on request")
    }
    with engine.connect() as conn:
        assert balance(conn, user) == 10


def test_canceling_an_unknown_batch_or_request_fails_and_says_so(cancel: Cancel) -> None:
    no_batch = cancel("--batch", "no-such-batch")
    no_request = cancel("--request", "987654321")

    assert no_batch.exit_code == 1 and "no batch 'no-such-batch'" in no_batch.output
    assert no_request.exit_code == 1 and "no request 987654321" in no_request.output


def test_cancel_needs_exactly_one_of_batch_and_request(cancel: Cancel) -> None:
    assert cancel().exit_code == 2
    assert cancel("--batch", "b", "--request", "1").exit_code == 2


def test_canceling_a_finished_request_changes_nothing(
    cancel: Cancel, harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, user, (request_id,) = _batch(engine, unique, 1)
    harness.run_batch(batch)

    result = cancel("--request", str(request_id))

    assert result.exit_code == 0 and "1 already finished" in result.output
    assert request_row(engine, request_id).status == "succeeded"
    with engine.connect() as conn:
        assert balance(conn, user) == 9


def test_a_request_in_flight_is_stopped_at_replicate_and_refunded(
    cancel: Cancel, harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    harness.emulator.configure(predict_seconds=30)
    batch, user, (request_id,) = _batch(engine, unique, 1)
    outputs: list[str] = []

    def cancel_once_it_runs() -> None:
        deadline = time.monotonic() + 30
        while request_row(engine, request_id).prediction_id is None and time.monotonic() < deadline:
            time.sleep(0.1)
        outputs.append(cancel("--request", str(request_id)).output)
        sweep_once(harness)

    canceler = threading.Thread(target=cancel_once_it_runs)
    canceler.start()
    run = harness.run_batch(batch, defs=harness.definitions(sync_wait_seconds=1))
    canceler.join()

    row = request_row(engine, request_id)
    assert run.success
    assert "1 in flight" in outputs[0]
    assert row.status == "canceled" and (row.debits, row.refunds) == (1, 1)
    assert replicate_client.predictions.get(row.prediction_id).status == "canceled"
    with engine.connect() as conn:
        assert balance(conn, user) == 10


def test_a_cancel_that_arrives_while_the_prediction_finishes_wins_over_its_success(
    cancel: Cancel, harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    harness.emulator.configure(predict_seconds=3)
    batch, user, (request_id,) = _batch(engine, unique, 1)
    outputs: list[str] = []

    def cancel_while_the_create_waits() -> None:
        deadline = time.monotonic() + 30
        while request_row(engine, request_id).prediction_intent_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        outputs.append(cancel("--request", str(request_id)).output)
        sweep_once(harness)  # the prediction's id is not known yet: nothing to cancel at Replicate

    canceler = threading.Thread(target=cancel_while_the_create_waits)
    canceler.start()
    harness.run_batch(batch, defs=harness.definitions(sync_wait_seconds=10))  # the create holds to the end
    canceler.join()
    sweep_once(harness)

    row = request_row(engine, request_id)
    assert "1 in flight" in outputs[0]
    assert row.status == "canceled" and (row.debits, row.refunds) == (1, 1)
    with engine.connect() as conn:
        assert balance(conn, user) == 10


def test_a_pending_request_with_a_prediction_is_stopped_at_replicate_by_the_sweeper(
    cancel: Cancel, harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    harness.emulator.configure(predict_seconds=30)
    batch, user, (request_id,) = _batch(engine, unique, 1)
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "record")
    sweep_once(harness)  # back to pending, prediction still running

    result = cancel("--batch", batch)
    sweep_once(harness)

    row = request_row(engine, request_id)
    assert "0 canceled now (0 of them refunded), 1 in flight" in result.output
    assert row.status == "canceled" and (row.debits, row.refunds) == (1, 1)
    assert replicate_client.predictions.get(prediction_id).status == "canceled"
    with engine.connect() as conn:
        assert balance(conn, user) == 10


def test_a_run_that_claims_a_request_asked_to_cancel_stops_it_instead_of_resuming_it(
    cancel: Cancel, harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    harness.emulator.configure(predict_seconds=30)
    batch, _, (request_id,) = _batch(engine, unique, 1)
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "record")
    with engine.begin() as conn:
        recovery.settle_expired_leases(conn, max_attempts=5)
    cancel("--request", str(request_id))

    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "canceled" and (row.debits, row.refunds) == (1, 1)
    assert replicate_client.predictions.get(prediction_id).status == "canceled"


def test_failures_of_a_canceled_batch_are_not_retried(
    cancel: Cancel, harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, _, (request_id,) = _batch(engine, unique, 1)
    with engine.begin() as conn:
        settling.mark_failed(conn, request_id, None, "model failed: CUDA out of memory", retryable=True)

    result = cancel("--batch", batch)
    sweep_once(harness, retry_backoff_seconds=0)

    assert "1 already finished" in result.output
    assert batch_statuses(engine, batch) == {"failed": 1}
