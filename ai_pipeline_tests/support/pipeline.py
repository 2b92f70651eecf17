"""A harness that drives the real Dagster sensor and real runs against real Postgres, S3 and the emulator.

Runs execute in this process (`execute_in_process`) on a temporary Dagster instance, exactly the job
the daemon launches; the sensor is evaluated with `build_sensor_context`, as the daemon would.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dagster import (
    DagsterInstance,
    Definitions,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)
from sqlalchemy import Engine

from ai_pipeline.catalogue import read_catalogue_file, upsert_models
from ai_pipeline.definitions import build_definitions
from ai_pipeline.dev.demo import CATALOGUE
from ai_pipeline.dev.emulator.server import InProcessEmulator, run_emulator
from ai_pipeline.orchestration.jobs import PROCESS_BATCH_JOB
from ai_pipeline.settings import Settings, temporary_environment
from ai_pipeline_tests.support.s3 import create_bucket, make_s3_client, s3_endpoint
from ai_pipeline_tests.support.settings import settings_for_tests


@dataclass
class PipelineHarness:
    engine: Engine
    database_url: str
    emulator: InProcessEmulator
    s3_endpoint_url: str
    s3: Any
    bucket: str
    instance: DagsterInstance
    settings: dict[str, Any] = field(default_factory=dict)

    def pipeline_settings(self, **overrides: Any) -> Settings:
        """The settings a deployment pointed at these parts would read from its environment."""
        emulator = urlsplit(self.emulator.base_url)
        values: dict[str, Any] = {
            "replicate_base_url": self.emulator.base_url,
            "aws_endpoint_url": self.s3_endpoint_url,
            "s3_bucket": self.bucket,
            "s3_prefix": "test",
            "output_hosts": (f"{emulator.hostname}:{emulator.port}",),
            "max_in_flight": 20,
            "lease_seconds": 30,
            "creates_per_minute": 6000,
            "sync_wait_seconds": 5,
            **self.settings,
            **overrides,
        }
        return settings_for_tests(self.database_url, **values)

    def definitions(self, **settings: Any) -> Definitions:
        """The project's code location, as `definitions.py` builds it, configured for these parts."""
        return build_definitions(self.pipeline_settings(**settings))

    def tick(self, defs: Definitions | None = None, cursor: str | None = None) -> SensorResult | SkipReason:
        """Evaluate the batch sensor once and register the partitions it asks for, as the daemon does."""
        return tick_batch_sensor(self.instance, defs or self.definitions(), cursor)

    def run_batch(
        self,
        batch_id: str,
        *,
        defs: Definitions | None = None,
        tags: dict[str, str] | None = None,
        launched_by_sensor: bool = True,
    ) -> Any:
        """One real run of the batch job for a partition, as the sensor (or a person in the UI) would."""
        defs = defs or self.definitions()
        if not self.instance.has_dynamic_partition("batches", batch_id):
            self.instance.add_dynamic_partitions("batches", [batch_id])
        job = defs.resolve_job_def(PROCESS_BATCH_JOB)
        return job.execute_in_process(
            partition_key=batch_id,
            instance=self.instance,
            tags={**({"ai_pipeline/launched_by": "sensor"} if launched_by_sensor else {}), **(tags or {})},
            raise_on_error=False,
        )

    def drain(self, *, max_ticks: int = 30, **settings: Any) -> list[Any]:
        """Tick the sensor and run what it launches until no batch has due work."""
        defs = self.definitions(**settings)
        results = []
        for _ in range(max_ticks):
            result = self.tick(defs)
            if isinstance(result, SkipReason) or not result.run_requests:
                return results
            for request in result.run_requests:
                results.append(self.run_batch(request.partition_key, defs=defs, tags=dict(request.tags)))
        raise AssertionError(f"batches still had due work after {max_ticks} sensor ticks")


def tick_batch_sensor(
    instance: DagsterInstance | None, defs: Definitions, cursor: str | None = None
) -> SensorResult | SkipReason:
    """Evaluate the batch sensor once and register the partitions it asks for, as the daemon does.

    Without an instance, a tick that touches Dagster's storage fails."""
    context = build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources, cursor=cursor
    )
    result = defs.resolve_sensor_def("batch_sensor")(context)
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests or []:
            assert instance is not None
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def emulator_seed_for(module_name: str) -> int:
    """A seed of a test module's own: every module starts its own emulator, and emulators with the same
    seed hand out the same prediction ids, which must stay unique in the session's shared database."""
    return zlib.crc32(module_name.encode())


@contextmanager
def pipeline_harness(engine: Engine, database_url: str, **emulator_config: Any) -> Iterator[PipelineHarness]:
    """The real parts wired together: emulator, S3 endpoint, a temporary Dagster instance.

    Everything is configured by `PipelineHarness.pipeline_settings()`; the environment holds only what
    boto3 reads itself (the test credentials for the S3 endpoint), as a deployment's would.
    """
    with engine.begin() as conn:
        upsert_models(conn, read_catalogue_file(CATALOGUE))
    config = {"predict_seconds": 0.2, "predict_jitter_seconds": 0.05, "seed": 7, **emulator_config}
    with (
        run_emulator(**config) as emulator,
        s3_endpoint() as s3_url,
        instance_for_test() as instance,
        temporary_environment({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}),
    ):
        s3 = make_s3_client(s3_url)
        yield PipelineHarness(
            engine=engine,
            database_url=database_url,
            emulator=emulator,
            s3_endpoint_url=s3_url,
            s3=s3,
            bucket=create_bucket(s3),
            instance=instance,
        )
