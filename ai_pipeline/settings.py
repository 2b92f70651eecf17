"""The pipeline's configuration: every knob it reads from the environment, declared once.

`Settings.from_env()` reads the environment (after a `.env` file in the working directory, whose values
never override real environment variables) and refuses a bad value with one line naming the variable.
The CLI, the Dagster definitions (resources and sensors) and the runner all take the same `Settings`
object; the README's configuration table is generated from it (`python -m ai_pipeline.settings`), and a
test keeps the two the same.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from dotenv import load_dotenv
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REPLICATE_BASE_URL = "https://api.replicate.com"
DEFAULT_OUTPUT_HOSTS = ("replicate.delivery", "*.replicate.delivery")
ENV_FILE = ".env"


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot run with; the message names the variable."""


class Settings(BaseSettings):
    """What the pipeline reads from the environment. Build it with `Settings.from_env()` (or directly,
    with keyword arguments, in tests)."""

    model_config = SettingsConfigDict(
        env_prefix="AI_PIPELINE_",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        validate_default=True,
    )

    home: Path = Field(
        default=Path(".ai_pipeline"),
        description="Local state: the embedded Postgres, Dagster's home for `demo`/`dev`, demo files",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Postgres holding requests and credits (a bare `postgresql://`"
        " is accepted and pinned to psycopg2)",
        json_schema_extra={"default_text": "an embedded Postgres (PyPI `pgserver`) under the home folder"},
    )
    replicate_api_token: SecretStr | None = Field(
        default=None,
        validation_alias="REPLICATE_API_TOKEN",
        description="Replicate token",
        json_schema_extra={"default_text": "required (the local emulator accepts any)"},
    )
    replicate_base_url: str = Field(
        default=DEFAULT_REPLICATE_BASE_URL,
        validation_alias="REPLICATE_BASE_URL",
        description="Replicate API root (the official client reads it too)",
    )
    s3_bucket: str = Field(default="ai-pipeline-outputs", description="Bucket for outputs and manifests")
    s3_prefix: str = Field(default="ai-pipeline", description="Key prefix for outputs and manifests")
    aws_endpoint_url: str | None = Field(
        default=None,
        validation_alias="AWS_ENDPOINT_URL",
        description="S3-compatible endpoint (MinIO, R2, a local one); boto3 reads it too",
        json_schema_extra={"default_text": "AWS S3"},
    )
    aws_region: str = Field(
        default="us-east-1", validation_alias="AWS_DEFAULT_REGION", description="Region of the bucket"
    )
    output_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_OUTPUT_HOSTS,
        description="Comma-separated hosts outputs may be downloaded from (`host`, `*.suffix`, `host:port`)",
    )
    output_max_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1,
        description="Size cap per output download, in bytes",
        json_schema_extra={"default_text": "`52428800` (50 MiB)"},
    )
    output_timeout_seconds: float = Field(default=60.0, gt=0, description="Deadline per output download")
    max_in_flight: int = Field(
        default=50,
        ge=1,
        description="Predictions in flight at once across all runs and hosts, held to it through Postgres"
        " (a catalogue model's `max_in_flight` caps that model the same way)",
    )
    run_max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Predictions one run keeps in flight at most, within `AI_PIPELINE_MAX_IN_FLIGHT`"
        " (it sizes the run's connections and tasks)",
        json_schema_extra={"default_text": "`AI_PIPELINE_MAX_IN_FLIGHT`"},
    )
    claim_chunk: int = Field(default=100, ge=1, description="Requests a run claims at a time")
    lease_seconds: int = Field(
        default=300, ge=1, description="Lease on a claimed request, renewed while a run works on it"
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Claims of one request before it fails (and is refunded)"
    )
    creates_per_minute: int = Field(
        default=600,
        ge=1,
        description="Replicate's create limit, shared by all runs through a Postgres token bucket",
    )
    breaker_cooldown_seconds: float = Field(
        default=30.0,
        gt=0,
        description="After Replicate refused the account (401/402/403) or failed every call, how long"
        " every run pauses before one probes it (`GET /v1/account`); doubles after each failed probe,"
        " up to 10 minutes",
    )
    sync_wait_seconds: int = Field(
        default=60, ge=1, le=60, description="`Prefer: wait=N` on creates: how long Replicate may hold one"
    )
    sensor_interval_seconds: int = Field(
        default=5, ge=1, description="How often the sensor looks for batches with due work"
    )
    runs_per_batch: int = Field(default=1, ge=1, description="Runs a big batch may be spread over at once")
    sweep_interval_seconds: int = Field(
        default=15, ge=1, description="How often the sweeper settles expired leases, cancels and retries"
    )
    retry_backoff_seconds: float = Field(
        default=60.0, ge=0, description="How long a retryable failure waits before its one automatic retry"
    )
    api_host: str = Field(
        default="127.0.0.1", description="Address `ai-pipeline serve` listens on (`--host` overrides it)"
    )
    api_port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        description="Port `ai-pipeline serve` listens on (`--port` overrides it)",
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest JSON request body the API accepts, in bytes",
        json_schema_extra={"default_text": "`1048576` (1 MiB)"},
    )
    api_max_upload_bytes: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        description="Largest batch file the API accepts, in bytes",
        json_schema_extra={"default_text": "`104857600` (100 MiB)"},
    )
    api_rate_per_second: float = Field(
        default=50.0, gt=0, description="Requests per second one API key may make, on average"
    )
    api_rate_burst: int = Field(
        default=100, ge=1, description="Requests one API key may make at once before the rate applies"
    )
    api_presign_seconds: int = Field(
        default=900,
        ge=1,
        le=7 * 24 * 3600,
        description="How long a presigned output URL the API hands out works",
    )
    webhook_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated hosts webhooks may be sent to (`host`, `*.suffix`, `host:port`);"
        " private addresses only as IP literals or `localhost`",
        json_schema_extra={"default_text": "none: webhooks are refused"},
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="Deadline per webhook delivery")
    webhook_retry_hours: float = Field(
        default=72.0, gt=0, description="How long a webhook is retried (with backoff) before it is given up"
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the webhook worker looks for events to deliver"
    )

    @field_validator("output_hosts", "webhook_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _no_outer_slashes(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @classmethod
    def from_env(cls) -> Settings:
        """Read the configuration from the environment and `./.env`; `SettingsError` names each bad value."""
        read_env_file()
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc)) from None

    @property
    def run_in_flight(self) -> int:
        """Predictions one run keeps in flight at most (`run_max_in_flight`, within `max_in_flight`)."""
        return min(self.run_max_in_flight or self.max_in_flight, self.max_in_flight)

    @property
    def token(self) -> str | None:
        """The Replicate token, for the client (it is masked everywhere else)."""
        return self.replicate_api_token.get_secret_value() if self.replicate_api_token else None


