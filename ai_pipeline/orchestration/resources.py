"""Resources, fed from the environment through `EnvVar` so secrets never reach run config or the UI."""

from __future__ import annotations

import os
from typing import Any

import replicate
from dagster import ConfigurableResource, EnvVar
from dagster_aws.s3 import S3Resource
from pydantic import Field
from sqlalchemy import Engine

from ai_pipeline.db.engine import engine_for_url, resolve_database_url
from ai_pipeline.processing import RunnerConfig
from ai_pipeline.replicate.predictions import make_client
from ai_pipeline.settings import DEFAULT_REPLICATE_BASE_URL, Settings
from ai_pipeline.storage.client import create_s3_client
from ai_pipeline.storage.fetch import FetchPolicy


class DatabaseResource(ConfigurableResource):  # type: ignore[type-arg]
    """The Postgres holding requests and credits; the embedded one when no URL is configured."""

    database_url: str | None = Field(default=None, description="SQLAlchemy URL (AI_PIPELINE_DATABASE_URL)")

    def engine(self, *, pre_ping: bool = True) -> Engine:
        """The shared engine; see `engine_for_url` for when `pre_ping=False` is safe."""
        url = self.database_url or resolve_database_url(Settings.from_env())
        return engine_for_url(url, pre_ping=pre_ping)


class ReplicateResource(ConfigurableResource):  # type: ignore[type-arg]
    """The official Replicate client; the token comes from REPLICATE_API_TOKEN."""

    api_token: str = Field(description="Replicate API token (REPLICATE_API_TOKEN)")
    base_url: str = Field(default=DEFAULT_REPLICATE_BASE_URL, description="API root (REPLICATE_BASE_URL)")

    def client(self, max_connections: int = 200) -> replicate.Client:
        return make_client(self.api_token, self.base_url, max_connections=max_connections)


class OutputsS3Resource(S3Resource):
    """dagster-aws's S3 resource, handing out the pipeline's tuned client (see `storage.client`)."""

    def get_client(self) -> Any:
        if self.profile_name or self.use_unsigned_session or self.aws_session_token:
            return super().get_client()  # configurations the tuned client does not cover
        return create_s3_client(
            endpoint_url=self.endpoint_url,
            region_name=self.region_name or "us-east-1",
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )


class PipelineSettingsResource(ConfigurableResource):  # type: ignore[type-arg]
    """How runs work through batches. Defaults come from the AI_PIPELINE_* environment variables."""

    s3_bucket: str = Field(description="Bucket for outputs and manifests (AI_PIPELINE_S3_BUCKET)")
    s3_prefix: str = "ai-pipeline"
    output_hosts: list[str] = Field(default_factory=list)
    output_max_bytes: int = 50 * 1024 * 1024
    output_timeout_seconds: float = 60.0
    max_in_flight: int = 50
    claim_chunk: int = 100
    lease_seconds: int = 300
    max_attempts: int = 5
    creates_per_minute: int = 600
    sync_wait_seconds: int = 60

    def runner_config(self) -> RunnerConfig:
        return RunnerConfig(
            s3_bucket=self.s3_bucket,
            s3_prefix=self.s3_prefix,
            fetch_policy=FetchPolicy(
                allowed_hosts=tuple(self.output_hosts),
                max_bytes=self.output_max_bytes,
                timeout_seconds=self.output_timeout_seconds,
            ),
            max_in_flight=self.max_in_flight,
            claim_chunk=self.claim_chunk,
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
            creates_per_minute=self.creates_per_minute,
            sync_wait_seconds=self.sync_wait_seconds,
        )


def _env_or(name: str, default: str | None) -> str | EnvVar | None:
    """`EnvVar(name)` when it is set (so its value stays out of the UI), else the default."""
    return EnvVar(name) if os.environ.get(name) else default


def build_resources(settings: Settings | None = None) -> dict[str, object]:
    """The resources of this deployment, chosen from the environment in one place."""
    settings = settings or Settings.from_env()
    return {
        "database": DatabaseResource(database_url=_env_or("AI_PIPELINE_DATABASE_URL", None)),
        "replicate": ReplicateResource(
            api_token=EnvVar("REPLICATE_API_TOKEN"),
            base_url=settings.replicate_base_url,
        ),
        "s3": OutputsS3Resource(
            endpoint_url=_env_or("AWS_ENDPOINT_URL", None),
            region_name=settings.aws_region,
            aws_access_key_id=_env_or("AWS_ACCESS_KEY_ID", None),
            aws_secret_access_key=_env_or("AWS_SECRET_ACCESS_KEY", None),
        ),
        "pipeline_settings": PipelineSettingsResource(
            s3_bucket=settings.s3_bucket or "ai-pipeline-outputs",
            s3_prefix=settings.s3_prefix,
            output_hosts=list(settings.output_hosts),
            output_max_bytes=settings.output_max_bytes,
            output_timeout_seconds=settings.output_timeout_seconds,
            max_in_flight=settings.max_in_flight,
            claim_chunk=settings.claim_chunk,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            creates_per_minute=settings.creates_per_minute,
            sync_wait_seconds=settings.sync_wait_seconds,
        ),
    }
