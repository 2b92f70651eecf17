"""Schedules: the scheduled backfill that reprocesses batches' retryable failures."""

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule
from sqlalchemy import text

from ai_pipeline.db import requests as transitions
from ai_pipeline.orchestration.assets import LAUNCHED_BY_TAG
from ai_pipeline.orchestration.jobs import process_batch_job
from ai_pipeline.orchestration.resources import DatabaseResource

_BATCHES_WITH_RETRYABLE_FAILURES = text(
    "SELECT DISTINCT batch_id FROM generation_requests f WHERE status = 'failed' AND retryable"
    " AND retry_of IS NULL AND batch_id IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM generation_requests c WHERE c.retry_of = f.id)"
)


@schedule(
    job=process_batch_job,
    cron_schedule="*/15 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: requeue retryable failures (once per request) and relaunch their batches.",
)
def retry_failed_batches(context: ScheduleEvaluationContext, database: DatabaseResource):  # type: ignore[no-untyped-def]
    with database.engine().begin() as conn:
        batches = list(conn.execute(_BATCHES_WITH_RETRYABLE_FAILURES).scalars())
        requeued = {
            b: transitions.requeue_failed(conn, b, only_retryable=True, originals_only=True) for b in batches
        }
    if not batches:
        return SkipReason("no retryable failures")
    return [
        RunRequest(partition_key=batch, tags={LAUNCHED_BY_TAG: "retry_schedule"})
        for batch, count in requeued.items()
        if count
    ]
