"""Claims and leases: a run takes due requests of its batch, keeps its leases, and gives back what it
holds when it stops.

A claim is `pending → processing` under a lease (`lease_owner`, `lease_expires_at`); other runs skip the
rows it holds (`FOR UPDATE SKIP LOCKED`). A request handed back keeps its debit and its prediction, so
whoever claims it next resumes it. Money never moves here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.flight import drop_holds
from ai_pipeline.db.lifecycle import CLAIM, HAND_BACK, RequestStatus

_CLAIMED_COLUMNS = (
    "id",
    "external_id",
    "batch_id",
    "user_id",
    "model",
    "input",
    "attempts",
    "prediction_id",
    "prediction_intent_at",
    "cancel_requested_at",
    "credits_charged",
    "created_at",
)


@dataclass(frozen=True)
class ClaimedRequest:
    """A request a run holds under its lease, with what it needs to resume."""

    id: int
    external_id: str | None
    batch_id: str
    user_id: str
    model: str
    input: dict[str, Any]
    attempts: int
    prediction_id: str | None
    prediction_intent_at: datetime | None
    cancel_requested_at: datetime | None
    credits_charged: int
    created_at: datetime


_CLAIM = text(
    f"""
    UPDATE generation_requests r
    SET status = '{CLAIM.target}', lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease),
        attempts = r.attempts + 1, started_at = COALESCE(r.started_at, now()), updated_at = now()
    FROM (
        SELECT id FROM generation_requests
        WHERE batch_id = :batch AND {CLAIM.where()} AND available_at <= now()
        ORDER BY priority DESC, available_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE r.id = due.id
    RETURNING {", ".join("r." + column for column in _CLAIMED_COLUMNS)}
    """
)


def claim_requests(
    conn: Connection, batch_id: str, owner: str, limit: int, lease_seconds: int
) -> list[ClaimedRequest]:
    """Take up to `limit` due pending requests of a batch under a lease. Rows other runs hold are skipped."""
    rows = conn.execute(_CLAIM, {"owner": owner, "lease": lease_seconds, "batch": batch_id, "limit": limit})
    return sorted((ClaimedRequest(**row._mapping) for row in rows), key=lambda r: r.id)


_HELD = f"status = '{RequestStatus.PROCESSING}'"


def renew_leases(conn: Connection, owner: str, request_ids: list[int], lease_seconds: int) -> set[int]:
    """Extend the leases `owner` still holds; returns the ids it still holds.

    Rows are locked in id order, and a task's own transaction locks its request row before any account
    row (see `settling.charge_and_mark_intent`), so a renewal never deadlocks with the run's own work.
    """
    if not request_ids:
        return set()
    rows = conn.execute(
        text(
            f"""
            UPDATE generation_requests r SET lease_expires_at = now() + make_interval(secs => :lease)
            FROM (
                SELECT id FROM generation_requests
                WHERE id = ANY(:ids) AND {_HELD} AND lease_owner = :owner
                ORDER BY id FOR UPDATE
            ) held
            WHERE r.id = held.id
            RETURNING r.id
            """
        ),
        {"lease": lease_seconds, "ids": request_ids, "owner": owner},
    )
    return {row.id for row in rows}


def release_many(conn: Connection, request_ids: list[int], owner: str) -> int:
    """Give back requests `owner` claimed but never started (due again at once, attempt not counted)."""
    return conn.execute(
        text(
            f"UPDATE generation_requests SET status = '{HAND_BACK.target}', lease_owner = NULL,"
            " lease_expires_at = NULL, attempts = attempts - 1, updated_at = now()"
            f" WHERE id = ANY(:ids) AND {HAND_BACK.where()} AND lease_owner = :owner"
        ),
        {"ids": request_ids, "owner": owner},
    ).rowcount


def release_run(conn: Connection, run_id: str, error: str) -> int:
    """Give back everything a run (any attempt of it) still holds: its requests (returns how many) and
    its slots for predictions in flight.

    Used when a run failed, was canceled or died, and by a retried step for its earlier attempt. Each
    request keeps its place in the queue (`available_at` stays as it was, due since it was claimed), so
    the next claim resumes it first instead of after every request loaded behind it: a resume that waits
    too long may no longer find the prediction a crash left unrecorded.
    """
    drop_holds(conn, run_id)
    return conn.execute(
        text(
            f"UPDATE generation_requests SET status = '{HAND_BACK.target}', error = :error,"
            " lease_owner = NULL, lease_expires_at = NULL, updated_at = now()"
            f" WHERE {HAND_BACK.where()} AND (lease_owner = :run_id OR lease_owner LIKE :prefix)"
        ),
        {"run_id": run_id, "prefix": run_id.replace("%", r"\%").replace("_", r"\_") + ":%", "error": error},
    ).rowcount


def release_expired_leases(conn: Connection, batch_id: str | None = None, limit: int = 5000) -> int:
    """Return requests whose run stopped renewing its lease to pending (they resume where they were, first
    in the queue: see `release_run`)."""
    return conn.execute(
        text(
            f"""
            UPDATE generation_requests r
            SET status = '{HAND_BACK.target}', lease_owner = NULL, lease_expires_at = NULL,
                error = 'lease expired: the run holding it stopped', updated_at = now()
            FROM (
                SELECT id FROM generation_requests
                WHERE {HAND_BACK.where()} AND lease_expires_at < now()
                  AND (CAST(:batch AS text) IS NULL OR batch_id = :batch)
                LIMIT :limit FOR UPDATE SKIP LOCKED
            ) expired
            WHERE r.id = expired.id
            """
        ),
        {"batch": batch_id, "limit": limit},
    ).rowcount
