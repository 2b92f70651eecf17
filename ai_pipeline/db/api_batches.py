"""Batches uploaded through the HTTP API: who owns them, what the upload refused, what they look like
now (counts, times), their results and errors rows, cancels, and the Idempotency-Key of an upload."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from ai_pipeline.db.cancels import CancelSummary, cancel_requests
from ai_pipeline.db.lifecycle import OPEN_STATUSES, RequestStatus, sql_in

_OPEN = sql_in(OPEN_STATUSES)


def create_batch(conn: Connection, batch_id: str, application_id: str, webhook_url: str | None) -> None:
    """The batch row of an upload, owned by the application, before its rows are loaded."""
    conn.execute(
        text(
            "INSERT INTO batches (id, kind, source, application_id, webhook_url)"
            " VALUES (:id, 'bulk', 'api', :app, :webhook_url) ON CONFLICT (id) DO NOTHING"
        ),
        {"id": batch_id, "app": application_id, "webhook_url": webhook_url},
    )


def drop_empty_batch(conn: Connection, batch_id: str) -> None:
    """Forget a batch whose upload was refused as a whole (it holds no request)."""
    conn.execute(
        text(
            "DELETE FROM batches WHERE id = :id AND NOT EXISTS"
            " (SELECT 1 FROM generation_requests WHERE batch_id = :id)"
        ),
        {"id": batch_id},
    )


def record_refusals(conn: Connection, batch_id: str, refusals: Iterable[tuple[int, str, str]]) -> int:
    """Keep the rows an upload refused (row number, reason code, message): the batch's errors file."""
    rows = [
        {"batch": batch_id, "row": row, "code": code, "message": message} for row, code, message in refusals
    ]
    if rows:
        conn.execute(
            text(
                "INSERT INTO batch_refusals (batch_id, row_number, reason_code, message)"
                " VALUES (:batch, :row, :code, :message) ON CONFLICT DO NOTHING"
            ),
            rows,
        )
    return len(rows)


def complete_if_done(conn: Connection, batch_id: str) -> None:
    """A batch with a webhook that has nothing open (every row refused, or already present and ended)
    gets its completion event now: no status change will write it (see migration 0022)."""
    conn.execute(
        text(
            f"""
            INSERT INTO webhook_outbox (event_id, event_type, application_id, url, batch_id)
            SELECT 'batch_' || b.id || '_' || (SELECT count(*) FROM generation_requests r
                                               WHERE r.batch_id = b.id),
                   'batch.completed', b.application_id, b.webhook_url, b.id
            FROM batches b
            WHERE b.id = :id AND b.webhook_url IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM generation_requests r WHERE r.batch_id = b.id AND r.{_OPEN})
            ON CONFLICT (event_id) DO NOTHING
            """
        ),
        {"id": batch_id},
    )


@dataclass(frozen=True)
class BatchRecord:
    """A batch's own row plus what its requests say about it."""

    id: str
    application_id: str | None
    webhook_url: str | None
    source: str | None
    rows_loaded: int
    rows_refused: int
    created_at: datetime
    cancel_requested_at: datetime | None
    started_at: datetime | None
    last_completed_at: datetime | None
    counts: dict[str, int]


_BATCH = text(
    """
    SELECT b.id, b.application_id, b.webhook_url, b.source, b.rows_loaded, b.rows_refused, b.created_at,
           b.cancel_requested_at,
           (SELECT min(r.started_at) FROM generation_requests r WHERE r.batch_id = b.id) AS started_at,
           (SELECT max(r.completed_at) FROM generation_requests r WHERE r.batch_id = b.id)
               AS last_completed_at,
           (SELECT COALESCE(jsonb_object_agg(s.status, s.n), '{}'::jsonb) FROM (
                SELECT r.status, count(*) AS n FROM generation_requests r WHERE r.batch_id = b.id
                GROUP BY r.status) s) AS counts
    FROM batches b WHERE b.id = :id AND (CAST(:app AS text) IS NULL OR b.application_id = :app)
    """
)


def _record(row: Any) -> BatchRecord:
    values = dict(row._mapping)
    values["counts"] = {status: int(n) for status, n in (values["counts"] or {}).items()}
    return BatchRecord(**values)


def batch(conn: Connection, batch_id: str, application_id: str | None) -> BatchRecord | None:
    """The batch, if the application owns it (`application_id=None`: whoever does)."""
    row = conn.execute(_BATCH, {"id": batch_id, "app": application_id}).first()
    return None if row is None else _record(row)


