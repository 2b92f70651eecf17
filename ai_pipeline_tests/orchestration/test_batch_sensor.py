"""The batch sensor's own rules: how many runs a tick launches per batch and in all, which partitions it
adds, what an idle tick costs, and what it says about rows it refuses. (Runs it launches, and a batch
whose run is still active, are in `pipeline/`.)"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from dagster import DagsterInstance, DagsterRunStatus, Definitions, SensorResult, SkipReason
from sqlalchemy import Engine, text

from ai_pipeline.definitions import build_definitions
from ai_pipeline.orchestration.jobs import PROCESS_BATCH_JOB
from ai_pipeline.orchestration.partitions import BATCHES
from ai_pipeline.orchestration.sensors import MAX_RUNS_PER_TICK
from ai_pipeline.settings import Settings
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request
from ai_pipeline_tests.support.pipeline import tick_batch_sensor

pytestmark = pytest.mark.usefixtures("no_open_request_left")

SENSOR_TAGS = {"ai_pipeline/launched_by": "sensor"}


def due_batches(engine: Engine, *names: str) -> None:
    """One pending request, due now, in each batch."""
    with engine.begin() as conn:
        ensure_test_model(conn)
        for name in names:
            insert_request(conn, f"u-{name}", batch_id=name)


def runs_of(instance: DagsterInstance, defs: Definitions, batch: str, *statuses: DagsterRunStatus) -> None:
    """Runs of the batch's partition in the instance, as the daemon keeps them (active or ended)."""
    job = defs.resolve_job_def(PROCESS_BATCH_JOB)
    for status in statuses:
        instance.create_run_for_job(job, tags={"dagster/partition": batch}, status=status)


def launched(result: SensorResult | SkipReason) -> dict[str, int]:
    """Runs the tick asks for, per batch, each checked to carry the sensor's tag."""
    assert isinstance(result, SensorResult)
    runs: dict[str, int] = {}
    for request in result.run_requests or []:
        assert request.tags == SENSOR_TAGS
        assert request.partition_key is not None
        runs[request.partition_key] = runs.get(request.partition_key, 0) + 1
    return runs


def added_partitions(result: SensorResult | SkipReason) -> list[str]:
    assert isinstance(result, SensorResult)
    return [key for request in result.dynamic_partitions_requests or [] for key in request.partition_keys]


def test_a_tick_with_no_due_work_skips_without_touching_the_dagster_instance(
    engine: Engine, defs: Definitions, unique: str
) -> None:
    batch = f"later-{unique}"
    due_batches(engine, batch)
    with engine.begin() as conn:  # handed back with a delay: pending, but not due for an hour
        conn.execute(
            text(
                "UPDATE generation_requests SET available_at = now() + interval '1 hour' WHERE batch_id = :b"
            ),
            {"b": batch},
        )

    # No instance at all: a tick that asked Dagster's storage anything would fail.
    result = tick_batch_sensor(None, defs)

    assert result == SkipReason("no batch has due work")


def test_runs_per_batch_caps_each_batchs_runs_counting_the_ones_still_active(
    engine: Engine, instance: DagsterInstance, configure: Callable[..., Settings], unique: str
) -> None:
    defs = build_definitions(configure(runs_per_batch=3))
    fresh, busy, full = f"fresh-{unique}", f"busy-{unique}", f"full-{unique}"
    due_batches(engine, fresh, busy, full)
    runs_of(instance, defs, busy, DagsterRunStatus.STARTED, DagsterRunStatus.FAILURE)
    runs_of(
        instance,
        defs,
        full,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    )

    result = tick_batch_sensor(instance, defs)

    assert launched(result) == {fresh: 3, busy: 2}


def test_a_tick_launches_at_most_max_runs_per_tick_and_adds_every_due_batch(
    engine: Engine, instance: DagsterInstance, configure: Callable[..., Settings], unique: str
) -> None:
    defs = build_definitions(configure(runs_per_batch=3))
    batches = [f"many-{i:03}-{unique}" for i in range(MAX_RUNS_PER_TICK // 3 + 1)]  # 3 more runs than allowed
    due_batches(engine, *batches)

    result = tick_batch_sensor(instance, defs)

    assert sum(launched(result).values()) == MAX_RUNS_PER_TICK
    assert sorted(added_partitions(result)) == batches  # the rest are launched by the next tick


def test_a_new_batch_is_added_as_a_partition_once_and_remembered_in_the_cursor(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str
) -> None:
    batch = f"new-{unique}"
    due_batches(engine, batch)

    first = tick_batch_sensor(instance, defs)
    assert isinstance(first, SensorResult)
    second = tick_batch_sensor(instance, defs, cursor=first.cursor)

    assert added_partitions(first) == [batch] and json.loads(first.cursor or "[]") == [batch]
    assert instance.get_dynamic_partitions(BATCHES) == [batch]
    assert added_partitions(second) == []
    assert launched(second) == {batch: 1}  # no run of it has started yet: still due, still launched


def test_a_tick_whose_cursor_knows_every_due_batch_does_not_read_the_instances_partitions(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str
) -> None:
    batch = f"known-{unique}"
    due_batches(engine, batch)

    # The instance does not list the batch (reading it would add the partition again): the cursor
    # alone decides, as checking partitions costs ~15 ms each.
    result = tick_batch_sensor(instance, defs, cursor=json.dumps([batch]))

    assert added_partitions(result) == []
    assert launched(result) == {batch: 1}


def test_a_tick_with_a_lost_cursor_does_not_add_partitions_the_instance_has(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str
) -> None:
    batch, other = f"existing-{unique}", f"other-{unique}"
    due_batches(engine, batch)
    instance.add_dynamic_partitions(BATCHES, [batch, other])

    result = tick_batch_sensor(instance, defs, cursor=None)  # a reset sensor, or a new deployment

    assert isinstance(result, SensorResult)
    assert added_partitions(result) == []
    assert json.loads(result.cursor or "[]") == sorted([batch, other])


def test_a_tick_refuses_requests_whose_batch_name_cannot_be_a_partition_and_says_so(
    engine: Engine,
    instance: DagsterInstance,
    defs: Definitions,
    unique: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    bad = f"bad name/{unique}"
    with engine.begin() as conn:
        ensure_test_model(conn)
        request_id = insert_request(conn, f"u-{unique}", batch_id=bad)

    result = tick_batch_sensor(instance, defs)

    assert result == SkipReason("no batch has due work")
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, error FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).one()
    assert row.status == "rejected" and row.error.startswith("invalid batch_id")
    assert "refused 1 bad batch name(s); 0 request(s) put in the live batch" in capfd.readouterr().err
