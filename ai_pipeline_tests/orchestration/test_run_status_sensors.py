"""A failed or canceled run of `process_batch` gives back, through its run-status sensor, every request
any attempt of it still held: back to pending with its debit and its prediction, and nothing else."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, Definitions, build_run_status_sensor_context
from sqlalchemy import Engine

from ai_pipeline.credits import balance
from ai_pipeline_tests.orchestration.ended_runs import CANCELED, CREDITS, FAILED, EndedRun, Ending, ended_run


def evaluate(defs: Definitions, instance: DagsterInstance, ending: Ending, ended: EndedRun) -> None:
    """One evaluation of the ending's sensor for the run, as the daemon makes it."""
    context = build_run_status_sensor_context(
        sensor_name=ending.sensor, dagster_event=ended.event, dagster_instance=instance, dagster_run=ended.run
    )
    sensor = defs.resolve_sensor_def(ending.sensor)
    sensor(context.for_run_failure() if ending is FAILED else context)


@pytest.fixture(params=[FAILED, CANCELED], ids=["failed", "canceled"])
def ending(request: pytest.FixtureRequest) -> Ending:
    return request.param  # type: ignore[no-any-return]


def test_an_ended_run_gives_back_what_any_of_its_attempts_held_keeping_debit_and_prediction(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    unique: str,
    ending: Ending,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ended = ended_run(engine, instance, defs, unique, ending)

    evaluate(defs, instance, ending, ended)

    rows = ended.rows(engine)
    for request_id in ended.held:
        row = rows[request_id]
        assert (row.status, row.lease_owner, row.lease_expires_at) == ("pending", None, None)
        assert row.error == ending.error
        assert (row.debits, row.refunds) == (1, 0)
        assert row.prediction_intent_at is not None
    assert rows[ended.held_by_first_attempt].prediction_id == f"p-{unique}"
    with engine.connect() as conn:
        assert balance(conn, ended.user) == CREDITS - 3  # both given back and the other run's stay charged
    assert f"released 2 request(s) held by run {ended.run.run_id}" in capfd.readouterr().err


def test_an_ended_run_leaves_other_runs_requests_and_finished_ones_as_they_were(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str, ending: Ending
) -> None:
    ended = ended_run(engine, instance, defs, unique, ending)
    before = ended.rows(engine)

    evaluate(defs, instance, ending, ended)

    after = ended.rows(engine)
    assert {i: after[i] for i in ended.not_held} == {i: before[i] for i in ended.not_held}
    assert after[ended.held_by_another_run].status == "processing"


def test_an_ended_run_given_back_twice_changes_nothing_the_second_time(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    unique: str,
    ending: Ending,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ended = ended_run(engine, instance, defs, unique, ending)
    evaluate(defs, instance, ending, ended)
    once = ended.rows(engine)
    capfd.readouterr()

    evaluate(defs, instance, ending, ended)

    assert ended.rows(engine) == once
    assert "released" not in capfd.readouterr().err
