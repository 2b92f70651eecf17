"""The batch asset: one materialisation per batch partition, produced by working through the batch."""

from collections.abc import Callable
from typing import Any

from dagster import (
    AssetExecutionContext,
    Backoff,
    Jitter,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    RetryPolicy,
    asset,
)
from sqlalchemy import Connection

from ai_pipeline.db import batches, claims, recovery
from ai_pipeline.db.breakers import BreakerState
from ai_pipeline.db.engine import Database
from ai_pipeline.db.summaries import BatchSummary, batch_summaries
from ai_pipeline.db.transactions import run_in_transaction
from ai_pipeline.orchestration.partitions import batch_partitions
from ai_pipeline.orchestration.resources import OutputsS3Resource, Replicate
from ai_pipeline.processing import BatchRunner
from ai_pipeline.settings import Settings
from ai_pipeline.storage.keys import batch_key_prefix
from ai_pipeline.storage.manifest import write_manifest

# Tag the sensor puts on the runs it launches; a run without it was launched by a person (the UI,
# a backfill), and then the batch's failed requests are reprocessed too.
LAUNCHED_BY_TAG = "ai_pipeline/launched_by"
# Tag a run gets while Replicate's circuit breaker pauses it: why, and when it resumed.
REPLICATE_TAG = "ai_pipeline/replicate"


def run_owner(run_id: str, retry_number: int) -> str:
    """The lease owner for one attempt of a run's step."""
    return f"{run_id}:{retry_number}"


def _take_over(conn: Connection, run_id: str, batch_id: str, *, reprocess_failures: bool) -> tuple[int, int]:
    """A previous attempt of this step died: what it held is ours to resume now. A run a person launched
    (not the sensor) also reprocesses the batch's failures as new requests."""
    released = claims.release_run(conn, run_id, "previous attempt of the run failed")
    requeued = recovery.requeue_failed(conn, batch_id, only_retryable=False) if reprocess_failures else 0
    return released, requeued


def _say_replicate_state(context: AssetExecutionContext) -> Callable[[BreakerState], None]:
    """The run's log and a run tag say when Replicate pauses the run, why, and when it resumes."""

    def say(state: BreakerState) -> None:
        if state.closed:
            context.log.info("Replicate works again: resuming")
            tag = "resumed"
        else:
            context.log.warning(f"Replicate {state.describe()}")
            tag = f"paused: {state.reason}"[:255]
        context.instance.add_run_tags(context.run_id, {REPLICATE_TAG: tag})

    return say


def _batch_report(conn: Connection, batch_id: str) -> tuple[BatchSummary | None, list[dict[str, Any]]]:
    summaries: list[BatchSummary | None] = [*batch_summaries(conn, batch_id)] or [None]
    (summary,) = summaries  # one batch has at most one summary
    return summary, batches.manifest_rows(conn, batch_id)


@asset(
    partitions_def=batch_partitions,
    retry_policy=RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
    kinds={"replicate", "s3", "postgres"},
    description="The generations of one batch: every due request charged, run on Replicate, stored in S3.",
)
def batch_generations(
    context: AssetExecutionContext,
    settings: ResourceParam[Settings],
    database: ResourceParam[Database],
    replicate: ResourceParam[Replicate],
    s3: OutputsS3Resource,
) -> MaterializeResult[Any]:
    batch_id = context.partition_key
    # Every transaction of the run goes through `run_in_transaction`, which runs it again on a fresh
    # connection when the old one died, so no ping per checkout: that saved a tenth of the run's CPU.
    engine = database.engine(pre_ping=False)
    released, requeued = run_in_transaction(
        engine,
        _take_over,
        context.run_id,
        batch_id,
        reprocess_failures=LAUNCHED_BY_TAG not in context.run.tags,
    )
    if released or requeued:
        context.log.info(f"resuming {released} request(s) of an earlier attempt; requeued {requeued} failed")

    s3_client = s3.get_client()
    runner = BatchRunner(
        engine,
        replicate.client(max_connections=settings.run_in_flight + 10),
        s3_client,
        settings,
        owner=run_owner(context.run_id, context.retry_number),
        on_replicate_state=_say_replicate_state(context),
    )
    report = runner.run(batch_id)
    context.log.info(f"batch {batch_id}: {dict(report.outcomes)} in {report.seconds:.1f}s")

    summary, rows = run_in_transaction(engine, _batch_report, batch_id)
    manifest_uris = write_manifest(
        s3_client, settings.s3_bucket, batch_key_prefix(settings.s3_prefix, batch_id), rows
    )
    metadata: dict[str, MetadataValue] = {
        "requests": MetadataValue.int(len(rows)),
        "this_run": MetadataValue.json(dict(report.outcomes)),
        "run_seconds": MetadataValue.float(round(report.seconds, 2)),
        "replicate_paused_seconds": MetadataValue.float(round(report.paused_seconds, 2)),
        "manifest_parquet": MetadataValue.path(manifest_uris[0]),
        "manifest_csv": MetadataValue.path(manifest_uris[1]),
    }
    if summary is not None:
        metadata.update(
            {
                **{
                    f"status/{status}": MetadataValue.int(count)
                    for status, count in sorted(summary.counts.items())
                },
                "open": MetadataValue.int(summary.open),
                "credits_debited": MetadataValue.int(summary.credits_debited),
                "credits_refunded": MetadataValue.int(summary.credits_refunded),
                "credits_charged": MetadataValue.int(summary.credits_charged),
                "replicate_predict_seconds": MetadataValue.float(summary.predict_time_seconds),
                "estimated_cost_usd": MetadataValue.float(summary.estimated_cost_usd),
                "latency_p50_seconds": MetadataValue.float(summary.latency_p50_seconds or 0.0),
                "latency_p95_seconds": MetadataValue.float(summary.latency_p95_seconds or 0.0),
            }
        )
    return MaterializeResult(metadata=metadata)
