"""The job that materialises one batch partition, with the hook that gives back what a failed run held."""

from dagster import AssetSelection, HookContext, define_asset_job, failure_hook, in_process_executor

from ai_pipeline.db import claims
from ai_pipeline.db.transactions import run_in_transaction
from ai_pipeline.orchestration.assets import batch_generations
from ai_pipeline.orchestration.partitions import batch_partitions

PROCESS_BATCH_JOB = "process_batch"


@failure_hook(required_resource_keys={"database"})
def release_held_requests(context: HookContext) -> None:
    """After the step's retries ran out: every request the run still holds goes back to pending.

    A SIGKILLed run fires no hook; the run-failure sensor and expiring leases cover that case.
    """
    released = run_in_transaction(
        context.resources.database.engine(),
        claims.release_run,
        context.run_id,
        "run failed; request released for retry",
    )
    context.log.info(f"released {released} request(s) held by failed run {context.run_id}")


process_batch_job = define_asset_job(
    PROCESS_BATCH_JOB,
    selection=AssetSelection.assets(batch_generations),
    partitions_def=batch_partitions,
    hooks={release_held_requests},
    # One step per run: a subprocess per step would add ~2 s of start-up to every run.
    executor_def=in_process_executor,
    description="Work through one batch of generation requests.",
)
