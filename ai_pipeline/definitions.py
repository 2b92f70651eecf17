"""The Dagster code location: assembles assets, jobs, sensors, schedules and resources — nothing else."""

from dagster import Definitions

from ai_pipeline.orchestration.assets import batch_generations
from ai_pipeline.orchestration.jobs import process_batch_job
from ai_pipeline.orchestration.resources import build_resources
from ai_pipeline.orchestration.schedules import retry_failed_batches
from ai_pipeline.orchestration.sensors import (
    batch_sensor,
    release_after_run_cancel,
    release_after_run_failure,
    sweeper,
)

defs = Definitions(
    assets=[batch_generations],
    jobs=[process_batch_job],
    sensors=[batch_sensor, release_after_run_failure, release_after_run_cancel, sweeper],
    schedules=[retry_failed_batches],
    resources=build_resources(),
)