def batch_ids(conn: Connection, application_id: str, *, after: str | None, limit: int) -> list[str]:
    """The application's batches by id (the ids it was given sort by upload time), after a cursor."""
    return list(
        conn.execute(
            text(
                "SELECT id FROM batches WHERE application_id = :app"
                " AND (CAST(:after AS text) IS NULL OR id < :after) ORDER BY id DESC LIMIT :limit"
            ),
            {"app": application_id, "after": after, "limit": limit},
        ).scalars()
    )


def cancel_batch(conn: Connection, batch_id: str) -> CancelSummary:
    """Note that the batch was canceled and cancel its open requests (`cancels.cancel_requests`)."""
    conn.execute(
        text(
            "UPDATE batches SET cancel_requested_at = COALESCE(cancel_requested_at, now()),"
            " updated_at = now()"
            " WHERE id = :id"
        ),
        {"id": batch_id},
    )
    return cancel_requests(conn, batch_id=batch_id)


_RESULTS = text(
    "SELECT id, source_row, external_id, user_id, model, status, outputs, output_uris, error,"
    " credits_charged, retry_of, completed_at FROM generation_requests WHERE batch_id = :batch ORDER BY id"
)
_FAILURES = text(
    "SELECT id, source_row, external_id, status, error, retry_of FROM generation_requests"
    f" WHERE batch_id = :batch AND status IN ('{RequestStatus.FAILED}', '{RequestStatus.REJECTED}',"
    f" '{RequestStatus.CANCELED}') ORDER BY id"
)
_REFUSALS = text(
    "SELECT row_number, reason_code, message FROM batch_refusals WHERE batch_id = :batch ORDER BY row_number"
)
_STREAM_ROWS = 1000


def stream_results(engine: Engine, batch_id: str) -> Iterator[dict[str, Any]]:
    """Every request of the batch, in id order, read through a server-side cursor (memory stays flat)."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(
            _RESULTS, {"batch": batch_id}
        )
        for row in result:
            yield dict(row._mapping)


def stream_errors(engine: Engine, batch_id: str) -> Iterator[dict[str, Any]]:
    """What went wrong in the batch: rows the upload refused, then requests that did not succeed."""
    with engine.connect() as conn:
        options = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS)
        for row in options.execute(_REFUSALS, {"batch": batch_id}):
            yield {"kind": "refused_row", **row._mapping}
        for row in options.execute(_FAILURES, {"batch": batch_id}):
            yield {"kind": "request", **row._mapping}


# --- Idempotency-Key of an upload -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSubmission:
    """An upload's key: the batch it made, and its first answer once it has one."""

    fingerprint: str
    batch_id: str
    status_code: int | None
    response: dict[str, Any] | None


def claim_batch_key(
    conn: Connection, application_id: str, key: str, fingerprint: str, batch_id: str
) -> BatchSubmission | None:
    """Claim the key for a new batch `batch_id`; None when claimed now, else what it already names.
    The primary key is the race guard: of two uploads with one key, the second finds the first's."""
    inserted = conn.execute(
        text(
            "INSERT INTO api_batch_submissions (application_id, idempotency_key, fingerprint, batch_id)"
            " VALUES (:app, :key, :fingerprint, :batch) ON CONFLICT DO NOTHING RETURNING batch_id"
        ),
        {"app": application_id, "key": key, "fingerprint": fingerprint, "batch": batch_id},
    ).first()
    if inserted is not None:
        return None
    row = conn.execute(
        text(
            "SELECT fingerprint, batch_id, status_code, response FROM api_batch_submissions"
            " WHERE application_id = :app AND idempotency_key = :key"
        ),
        {"app": application_id, "key": key},
    ).one()
    return BatchSubmission(**row._mapping)


def record_batch_answer(
    conn: Connection, application_id: str, key: str, status_code: int, response: dict[str, Any]
) -> BatchSubmission:
    """Keep the upload's answer (the first one kept wins) and return the one kept."""
    conn.execute(
        text(
            "UPDATE api_batch_submissions SET status_code = :code, response = CAST(:response AS jsonb)"
            " WHERE application_id = :app AND idempotency_key = :key AND response IS NULL"
        ),
        {"app": application_id, "key": key, "code": status_code, "response": json.dumps(response)},
    )
    row = conn.execute(
        text(
            "SELECT fingerprint, batch_id, status_code, response FROM api_batch_submissions"
            " WHERE application_id = :app AND idempotency_key = :key"
        ),
        {"app": application_id, "key": key},
    ).one()
    return BatchSubmission(**row._mapping)


def forget_batch_key(conn: Connection, application_id: str, key: str) -> None:
    """Release a key whose upload was refused as a whole (nothing was recorded under it)."""
    conn.execute(
        text(
            "DELETE FROM api_batch_submissions WHERE application_id = :app AND idempotency_key = :key"
            " AND response IS NULL"
        ),
        {"app": application_id, "key": key},
    )
