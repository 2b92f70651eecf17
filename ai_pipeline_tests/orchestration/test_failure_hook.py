"""The failure hook of `process_batch`: once a run's step has failed for good, every request the run
(any attempt of it) still holds goes back to pending with its debit and its prediction."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dagster import DagsterInstance, Definitions, build_hook_context, build_run_status_sensor_context
from sqlalchemy import Engine

from ai_pipeline.db.engine import Database
from ai_pipeline.orchestration.jobs import release_held_requests
from ai_pipeline.settings import Settings
from ai_pipeline_tests.orchestration.ended_runs import FAILED, EndedRun, ended_run


def fire_hook(settings: Settings, ended: EndedRun) -> None:
    """The hook as Dagster fires it after the run's step failed, with the job's `database` resource."""
    release_held_requests(
        build_hook_context(resources={"database": Database(settings)}, run_id=ended.run.run_id)
    )


def test_the_failure_hook_gives_back_what_the_failed_run_held_keeping_debit_and_prediction(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    configure: Callable[..., Settings],
    unique: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ended = ended_run(engine, instance, defs, unique, FAILED)

    fire_hook(configure(), ended)

    rows = ended.rows(engine)
    for request_id in ended.held:
        row = rows[request_id]
        assert (row.status, row.lease_owner, row.error) == ("pending", None, FAILED.error)
        assert (row.debits, row.refunds) == (1, 0)
    assert rows[ended.held_by_first_attempt].prediction_id == f"p-{unique}"
    assert f"released 2 request(s) held by failed run {ended.run.run_id}" in capfd.readouterr().err


def test_the_failure_hook_leaves_other_runs_requests_and_finished_ones_as_they_were(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    configure: Callable[..., Settings],
    unique: str,
) -> None:
    ended = ended_run(engine, instance, defs, unique, FAILED)
    before = ended.rows(engine)

    fire_hook(configure(), ended)

    after = ended.rows(engine)
    assert {i: after[i] for i in ended.not_held} == {i: before[i] for i in ended.not_held}


def test_the_run_failure_sensor_after_the_hook_changes_nothing_more(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    configure: Callable[..., Settings],
    unique: str,
) -> None:
    # Both answer the same failure: the hook in the run, the sensor in the daemon a moment later.
    ended = ended_run(engine, instance, defs, unique, FAILED)
    fire_hook(configure(), ended)
    after_hook = ended.rows(engine)

    context = build_run_status_sensor_context(
        sensor_name=FAILED.sensor, dagster_event=ended.event, dagster_instance=instance, dagster_run=ended.run
    )
    defs.resolve_sensor_def(FAILED.sensor)(context.for_run_failure())

    assert ended.rows(engine) == after_hook
