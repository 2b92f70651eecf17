"""The API's request and response shapes: pydantic models, from which FastAPI publishes the OpenAPI
document (`GET /openapi.json`). Routes build their answers as plain dicts in `views.py` in exactly these
shapes (the schemathesis test holds them to it), which saves re-validating every answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pending", "processing", "succeeded", "failed", "rejected", "canceled"]
BatchStatus = Literal["queued", "in_progress", "canceling", "completed", "canceled"]


class GenerationCreate(BaseModel):
    """A generation to run. Checked by the same rules as a loaded row (`loading/validation.py`)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(description="Your user, who pays in credits", examples=["user-42"])
    model: str = Field(
        description="A model of the catalogue (`ai-pipeline models list`)", examples=["emulator/image"]
    )
    input: dict[str, Any] | None = Field(
        default=None, description="The model's input (give this or `prompt`)"
    )
    prompt: str | None = Field(default=None, description='Short for `input: {"prompt": ...}`')
    external_id: str | None = Field(
        default=None, description="Your id for it; unique: a retried POST with it returns the first answer"
    )
    priority: int | None = Field(default=None, description="Higher runs first within its batch")
    webhook_url: str | None = Field(default=None, description="Where the signed completion event is POSTed")


class Output(BaseModel):
    uri: str = Field(description="Where it is stored (`s3://bucket/key`)")
    url: str | None = Field(default=None, description="A presigned URL a browser can open, for a short while")
    content_type: str | None = None
    size: int | None = None
    sha256: str | None = None


class Generation(BaseModel):
    id: int
    object: Literal["generation"] = "generation"
    status: Status
    user_id: str
    model: str
    input: dict[str, Any]
    external_id: str | None
    priority: int
    batch_id: str | None
    error: str | None
    credits_charged: int = Field(description="Credits kept: debited at submission, 0 once refunded")
    outputs: list[Output]
    urls_expire_at: datetime | None
    cancel_requested: bool
    retry_of: int | None
    retried_as: int | None = Field(description="The request that retries this failure, if any")
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class GenerationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Generation]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `after` for the next page")


class BatchCreate(BaseModel):
    """A batch as a JSON list; each row has the loader's columns (user_id, model, prompt or input,
    external_id, priority) and is checked and refused one by one, like a row of a file."""

    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(min_length=1)
    webhook_url: str | None = None


class RequestCounts(BaseModel):
    total: int
    pending: int
    processing: int
    succeeded: int
    failed: int
    rejected: int
    canceled: int


class UploadReport(BaseModel):
    """What loading the upload did (the loader's report)."""

    rows_inserted: int
    rows_refused: int
    rows_read: int | None = None
    rows_already_present: int | None = None
    refused_by_reason: dict[str, int] | None = None
    warnings: list[str] | None = None


class Credits(BaseModel):
    debited: int
    refunded: int
    charged: int


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: BatchStatus
    request_counts: RequestCounts
    upload: UploadReport
    credits: Credits
    cost_usd: float
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    cancel_requested_at: datetime | None
    results_url: str = Field(description="JSONL: every request, with its status, outputs and error")
    errors_url: str = Field(description="JSONL: rows the upload refused, requests that did not succeed")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    has_more: bool
    next_cursor: str | None


class FieldError(BaseModel):
    field: str | None
    code: str = Field(description="A stable code (the loader's reason codes for request rules)")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
    balance: int | None = Field(default=None, description="402: the user's balance")
    price: int | None = Field(default=None, description="402: what the generation costs")
    limit: int | None = Field(default=None, description="413: the size limit in bytes")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route may give."""
    described = {401: "Missing, unknown or revoked API key", 429: "Rate limited (see Retry-After)"}
    described.update(
        {
            400: "Malformed body (a multipart form that cannot be parsed)",
            402: "Insufficient credits: nothing was recorded",
            404: "No such object for this application",
            409: "The external_id names another request",
            413: "Body too large",
            415: "Unsupported media type",
            422: "Invalid request: `errors` names each field and rule",
        }
    )
    return {
        status: {
            "model": ProblemDetails,
            "description": described.get(status, "Error"),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
            },
        }
        for status in sorted({401, 429, *statuses})
    }
