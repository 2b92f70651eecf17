"""Requests submitted through the HTTP API: accept one (paid at once, or nothing recorded), read one
back for the application that submitted it, list them.

An application sees its own requests: the ones it submitted, and those of the batches it uploaded;
any other id reads as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.transactions import one_statement


@dataclass(frozen=True)
class Submission:
    """A request as the API received it, validated, with its price from the catalogue."""

    application_id: str
    idempotency_key: str | None
    external_id: str | None
    user_id: str
    model: str
    input_json: str  # canonical JSON of the input object
    priority: int
    webhook_url: str | None
    credit_type: str
    price: int


@dataclass(frozen=True)
class Accepted:
    """A new request, debited."""

    request_id: int
    created_at: datetime


@dataclass(frozen=True)
class AlreadySubmitted:
    """The idempotency key (or external id) names a request that exists: the caller compares."""

    request_id: int


@dataclass(frozen=True)
class ShortOfCredits:
    """The balance does not cover the price: nothing was recorded."""

    balance: int
    price: int


_SUBMIT = text(
    "SELECT outcome, request_id, created_at, balance FROM submit_generation("
    ":app, :key, :external_id, :user_id, :model, CAST(:input AS jsonb), :priority, :webhook_url,"
    " :credit_type, :price)"
)


@one_statement
def submit_generation(conn: Connection, s: Submission) -> Accepted | AlreadySubmitted | ShortOfCredits:
    """Insert the pending request and debit it, in one statement (the database's `submit_generation`,
    migration 0021); a short balance records nothing, a repeated key or external id inserts nothing."""
    row = conn.execute(
        _SUBMIT,
        {
            "app": s.application_id,
            "key": s.idempotency_key,
            "external_id": s.external_id,
            "user_id": s.user_id,
            "model": s.model,
            "input": s.input_json,
            "priority": s.priority,
            "webhook_url": s.webhook_url,
            "credit_type": s.credit_type,
            "price": s.price,
        },
    ).one()
    if row.outcome == "created":
        return Accepted(row.request_id, row.created_at)
    if row.outcome == "insufficient":
        return ShortOfCredits(balance=int(row.balance), price=s.price)
    return AlreadySubmitted(row.request_id)


_GENERATION_COLUMNS = (
    "r.id, r.external_id, r.batch_id, r.user_id, r.model, r.input, r.status, r.priority, r.error,"
    " r.output_uris, r.outputs, r.credits_charged, r.created_at, r.started_at, r.completed_at,"
    " r.cancel_requested_at, r.retry_of, r.application_id, r.webhook_url, r.idempotency_key,"
    " (SELECT c.id FROM generation_requests c WHERE c.retry_of = r.id) AS retried_as,"
    " (SELECT -l.delta FROM credit_ledger l WHERE l.request_id = r.id AND l.kind = 'debit') AS debited"
)
# Whose requests an application may see: its own submissions and those of its batches.
_VISIBLE_TO = (
    "(r.application_id = :app OR r.batch_id IN (SELECT b.id FROM batches b WHERE b.application_id = :app))"
)


def generation(conn: Connection, application_id: str, request_id: int) -> dict[str, Any] | None:
    """One request the application may see, or None."""
    row = conn.execute(
        text(f"SELECT {_GENERATION_COLUMNS} FROM generation_requests r WHERE r.id = :id AND {_VISIBLE_TO}"),
        {"id": request_id, "app": application_id},
    ).first()
    return None if row is None else dict(row._mapping)


def generation_by_id(conn: Connection, request_id: int) -> dict[str, Any] | None:
    """One request, whoever submitted it (the webhook worker builds event bodies from it)."""
    row = conn.execute(
        text(f"SELECT {_GENERATION_COLUMNS} FROM generation_requests r WHERE r.id = :id"), {"id": request_id}
    ).first()
    return None if row is None else dict(row._mapping)


def generations(
    conn: Connection, application_id: str, *, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """The application's own submissions, newest first, those older than `before_id` (a cursor)."""
    rows = conn.execute(
        text(
            f"SELECT {_GENERATION_COLUMNS} FROM generation_requests r WHERE r.application_id = :app"
            " AND (CAST(:before AS bigint) IS NULL OR r.id < :before) ORDER BY r.id DESC LIMIT :limit"
        ),
        {"app": application_id, "before": before_id, "limit": limit},
    )
    return [dict(row._mapping) for row in rows]


def visible_to(conn: Connection, application_id: str, request_id: int) -> bool:
    """Whether the application may see (and cancel) the request."""
    return (
        conn.execute(
            text(f"SELECT 1 FROM generation_requests r WHERE r.id = :id AND {_VISIBLE_TO}"),
            {"id": request_id, "app": application_id},
        ).first()
        is not None
    )
