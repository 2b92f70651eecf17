"""The webhook outbox (migration 0022): events the database wrote with their status change, claimed by a
delivery worker under a lease, then delivered, rescheduled with backoff, or given up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.transactions import one_statement


@dataclass(frozen=True)
class OutboxEvent:
    """An event to deliver, as claimed."""

    id: int
    event_id: str
    event_type: str
    application_id: str | None
    url: str
    request_id: int | None
    batch_id: str | None
    payload: dict[str, Any] | None
    created_at: datetime
    attempts: int


_CLAIM = text(
    """
    UPDATE webhook_outbox o
    SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease),
        attempts = o.attempts + 1
    FROM (
        SELECT id FROM webhook_outbox
        WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
          AND (lease_expires_at IS NULL OR lease_expires_at < now())
        ORDER BY next_attempt_at LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE o.id = due.id
    RETURNING o.id, o.event_id, o.event_type, o.application_id, o.url, o.request_id, o.batch_id,
              o.payload, o.created_at, o.attempts
    """
)


@one_statement
def claim_due_events(conn: Connection, owner: str, limit: int, lease_seconds: float) -> list[OutboxEvent]:
    """Take up to `limit` due events under a lease: a worker that dies holding them leaves them to the
    next claim once the lease runs out (so an event is delivered at least once, never lost)."""
    rows = conn.execute(_CLAIM, {"owner": owner, "lease": lease_seconds, "limit": limit})
    return sorted((OutboxEvent(**row._mapping) for row in rows), key=lambda e: e.id)


@one_statement
def keep_payload(conn: Connection, event_id: int, owner: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Store the event's body on its first delivery (every retry sends the same bytes); returns the body
    kept (an earlier attempt's, if it stored one first)."""
    row = conn.execute(
        text(
            "UPDATE webhook_outbox SET payload = COALESCE(payload, CAST(:payload AS jsonb))"
            " WHERE id = :id AND lease_owner = :owner RETURNING payload"
        ),
        {"id": event_id, "owner": owner, "payload": json.dumps(payload)},
    ).first()
    return payload if row is None else dict(row.payload)


@one_statement
def mark_delivered(conn: Connection, event_id: int, owner: str, status: int) -> bool:
    """The receiver acknowledged (2xx)."""
    return (
        conn.execute(
            text(
                "UPDATE webhook_outbox SET delivered_at = now(), last_status = :status, last_error = NULL,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE id = :id AND lease_owner = :owner"
            ),
            {"id": event_id, "owner": owner, "status": status},
        ).rowcount
        == 1
    )


@one_statement
def reschedule(
    conn: Connection, event_id: int, owner: str, delay_seconds: float, status: int | None, error: str
) -> bool:
    """Not acknowledged: try again after `delay_seconds`."""
    return (
        conn.execute(
            text(
                "UPDATE webhook_outbox SET next_attempt_at = now() + make_interval(secs => :delay),"
                " last_status = :status, last_error = :error, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = :id AND lease_owner = :owner"
            ),
            {"id": event_id, "owner": owner, "delay": delay_seconds, "status": status, "error": error[:500]},
        ).rowcount
        == 1
    )


@one_statement
def give_up(conn: Connection, event_id: int, owner: str, status: int | None, error: str) -> bool:
    """Never to be delivered: the address is not allowed, or retries ran out. Kept, with the reason."""
    return (
        conn.execute(
            text(
                "UPDATE webhook_outbox SET gave_up_at = now(), last_status = :status, last_error = :error,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE id = :id AND lease_owner = :owner"
            ),
            {"id": event_id, "owner": owner, "status": status, "error": error[:500]},
        ).rowcount
        == 1
    )
