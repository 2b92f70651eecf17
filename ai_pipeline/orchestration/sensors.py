"""Sensors: launch a run per batch with due work; give back what failed or canceled runs held; sweep.

`build_sensors(settings)` makes them from the code location's `Settings`; they use no Dagster
resources. Building a sensor's resources makes Dagster construct a fresh Postgres-backed instance on
every tick, about 150 ms of CPU measured on these machines, which every few seconds was most of an idle
pipeline's CPU. An idle tick now costs one small indexed query; the instance is touched only when there
is work to launch, and then it is built once per code server process, not once per tick (see
`_instance`).
"""

import json
import threading

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from sqlalchemy import Connection

from ai_pipeline.db import batches, claims
from ai_pipeline.db.breakers import BreakerState, read_breaker
from ai_pipeline.db.engine import Database
from ai_pipeline.db.transactions import run_in_transaction
from ai_pipeline.orchestration.assets import LAUNCHED_BY_TAG
from ai_pipeline.orchestration.jobs import PROCESS_BATCH_JOB, process_batch_job
from ai_pipeline.orchestration.partitions import BATCHES, batch_partitions
from ai_pipeline.processing.sweeper import SweepPolicy, replicate_canceler, sweep
from ai_pipeline.replicate.breaker import REPLICATE_BREAKER
from ai_pipeline.settings import Settings

ACTIVE_RUN_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
# A tick launches at most this many runs: Dagster takes seconds per hundred run requests.
MAX_RUNS_PER_TICK = 100


_instances: dict[str, DagsterInstance] = {}
_instances_lock = threading.Lock()


def _instance(context: SensorEvaluationContext) -> DagsterInstance:
    """The Dagster instance, built once per process and instance configuration.

    `context.instance` builds a new Postgres-backed instance for every tick that touches it (about
    150 ms of CPU here); while a batch is being worked on, every tick of the batch sensor needs it.
    """
    ref = context.instance_ref
    if ref is None:  # a context built in a test around an instance
        return context.instance
    key = repr(ref)
    with _instances_lock:
        instance = _instances.get(key)
        if instance is None:
            instance = _instances[key] = DagsterInstance.from_ref(ref)
        return instance


def _active_runs_per_batch(context: SensorEvaluationContext) -> dict[str, int]:
    records = _instance(context).get_run_records(
        RunsFilter(job_name=PROCESS_BATCH_JOB, statuses=ACTIVE_RUN_STATUSES)
    )
    active: dict[str, int] = {}
    for record in records:
        key = record.dagster_run.tags.get("dagster/partition")
        if key:
            active[key] = active.get(key, 0) + 1
    return active


def build_sensors(settings: Settings) -> list[SensorDefinition]:
    """The code location's sensors, configured by `settings`."""
    database = Database(settings)

    @sensor(
        name="batch_sensor",
        job=process_batch_job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Finds batches with due pending requests and launches a run per batch partition.",
    )
    def batch_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        refused, rolled, due, replicate = run_in_transaction(database.engine(), _prepare_due_batches)
        if refused or rolled:
            context.log.info(
                f"refused {refused} bad batch name(s); {rolled} request(s) put in the live batch"
            )
        if not due:
            return SkipReason("no batch has due work")
        if not replicate.closed and not replicate.probe_due:
            # Runs would only wait; once a probe is due, a run launched now (or one waiting) makes it.
            return SkipReason(f"{len(due)} batch(es) wait: Replicate {replicate.describe()}")

        known = set(json.loads(context.cursor)) if context.cursor else set()
        if not known.issuperset(due):
            known = set(_instance(context).get_dynamic_partitions(BATCHES))
        new_partitions = [batch for batch in due if batch not in known]

        active = _active_runs_per_batch(context)
        run_requests = []
        for batch in due:
            for _ in range(settings.runs_per_batch - active.get(batch, 0)):
                run_requests.append(RunRequest(partition_key=batch, tags={LAUNCHED_BY_TAG: "sensor"}))
            if len(run_requests) >= MAX_RUNS_PER_TICK:
                break
        return SensorResult(
            run_requests=run_requests[:MAX_RUNS_PER_TICK],
            dynamic_partitions_requests=(
                [batch_partitions.build_add_request(new_partitions)] if new_partitions else []
            ),
            cursor=json.dumps(sorted(known | set(new_partitions))),
        )

    def release(context: RunStatusSensorContext, why: str) -> None:
        run = context.dagster_run
        released = run_in_transaction(database.engine(), claims.release_run, run.run_id, why)
        if released:
            context.log.info(f"released {released} request(s) held by run {run.run_id}")

    @run_failure_sensor(
        name="release_after_run_failure",
        monitored_jobs=[process_batch_job],
        default_status=DefaultSensorStatus.RUNNING,
        description="A failed run (also one whose worker was killed) gives back every request it held.",
    )
    def release_after_run_failure(context: RunFailureSensorContext) -> None:
        release(context, "run failed; request released for retry")

    @run_status_sensor(
        name="release_after_run_cancel",
        run_status=DagsterRunStatus.CANCELED,
        monitored_jobs=[process_batch_job],
        default_status=DefaultSensorStatus.RUNNING,
        description="A canceled run gives back every request it held.",
    )
    def release_after_run_cancel(context: RunStatusSensorContext) -> None:
        release(context, "run canceled; request released for retry")

    cancel_at_replicate = replicate_canceler(settings.token, settings.replicate_base_url)
    sweep_policy = SweepPolicy.from_settings(settings)

    @sensor(
        name="sweeper",
        minimum_interval_seconds=settings.sweep_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Sweeper: releases expired leases (fails and refunds requests out of attempts), carries out"
            " cancels at Replicate, retries retryable failures once after a backoff. Launches no runs."
        ),
    )
    def sweeper(context: SensorEvaluationContext) -> SkipReason:
        report = sweep(database.engine(), cancel_at_replicate, sweep_policy)
        if report.changed:
            context.log.info(report.summary())
        return SkipReason(report.summary())

    return [batch_sensor, release_after_run_failure, release_after_run_cancel, sweeper]


def _prepare_due_batches(conn: Connection) -> tuple[int, int, list[str], BreakerState]:
    """Refuse bad batch names, batch requests written one at a time, find batches with due work, and
    whether Replicate's circuit breaker pauses work.

    (Expired leases are the sweeper's: it releases them, or gives up on requests out of attempts.)
    """
    refused = batches.reject_invalid_batch_names(conn)
    rolled = batches.assign_rolling_batch(conn, batches.rolling_batch_name())
    due = batches.due_batches(conn)
    batches.ensure_batches(conn, due)
    return refused, rolled, due, read_breaker(conn, REPLICATE_BREAKER)
