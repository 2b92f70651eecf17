"""A failed or canceled run of `process_batch` gives back, through its run-status sensor, every request
any attempt of it still held: back to pending with its debit and its prediction, and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from dagster import DagsterEvent, DagsterInstance, DagsterRun, Definitions, build_run_status_sensor_context
from sqlalchemy import Engine

from ai_pipeline.credits import balance
from ai_pipeline.db import settling
from ai_pipeline.orchestration.assets import run_owner
from ai_pipeline.orchestration.jobs import PROCESS_BATCH_JOB
from ai_pipeline_tests.crash_safety.crashes import DeadRun, request_row
from ai_pipeline_tests.db.transitions_support import setup_requests


@dataclass(frozen=True)
class Ending:
    """How a run ended, and the sensor that answers it."""

    sensor: str
    report: Callable[[DagsterInstance, DagsterRun], DagsterEvent]
    error: str


ENDINGS = {
    "failed": Ending(
        "release_after_run_failure",
        lambda instance, run: instance.report_run_failed(run),
        "run failed; request released for retry",
    ),
    "canceled": Ending(
        "release_after_run_cancel",
        lambda instance, run: instance.report_run_canceled(run),
        "run canceled; request released for retry",
    ),
}


@dataclass(frozen=True)
class Batch:
    """A batch part-worked by a run that then ended, and by another run still at it."""

    run: DagsterRun
    event: DagsterEvent
    user: str
    held_by_first_attempt: int  # charged, its prediction recorded
    held_by_retry: int  # charged, the prediction not created yet
    finished_by_the_run: int  # failed (refunded) before the run ended
    held_by_another_run: int
    never_claimed: int

    @property
    def ids(self) -> list[int]:
        return [
            self.held_by_first_attempt,
            self.held_by_retry,
            self.finished_by_the_run,
            self.held_by_another_run,
            self.never_claimed,
        ]


def ended_run_with_requests(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str, ending: Ending
) -> Batch:
    user, batch, ids = setup_requests(engine, unique, count=5, credits=10)
    run = instance.create_run_for_job(
        defs.resolve_job_def(PROCESS_BATCH_JOB), tags={"dagster/partition": batch}
    )
    first = DeadRun(engine, None, run_owner(run.run_id, 0))
    held, finished = first.claim(batch, limit=2)
    first.charge(held)
    first.record(held, f"p-{unique}")
    first.charge(finished)
    with engine.begin() as conn:
        assert settling.mark_failed(conn, finished.id, first.owner, "NSFW content detected", retryable=False)
    retry = DeadRun(engine, None, run_owner(run.run_id, 1))
    (held_by_retry,) = retry.claim(batch, limit=1)
    retry.charge(held_by_retry)
    other = DeadRun(engine, None, run_owner(str(uuid.uuid4()), 0))
    (held_by_other,) = other.claim(batch, limit=1)
    other.charge(held_by_other)

    event = ending.report(instance, run)
    ended = instance.get_run_by_id(run.run_id)
    assert ended is not None and ended.is_finished
    return Batch(ended, event, user, held.id, held_by_retry.id, finished.id, held_by_other.id, ids[4])


def evaluate(defs: Definitions, instance: DagsterInstance, ending: Ending, batch: Batch) -> None:
    """One evaluation of the ending's sensor for the run, as the daemon makes it."""
    context = build_run_status_sensor_context(
        sensor_name=ending.sensor, dagster_event=batch.event, dagster_instance=instance, dagster_run=batch.run
    )
    sensor = defs.resolve_sensor_def(ending.sensor)
    sensor(context.for_run_failure() if ending.sensor == "release_after_run_failure" else context)


def rows(engine: Engine, batch: Batch) -> dict[int, Any]:
    return {request_id: request_row(engine, request_id) for request_id in batch.ids}


@pytest.fixture(params=sorted(ENDINGS))
def ending(request: pytest.FixtureRequest) -> Ending:
    return ENDINGS[request.param]


def test_an_ended_run_gives_back_what_any_of_its_attempts_held_keeping_debit_and_prediction(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    unique: str,
    ending: Ending,
    capfd: pytest.CaptureFixture[str],
) -> None:
    batch = ended_run_with_requests(engine, instance, defs, unique, ending)

    evaluate(defs, instance, ending, batch)

    after = rows(engine, batch)
    for request_id in (batch.held_by_first_attempt, batch.held_by_retry):
        row = after[request_id]
        assert (row.status, row.lease_owner, row.lease_expires_at) == ("pending", None, None)
        assert row.error == ending.error
        assert (row.debits, row.refunds) == (1, 0)
        assert row.prediction_intent_at is not None
    assert after[batch.held_by_first_attempt].prediction_id == f"p-{unique}"
    with engine.connect() as conn:
        assert balance(conn, batch.user) == 10 - 3  # the two given back and the other run's stay charged
    assert f"released 2 request(s) held by run {batch.run.run_id}" in capfd.readouterr().err


def test_an_ended_run_leaves_other_runs_requests_and_finished_ones_as_they_were(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str, ending: Ending
) -> None:
    batch = ended_run_with_requests(engine, instance, defs, unique, ending)
    before = rows(engine, batch)

    evaluate(defs, instance, ending, batch)

    after = rows(engine, batch)
    for request_id in (batch.finished_by_the_run, batch.held_by_another_run, batch.never_claimed):
        assert after[request_id] == before[request_id]
    assert after[batch.held_by_another_run].status == "processing"


def test_an_ended_run_given_back_twice_changes_nothing_the_second_time(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    unique: str,
    ending: Ending,
    capfd: pytest.CaptureFixture[str],
) -> None:
    batch = ended_run_with_requests(engine, instance, defs, unique, ending)
    evaluate(defs, instance, ending, batch)
    once = rows(engine, batch)
    capfd.readouterr()

    evaluate(defs, instance, ending, batch)

    assert rows(engine, batch) == once
    assert "released" not in capfd.readouterr().err
