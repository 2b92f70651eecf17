"""Batches: the one batch-name rule, finding batches with due work, the day's rolling batch for requests
written one at a time, and a batch's rows for its manifest."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.lifecycle import REJECT, RequestStatus

# Batch names become Dagster partition keys and S3 path parts. The loader checks names with this, the
# sensor refuses rows a writer gave another name, and the `batches.id` CHECK (migration 0001) says the
# same (a test compares).
BATCH_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
BATCH_NAME_PATTERN = re.compile(BATCH_NAME)
BATCH_NAME_RULE = "letters, digits, dot, dash, underscore (1-100, starting with a letter or digit)"

_PENDING = f"status = '{RequestStatus.PENDING}'"


def rolling_batch_name(now: datetime | None = None) -> str:
    """The batch that collects requests an application wrote one at a time (one per UTC day)."""
    return f"live-{(now or datetime.now(UTC)):%Y%m%d}"


def reject_invalid_batch_names(conn: Connection) -> int:
    """Refuse pending rows whose writer gave a batch name that cannot be a partition key or S3 path."""
    return conn.execute(
        text(
            f"UPDATE generation_requests SET status = '{REJECT.target}', retryable = false,"
            " completed_at = now(), updated_at = now(), error = :error"
            f" WHERE {_PENDING} AND batch_id IS NOT NULL AND batch_id !~ :pattern"
        ),
        {"pattern": f"^{BATCH_NAME}$", "error": f"invalid batch_id: use {BATCH_NAME_RULE}"},
    ).rowcount


def assign_rolling_batch(conn: Connection, batch_id: str) -> int:
    """Put pending requests written without a batch (one at a time by an application) into `batch_id`."""
    moved = conn.execute(
        text(
            "UPDATE generation_requests SET batch_id = :batch, updated_at = now()"
            f" WHERE {_PENDING} AND batch_id IS NULL"
        ),
        {"batch": batch_id},
    ).rowcount
    if moved:
        conn.execute(
            text(
                "INSERT INTO batches (id, kind, source) VALUES (:batch, 'rolling', 'application')"
                " ON CONFLICT (id) DO NOTHING"
            ),
            {"batch": batch_id},
        )
    return moved


_DUE_BATCHES = text(
    f"""
    WITH RECURSIVE b(batch_id) AS (
        (SELECT batch_id FROM generation_requests
         WHERE {_PENDING} AND batch_id IS NOT NULL ORDER BY batch_id LIMIT 1)
        UNION ALL
        SELECT (SELECT r.batch_id FROM generation_requests r
                WHERE r.{_PENDING} AND r.batch_id > b.batch_id
                ORDER BY r.batch_id LIMIT 1)
        FROM b WHERE b.batch_id IS NOT NULL
    )
    SELECT batch_id FROM b
    WHERE batch_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM generation_requests r
        WHERE r.{_PENDING} AND r.batch_id = b.batch_id AND r.available_at <= now())
    """
)


def due_batches(conn: Connection) -> list[str]:
    """Batches with pending work that is due now, found by skipping through the pending index."""
    return list(conn.execute(_DUE_BATCHES).scalars())


def ensure_batches(conn: Connection, batch_ids: list[str]) -> None:
    """Make sure a `batches` row exists for batches that writers named directly."""
    if batch_ids:
        conn.execute(
            text(
                "INSERT INTO batches (id, kind, source) SELECT unnest(CAST(:ids AS text[])), 'bulk', 'writer'"
                " ON CONFLICT (id) DO NOTHING"
            ),
            {"ids": batch_ids},
        )


_MANIFEST_ROWS = text(
    "SELECT id AS request_id, external_id, user_id, model, status, output_uris, error, credits_charged,"
    " predict_time, completed_at FROM generation_requests WHERE batch_id = :batch ORDER BY id"
)


def manifest_rows(conn: Connection, batch_id: str) -> list[dict[str, Any]]:
    """Every request of the batch, as the manifest lists it."""
    return [dict(row._mapping) for row in conn.execute(_MANIFEST_ROWS, {"batch": batch_id})]
