"""Schedules: the scheduled backfill that reprocesses batches' retryable failures."""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from sqlalchemy import Connection

from ai_pipeline.db import recovery
from ai_pipeline.db.engine import Database
from ai_pipeline.db.transactions import run_in_transaction
from ai_pipeline.orchestration.assets import LAUNCHED_BY_TAG
from ai_pipeline.orchestration.jobs import process_batch_job
from ai_pipeline.settings import Settings


def build_retry_schedule(settings: Settings) -> ScheduleDefinition:
    """The scheduled backfill, waiting the same backoff as the sweeper's retries."""
    database = Database(settings)
    age = settings.retry_backoff_seconds

    @schedule(
        name="retry_failed_batches",
        job=process_batch_job,
        cron_schedule="*/15 * * * *",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Every 15 minutes: requeue retryable failures older than the retry backoff (once per request)"
            " and relaunch their batches."
        ),
    )
    def retry_failed_batches(context: ScheduleEvaluationContext) -> SkipReason | list[RunRequest]:
        requeued = run_in_transaction(database.engine(), _requeue_retryable_failures, age)
        # A batch listed may have nothing left to copy: the sweeper retries the same failures, and may
        # have copied them between the listing and the copy.
        batches = [batch for batch, count in requeued.items() if count]
        if not batches:
            return SkipReason("no retryable failures")
        return [
            RunRequest(partition_key=batch, tags={LAUNCHED_BY_TAG: "retry_schedule"}) for batch in batches
        ]

    return retry_failed_batches


def _requeue_retryable_failures(conn: Connection, age: float) -> dict[str, int]:
    batches = recovery.batches_with_retryable_failures(conn, age)
    return {
        b: recovery.requeue_failed(
            conn, b, only_retryable=True, originals_only=True, failed_before_seconds=age
        )
        for b in batches
    }
