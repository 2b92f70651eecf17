"""Schedules: the scheduled backfill that reprocesses batches' retryable failures."""

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule
from sqlalchemy import text

from ai_pipeline.db import requests as transitions
from ai_pipeline.orchestration.assets import LAUNCHED_BY_TAG
from ai_pipeline.orchestration.jobs import process_batch_job
from ai_pipeline.orchestration.resources import DatabaseResource
from ai_pipeline.settings import Settings

_BATCHES_WITH_RETRYABLE_FAILURES = text(
    "SELECT DISTINCT batch_id FROM generation_requests f WHERE status = 'failed' AND retryable"
    " AND retry_of IS NULL AND batch_id IS NOT NULL"
    " AND completed_at <= now() - make_interval(secs => :age)"
    " AND NOT EXISTS (SELECT 1 FROM generation_requests c WHERE c.retry_of = f.id)"
)


@schedule(
    job=process_batch_job,
    cron_schedule="*/15 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description=(
        "Every 15 minutes: requeue retryable failures older than the retry backoff (once per request) and"
        " relaunch their batches."
    ),
)
def retry_failed_batches(context: ScheduleEvaluationContext, database: DatabaseResource):  # type: ignore[no-untyped-def]
    # The same backoff as the sweeper's retries: a request that just failed is not retried at once.
    age = Settings.from_env().retry_backoff_seconds
    with database.engine().begin() as conn:
        batches = list(conn.execute(_BATCHES_WITH_RETRYABLE_FAILURES, {"age": age}).scalars())
        requeued = {
            b: transitions.requeue_failed(
                conn, b, only_retryable=True, originals_only=True, failed_before_seconds=age
            )
            for b in batches
        }
    if not batches:
        return SkipReason("no retryable failures")
    return [
        RunRequest(partition_key=batch, tags={LAUNCHED_BY_TAG: "retry_schedule"})
        for batch, count in requeued.items()
        if count
    ]
