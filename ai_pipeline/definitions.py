"""The Dagster code location: assembles assets, jobs, sensors, schedules and resources from one `Settings`
— nothing else."""

from dagster import Definitions

from ai_pipeline.orchestration.assets import batch_generations
from ai_pipeline.orchestration.jobs import process_batch_job
from ai_pipeline.orchestration.resources import build_resources
from ai_pipeline.orchestration.schedules import build_retry_schedule
from ai_pipeline.orchestration.sensors import build_sensors
from ai_pipeline.settings import Settings


def build_definitions(settings: Settings) -> Definitions:
    """The whole code location, configured by `settings` (tests build it with their own)."""
    return Definitions(
        assets=[batch_generations],
        jobs=[process_batch_job],
        sensors=build_sensors(settings),
        schedules=[build_retry_schedule(settings)],
        resources=build_resources(settings),
    )


defs = build_definitions(Settings.from_env())
