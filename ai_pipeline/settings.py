"""Configuration from the environment, in one place.

Every knob the pipeline reads lives here, with its environment variable and default. A `.env` file in
the working directory is read first (real environment variables win over it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

load_dotenv(override=False)

DEFAULT_REPLICATE_BASE_URL = "https://api.replicate.com"
DEFAULT_OUTPUT_HOSTS = ("replicate.delivery", "*.replicate.delivery")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _env(name)
    if raw is None:
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """The pipeline's configuration. Build it with `Settings.from_env()`."""

    # Where local state lives: the embedded Postgres, Dagster's home, demo outputs.
    home: Path = field(default_factory=lambda: Path(".ai_pipeline").resolve())
    # SQLAlchemy URL; None means "start or reuse the embedded Postgres under `home`".
    database_url: str | None = None

    replicate_api_token: str | None = None
    replicate_base_url: str = DEFAULT_REPLICATE_BASE_URL

    s3_bucket: str | None = None
    s3_prefix: str = "ai-pipeline"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    # Hosts output files may be fetched from (exact names or "*.suffix").
    output_hosts: tuple[str, ...] = DEFAULT_OUTPUT_HOSTS
    output_max_bytes: int = 50 * 1024 * 1024
    output_timeout_seconds: float = 60.0

    # How a run works through a batch.
    max_in_flight: int = 50
    claim_chunk: int = 100
    lease_seconds: int = 300
    max_attempts: int = 5
    # Replicate's create limit, shared by every run through a Postgres token bucket.
    creates_per_minute: int = 600
    # How long one create may hold the connection waiting for the result (Prefer: wait=N, 1-60).
    sync_wait_seconds: int = 60

    sensor_interval_seconds: int = 5
    runs_per_batch: int = 1
    # The sweeper: how often it runs, and how long a retryable failure waits before its one retry.
    sweep_interval_seconds: int = 15
    retry_backoff_seconds: float = 60.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read the configuration from the environment (and `.env`)."""
        home = Path(_env("AI_PIPELINE_HOME", ".ai_pipeline") or ".ai_pipeline").resolve()
        return cls(
            home=home,
            database_url=_env("AI_PIPELINE_DATABASE_URL"),
            replicate_api_token=_env("REPLICATE_API_TOKEN"),
            replicate_base_url=_env("REPLICATE_BASE_URL", DEFAULT_REPLICATE_BASE_URL) or "",
            s3_bucket=_env("AI_PIPELINE_S3_BUCKET"),
            s3_prefix=(_env("AI_PIPELINE_S3_PREFIX", "ai-pipeline") or "").strip("/"),
            aws_endpoint_url=_env("AWS_ENDPOINT_URL"),
            aws_region=_env("AWS_DEFAULT_REGION", "us-east-1") or "us-east-1",
            output_hosts=_env_list("AI_PIPELINE_OUTPUT_HOSTS", DEFAULT_OUTPUT_HOSTS),
            output_max_bytes=_env_int("AI_PIPELINE_OUTPUT_MAX_BYTES", 50 * 1024 * 1024),
            output_timeout_seconds=_env_float("AI_PIPELINE_OUTPUT_TIMEOUT_SECONDS", 60.0),
            max_in_flight=_env_int("AI_PIPELINE_MAX_IN_FLIGHT", 50),
            claim_chunk=_env_int("AI_PIPELINE_CLAIM_CHUNK", 100),
            lease_seconds=_env_int("AI_PIPELINE_LEASE_SECONDS", 300),
            max_attempts=_env_int("AI_PIPELINE_MAX_ATTEMPTS", 5),
            creates_per_minute=_env_int("AI_PIPELINE_CREATES_PER_MINUTE", 600),
            sync_wait_seconds=min(60, max(1, _env_int("AI_PIPELINE_SYNC_WAIT_SECONDS", 60))),
            sensor_interval_seconds=_env_int("AI_PIPELINE_SENSOR_INTERVAL_SECONDS", 5),
            runs_per_batch=max(1, _env_int("AI_PIPELINE_RUNS_PER_BATCH", 1)),
            sweep_interval_seconds=max(1, _env_int("AI_PIPELINE_SWEEP_INTERVAL_SECONDS", 15)),
            retry_backoff_seconds=_env_float("AI_PIPELINE_RETRY_BACKOFF_SECONDS", 60.0),
        )


@contextlib.contextmanager
def temporary_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring what was there before (Dagster instances and
    sensors in this process read the environment)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