def read_env_file(path: Path | None = None) -> None:
    """Put the values of `./.env` (only there: never a file found in a parent folder) into the
    environment, so that every library and child process sees them; real variables win."""
    load_dotenv(path or Path.cwd() / ENV_FILE, override=False)


def env_name(name: str, field: FieldInfo) -> str:
    """The environment variable a field is read from."""
    alias = field.validation_alias
    return alias if isinstance(alias, str) else f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def describe_errors(exc: ValidationError) -> str:
    """One line per bad value: `VARIABLE='value': what is wrong`."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        field = Settings.model_fields.get(name)
        variable = env_name(name, field) if field is not None else name
        value = error.get("input")
        shown = "" if isinstance(value, dict) or field is None or _is_secret(field) else f"={value!r}"
        lines.append(f"{variable}{shown}: {error['msg']}")
    return "; ".join(lines)


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in repr(field.annotation)


def configuration_table() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = extra.get("default_text")
        if default is None:
            value = field.default
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Path):
                value = str(value)
            default = f"`{value}`"
        rows.append(f"| `{env_name(name, field)}` | {field.description} | {default} |")
    return "\n".join(rows)


@contextlib.contextmanager
def temporary_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring what was there before (Dagster instances and
    child processes started in the block read the environment)."""
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


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(configuration_table() + "\n")
