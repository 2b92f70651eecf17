"""Rows as the API's objects (the shapes of `schemas.py`), JSON-ready."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ai_pipeline.db.api_batches import BatchRecord
from ai_pipeline.db.lifecycle import OPEN_STATUSES, RequestStatus
from ai_pipeline.db.summaries import BatchSummary

Presign = Callable[[str], tuple[str, datetime]]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _outputs(row: dict[str, Any], presign: Presign | None) -> tuple[list[dict[str, Any]], str | None]:
    stored = row.get("outputs") or [{"uri": uri} for uri in row.get("output_uris") or []]
    outputs, expires = [], None
    for output in stored:
        item: dict[str, Any] = {
            "uri": output["uri"],
            "url": None,
            "content_type": output.get("content_type"),
            "size": output.get("size"),
            "sha256": output.get("sha256"),
        }
        if presign is not None:
            url, expires_at = presign(output["uri"])
            item["url"], expires = url, iso(expires_at)
        outputs.append(item)
    return outputs, expires


def generation(row: dict[str, Any], presign: Presign | None = None) -> dict[str, Any]:
    """A request as it is now; outputs with presigned URLs when `presign` is given."""
    outputs, expires = _outputs(row, presign)
    return {
        "id": row["id"],
        "object": "generation",
        "status": row["status"],
        "user_id": row["user_id"],
        "model": row["model"],
        "input": row["input"],
        "external_id": row["external_id"],
        "priority": row["priority"],
        "batch_id": row["batch_id"],
        "error": row["error"],
        "credits_charged": row["credits_charged"],
        "outputs": outputs,
        "urls_expire_at": expires,
        "cancel_requested": row["cancel_requested_at"] is not None,
        "retry_of": row["retry_of"],
        "retried_as": row["retried_as"],
        "webhook_url": row["webhook_url"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
    }


def accepted(row: dict[str, Any]) -> dict[str, Any]:
    """The answer to the POST that made the request, rebuilt from what never changes (its columns as
    submitted and its debit), so a retried POST gets the very same body however far it has come."""
    return {
        **generation(row),
        "status": RequestStatus.PENDING.value,
        "batch_id": None,
        "error": None,
        "credits_charged": row["debited"] if row["debited"] is not None else row["credits_charged"],
        "outputs": [],
        "urls_expire_at": None,
        "cancel_requested": False,
        "retried_as": None,
        "started_at": None,
        "completed_at": None,
    }


def batch_status(record: BatchRecord) -> str:
    open_ = sum(record.counts.get(status, 0) for status in OPEN_STATUSES)
    if open_:
        if record.cancel_requested_at is not None:
            return "canceling"
        return "in_progress" if record.started_at is not None else "queued"
    return "canceled" if record.cancel_requested_at is not None else "completed"


def batch(
    record: BatchRecord, summary: BatchSummary | None, upload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A batch: status, counts per state, credits, cost, times, and where its results are."""
    counts = {status.value: record.counts.get(status.value, 0) for status in RequestStatus}
    status = batch_status(record)
    done = status in ("completed", "canceled")
    return {
        "id": record.id,
        "object": "batch",
        "status": status,
        "request_counts": {"total": sum(counts.values()), **counts},
        "upload": {
            "rows_inserted": record.rows_loaded,
            "rows_refused": record.rows_refused,
            **(upload or {}),
        },
        "credits": {
            "debited": summary.credits_debited if summary else 0,
            "refunded": summary.credits_refunded if summary else 0,
            "charged": summary.credits_charged if summary else 0,
        },
        "cost_usd": summary.estimated_cost_usd if summary else 0.0,
        "webhook_url": record.webhook_url,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "completed_at": iso(record.last_completed_at or record.created_at) if done else None,
        "cancel_requested_at": iso(record.cancel_requested_at),
        "results_url": f"/v1/batches/{record.id}/results",
        "errors_url": f"/v1/batches/{record.id}/errors",
    }


def result_line(row: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch's results file."""
    outputs, _ = _outputs(row, None)
    return {
        "id": row["id"],
        "row": row["source_row"],
        "custom_id": row["external_id"],
        "user_id": row["user_id"],
        "model": row["model"],
        "status": row["status"],
        "outputs": outputs,
        "error": row["error"],
        "credits_charged": row["credits_charged"],
        "retry_of": row["retry_of"],
        "completed_at": iso(row["completed_at"]),
    }


def error_line(row: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch's errors file: a refused row, or a request that did not succeed."""
    if row["kind"] == "refused_row":
        return {"row": row["row_number"], "code": row["reason_code"], "error": row["message"], "id": None}
    return {
        "row": row["source_row"],
        "code": row["status"],
        "error": row["error"],
        "id": row["id"],
        "custom_id": row["external_id"],
        "retry_of": row["retry_of"],
    }
