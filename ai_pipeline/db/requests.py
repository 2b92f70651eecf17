"""Every move of a request through its lifecycle, each one a compare-and-set on the request's row.

A run only changes a request it holds: every update below checks `status = 'processing'` and
`lease_owner = <this run>`. A run that lost its lease (it was too slow, or declared dead and its work
released) therefore changes nothing, and whoever holds the request now carries on. Money moves in the
same transaction as the status it belongs to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, TextClause, text

from ai_pipeline.credits.ledger import (
    Charge,
    InsufficientCredits,
    LedgerEntry,
    debit_outcome,
    debited_entry,
    refund,
)
from ai_pipeline.db.statuses import IllegalTransition, RequestStatus

F = TypeVar("F", bound=Callable[..., Any])


def one_statement(fn: F) -> F:
    """Mark a transition that sends exactly one SQL statement, so it is atomic on its own and may run
    outside a transaction (`TransactionRunner.statement`, which saves a run the BEGIN and COMMIT round
    trips on its hottest writes). A test holds every marked transition to it."""
    fn.one_statement = True  # type: ignore[attr-defined]
    return fn


_CLAIMED_COLUMNS = (
    "id, external_id, batch_id, user_id, model, input, attempts, prediction_id, prediction_intent_at,"
    " cancel_requested_at, credits_charged, created_at"
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


def claim_requests(
    conn: Connection, batch_id: str, owner: str, limit: int, lease_seconds: int
) -> list[ClaimedRequest]:
    """Take up to `limit` due pending requests of a batch under a lease. Rows other runs hold are skipped."""
    rows = conn.execute(
        text(
            f"""
            UPDATE generation_requests r
            SET status = 'processing', lease_owner = :owner,
                lease_expires_at = now() + make_interval(secs => :lease),
                attempts = r.attempts + 1, started_at = COALESCE(r.started_at, now()), updated_at = now()
            FROM (
                SELECT id FROM generation_requests
                WHERE batch_id = :batch AND status = 'pending' AND available_at <= now()
                ORDER BY priority DESC, available_at, id
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ) due
            WHERE r.id = due.id
            RETURNING {", ".join("r." + c.strip() for c in _CLAIMED_COLUMNS.split(","))}
            """
        ),
        {"owner": owner, "lease": lease_seconds, "batch": batch_id, "limit": limit},
    )
    return sorted((ClaimedRequest(**row._mapping) for row in rows), key=lambda r: r.id)


def renew_leases(conn: Connection, owner: str, request_ids: list[int], lease_seconds: int) -> set[int]:
    """Extend the leases `owner` still holds; returns the ids it still holds.

    Rows are locked in id order, and a task's own transaction locks its request row before any account
    row (see `charge_and_mark_intent`), so a renewal never deadlocks with the run's own work.
    """
    if not request_ids:
        return set()
    rows = conn.execute(
        text(
            """
            UPDATE generation_requests r SET lease_expires_at = now() + make_interval(secs => :lease)
            FROM (
                SELECT id FROM generation_requests
                WHERE id = ANY(:ids) AND status = 'processing' AND lease_owner = :owner
                ORDER BY id FOR UPDATE
            ) held
            WHERE r.id = held.id
            RETURNING r.id
            """
        ),
        {"lease": lease_seconds, "ids": request_ids, "owner": owner},
    )
    return {row.id for row in rows}


@one_statement
def extend_lease(conn: Connection, request_id: int, owner: str, lease_seconds: int) -> bool:
    """Whether `owner` still holds the request; if so its lease now runs `lease_seconds` from now.

    Called right before a create goes out: a run that lost the request in the meantime must not create
    a prediction for it, since whoever holds it now may be creating one.
    """
    return _set(
        conn,
        request_id,
        owner,
        "lease_expires_at = now() + make_interval(secs => :lease)",
        lease=lease_seconds,
    )


class NotHeld(Exception):
    """The caller no longer holds the request (its lease ran out or was released); nothing was written."""


@one_statement
def charge_and_mark_intent(
    conn: Connection, request_id: int, owner: str, charge: Charge, lease_seconds: int
) -> LedgerEntry | InsufficientCredits:
    """Debit the request (once), record that a prediction is about to be created, and extend the lease.

    The intent is written before the create call, so a crash between the create and storing its id is
    visible afterwards and is reconciled instead of creating a second billed prediction. The lease runs
    `lease_seconds` from now, so nobody else can take the request before the create that follows at once.
    The request row is locked before the account row (as refunds do), so these never deadlock.
    Raises `NotHeld` when `owner` lost the request; nothing is written then.

    One statement (the database's `charge_request`, migration 0004): atomic without a transaction.
    """
    row = conn.execute(
        _CHARGE_REQUEST,
        {
            "id": request_id,
            "owner": owner,
            "user_id": charge.user_id,
            "credit_type": charge.credit_type,
            "amount": charge.amount,
            "lease": lease_seconds,
        },
    ).one()
    if not row.held:
        raise NotHeld(f"request {request_id} is no longer held by {owner}")
    return debit_outcome(row, charge)


_CHARGE_REQUEST = text(
    "SELECT held, entry_id AS id, user_id, credit_type, delta, kind, request_id, created_at, balance"
    " FROM charge_request(:id, :owner, :user_id, :credit_type, :amount, :lease)"
)


def _set(
    conn: Connection, request_id: int, owner: str, assignments: str, *, unless: str = "false", **params: Any
) -> bool:
    result = conn.execute(_set_statement(assignments, unless), {"id": request_id, "owner": owner, **params})
    return result.rowcount == 1


@functools.cache
def _set_statement(assignments: str, unless: str) -> TextClause:
    """One `text()` per kind of update, built once: building one (its bind parameters are found with a
    regular expression) and its cache key cost about as much CPU as sending the statement."""
    return text(
        f"UPDATE generation_requests SET {assignments}, updated_at = now()"
        f" WHERE id = :id AND status = 'processing' AND lease_owner = :owner AND NOT ({unless})"
    )


@one_statement
def record_prediction(conn: Connection, request_id: int, owner: str, prediction_id: str) -> bool:
    """Store the prediction's id the moment Replicate returns it."""
    return _set(conn, request_id, owner, "prediction_id = :pid", pid=prediction_id)


@one_statement
def mark_succeeded(
    conn: Connection, request_id: int, owner: str, outputs: list[dict[str, Any]], predict_time: float | None
) -> bool:
    """processing → succeeded, with every stored output (uri, sha256, size, content type).

    A cancel wins over a success that comes after it: a request someone asked to cancel does not
    succeed (the sweeper ends it `canceled` and refunds it).
    """
    import json

    return _set(
        conn,
        request_id,
        owner,
        "status = 'succeeded', output_uris = CAST(:uris AS jsonb), outputs = CAST(:outputs AS jsonb),"
        " predict_time = :predict_time, error = NULL, completed_at = now(),"
        " lease_owner = NULL, lease_expires_at = NULL",
        unless="cancel_requested_at IS NOT NULL",
        uris=json.dumps([o["uri"] for o in outputs]),
        outputs=json.dumps(outputs),
        predict_time=predict_time,
    )


def _refund_if_debited(conn: Connection, request_id: int) -> None:
    if debited_entry(conn, request_id) is not None:
        refund(conn, request_id)


def _finish_with_refund(
    conn: Connection,
    request_id: int,
    owner: str | None,
    status: RequestStatus,
    error: str,
    *,
    retryable: bool | None,
    predict_time: float | None = None,
    from_statuses: tuple[RequestStatus, ...] = (RequestStatus.PENDING, RequestStatus.PROCESSING),
) -> bool:
    owner_check = "AND lease_owner = :owner" if owner is not None else ""
    row = conn.execute(
        text(
            f"SELECT status FROM generation_requests WHERE id = :id AND status = ANY(:from_statuses)"
            f" {owner_check} FOR UPDATE"
        ),
        {"id": request_id, "owner": owner, "from_statuses": [s.value for s in from_statuses]},
    ).first()
    if row is None:
        return False
    _refund_if_debited(conn, request_id)
    conn.execute(
        text(
            "UPDATE generation_requests SET status = :status, error = :error, retryable = :retryable,"
            " credits_charged = 0, predict_time = COALESCE(:predict_time, predict_time),"
            " completed_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL"
            " WHERE id = :id"
        ),
        {
            "status": status.value,
            "error": error[:2000],
            "retryable": retryable,
            "predict_time": predict_time,
            "id": request_id,
        },
    )
    return True


def mark_failed(
    conn: Connection,
    request_id: int,
    owner: str | None,
    error: str,
    *,
    retryable: bool,
    predict_time: float | None = None,
) -> bool:
    """→ failed, refunding the debit (once) in the same transaction. `owner=None`: whoever holds it."""
    return _finish_with_refund(
        conn, request_id, owner, RequestStatus.FAILED, error, retryable=retryable, predict_time=predict_time
    )


def mark_canceled(conn: Connection, request_id: int, owner: str | None, reason: str) -> bool:
    """→ canceled, refunding the debit (once) in the same transaction."""
    return _finish_with_refund(conn, request_id, owner, RequestStatus.CANCELED, reason, retryable=False)


def mark_rejected(conn: Connection, request_id: int, owner: str | None, reason: str) -> bool:
    """→ rejected: refused before any charge (insufficient credits, unknown model, invalid input)."""
    if debited_entry(conn, request_id) is not None:
        raise IllegalTransition(
            f"request {request_id} was debited; it can fail (and be refunded), not be rejected"
        )
    owner_check = "AND lease_owner = :owner" if owner is not None else ""
    result = conn.execute(
        text(
            "UPDATE generation_requests SET status = 'rejected', error = :reason, retryable = false,"
            " completed_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL"
            f" WHERE id = :id AND status IN ('pending', 'processing') {owner_check}"
        ),
        {"reason": reason[:2000], "id": request_id, "owner": owner},
    )
    return result.rowcount == 1


@one_statement
def release(conn: Connection, request_id: int, owner: str, error: str | None, delay_seconds: float) -> bool:
    """processing → pending, due again after `delay_seconds`; keeps its debit and prediction for resuming."""
    return _set(
        conn,
        request_id,
        owner,
        "status = 'pending', error = :error, lease_owner = NULL, lease_expires_at = NULL,"
        " available_at = now() + make_interval(secs => :delay)",
        error=error,
        delay=delay_seconds,
    )


def release_many(conn: Connection, request_ids: list[int], owner: str) -> int:
    """Give back requests `owner` claimed but never started (due again at once, attempt not counted)."""
    return conn.execute(
        text(
            "UPDATE generation_requests SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,"
            " attempts = attempts - 1, updated_at = now()"
            " WHERE id = ANY(:ids) AND status = 'processing' AND lease_owner = :owner"
        ),
        {"ids": request_ids, "owner": owner},
    ).rowcount


def release_run(conn: Connection, run_id: str, error: str) -> int:
    """Give back everything a run (any attempt of it) still holds; returns how many.

    Used when a run failed, was canceled or died, and by a retried step for its earlier attempt. Each
    request keeps its place in the queue (`available_at` stays as it was, due since it was claimed), so
    the next claim resumes it first instead of after every request loaded behind it: a resume that waits
    too long may no longer find the prediction a crash left unrecorded.
    """
    return conn.execute(
        text(
            "UPDATE generation_requests SET status = 'pending', error = :error, lease_owner = NULL,"
            " lease_expires_at = NULL, updated_at = now()"
            " WHERE status = 'processing' AND (lease_owner = :run_id OR lease_owner LIKE :prefix)"
        ),
        {"run_id": run_id, "prefix": run_id.replace("%", r"\%").replace("_", r"\_") + ":%", "error": error},
    ).rowcount


def release_expired_leases(conn: Connection, batch_id: str | None = None, limit: int = 5000) -> int:
    """Return requests whose run stopped renewing its lease to pending (they resume where they were, first
    in the queue: see `release_run`)."""
    return conn.execute(
        text(
            """
            UPDATE generation_requests r
            SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                error = 'lease expired: the run holding it stopped', updated_at = now()
            FROM (
                SELECT id FROM generation_requests
                WHERE status = 'processing' AND lease_expires_at < now()
                  AND (CAST(:batch AS text) IS NULL OR batch_id = :batch)
                LIMIT :limit FOR UPDATE SKIP LOCKED
            ) expired
            WHERE r.id = expired.id
            """
        ),
        {"batch": batch_id, "limit": limit},
    ).rowcount


def requeue_failed(
    conn: Connection,
    batch_id: str,
    *,
    only_retryable: bool,
    originals_only: bool = False,
    failed_before_seconds: float = 0.0,
) -> int:
    """Reprocess a batch's failed requests as new pending requests (a failed request is never re-charged).

    Each failed request is copied once at most (`retry_of` is unique), so running this again adds nothing.
    `originals_only` skips requests that are themselves retries, so automatic retries stop after one;
    `failed_before_seconds` leaves alone what failed more recently (a backoff before automatic retries).
    A failure someone canceled (`cancel_requests`) is never retried.
    """
    return conn.execute(
        text(
            f"""
            INSERT INTO generation_requests (batch_id, user_id, model, input, priority, retry_of, source_row)
            SELECT f.batch_id, f.user_id, f.model, f.input, f.priority, f.id, f.source_row
            FROM generation_requests f
            WHERE f.batch_id = :batch AND f.status = 'failed'
              {"AND f.retryable" if only_retryable else ""}
              {"AND f.retry_of IS NULL" if originals_only else ""}
              AND f.cancel_requested_at IS NULL
              AND f.completed_at <= now() - make_interval(secs => :age)
              AND NOT EXISTS (SELECT 1 FROM generation_requests c WHERE c.retry_of = f.id)
            ON CONFLICT (retry_of) DO NOTHING
            """
        ),
        {"batch": batch_id, "age": failed_before_seconds},
    ).rowcount


def reject_invalid_batch_names(conn: Connection) -> int:
    """Refuse pending rows whose writer gave a batch name that cannot be a partition key or S3 path."""
    return conn.execute(
        text(
            "UPDATE generation_requests SET status = 'rejected', retryable = false, completed_at = now(),"
            " updated_at = now(), error = 'invalid batch_id: use letters, digits, dot, dash, underscore'"
            " WHERE status = 'pending' AND batch_id IS NOT NULL"
            " AND batch_id !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'"
        )
    ).rowcount


def assign_rolling_batch(conn: Connection, batch_id: str) -> int:
    """Put pending requests written without a batch (one at a time by an application) into `batch_id`."""
    moved = conn.execute(
        text(
            "UPDATE generation_requests SET batch_id = :batch, updated_at = now()"
            " WHERE status = 'pending' AND batch_id IS NULL"
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


def due_batches(conn: Connection) -> list[str]:
    """Batches with pending work that is due now, found by skipping through the pending index."""
    return list(
        conn.execute(
            text(
                """
                WITH RECURSIVE b(batch_id) AS (
                    (SELECT batch_id FROM generation_requests
                     WHERE status = 'pending' AND batch_id IS NOT NULL ORDER BY batch_id LIMIT 1)
                    UNION ALL
                    SELECT (SELECT r.batch_id FROM generation_requests r
                            WHERE r.status = 'pending' AND r.batch_id > b.batch_id
                            ORDER BY r.batch_id LIMIT 1)
                    FROM b WHERE b.batch_id IS NOT NULL
                )
                SELECT batch_id FROM b
                WHERE batch_id IS NOT NULL AND EXISTS (
                    SELECT 1 FROM generation_requests r
                    WHERE r.status = 'pending' AND r.batch_id = b.batch_id AND r.available_at <= now())
                """
            )
        ).scalars()
    )


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


# ------------------------------------------------------------------------------- cancel and sweep
_SELECTION = (
    "(CAST(:batch AS text) IS NULL OR batch_id = :batch) AND (CAST(:id AS bigint) IS NULL OR id = :id)"
)


@dataclass(frozen=True)
class CancelSummary:
    """What asking to cancel a batch (or one request) did."""

    matched: int
    # Pending without a prediction: ended `canceled` now; `refunded` of them had been debited.
    canceled: int
    refunded: int
    # In flight: marked; their prediction is canceled at Replicate and they end `canceled`, refunded.
    in_flight: int
    # Already terminal: nothing left to cancel (a failure is no longer retried automatically).
    finished: int


def cancel_requests(
    conn: Connection, *, batch_id: str | None = None, request_id: int | None = None
) -> CancelSummary:
    """Cancel a batch's (or one request's) open requests.

    Pending requests that have no prediction end `canceled` at once, refunded if they were debited.
    Requests with a prediction, or held by a run, get `cancel_requested_at`: the sweeper cancels their
    prediction at Replicate, and whoever settles them next (the run, or the sweeper) ends them
    `canceled` with a refund. Repeating a cancel changes nothing more.
    """
    if (batch_id is None) == (request_id is None):
        raise ValueError("name exactly one of batch_id and request_id")
    params = {"batch": batch_id, "id": request_id}
    counts = conn.execute(
        text(
            "SELECT count(*) AS matched, count(*) FILTER (WHERE status NOT IN ('pending', 'processing'))"
            f" AS finished FROM generation_requests WHERE {_SELECTION}"
        ),
        params,
    ).one()
    conn.execute(
        text(
            "UPDATE generation_requests SET cancel_requested_at = now(), updated_at = now()"
            f" WHERE {_SELECTION} AND cancel_requested_at IS NULL"
            " AND (status IN ('pending', 'processing') OR (status = 'failed' AND retryable))"
        ),
        params,
    )
    ended = list(
        conn.execute(
            text(
                "UPDATE generation_requests SET status = 'canceled', error = 'canceled on request',"
                " retryable = false, credits_charged = 0, completed_at = now(), updated_at = now()"
                f" WHERE {_SELECTION} AND status = 'pending' AND prediction_id IS NULL"
                " AND cancel_requested_at IS NOT NULL RETURNING id"
            ),
            params,
        ).scalars()
    )
    refunded = 0
    for ended_id in ended:
        if debited_entry(conn, ended_id) is not None:
            refund(conn, ended_id)
            refunded += 1
    in_flight = conn.execute(
        text(
            f"SELECT count(*) FROM generation_requests WHERE {_SELECTION}"
            " AND status IN ('pending', 'processing')"
        ),
        params,
    ).scalar_one()
    return CancelSummary(
        matched=counts.matched,
        canceled=len(ended),
        refunded=refunded,
        in_flight=in_flight,
        finished=counts.finished,
    )


@dataclass(frozen=True)
class OpenRequest:
    """A request the sweeper acts on: its id, status and prediction (if it has one)."""

    id: int
    status: RequestStatus
    prediction_id: str | None
    attempts: int = 0


def requests_to_cancel(conn: Connection, limit: int) -> list[OpenRequest]:
    """Open requests someone asked to cancel (oldest request first)."""
    rows = conn.execute(
        text(
            "SELECT id, status, prediction_id, attempts FROM generation_requests"
            " WHERE cancel_requested_at IS NOT NULL AND status IN ('pending', 'processing')"
            " ORDER BY id LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [OpenRequest(r.id, RequestStatus(r.status), r.prediction_id, r.attempts) for r in rows]


def finish_canceled(conn: Connection, request_id: int) -> bool:
    """An open request asked to cancel → canceled, refunded if it was debited.

    Only once nothing more can start for it at Replicate: it is pending, or its prediction is known
    (and the caller canceled it there). A run that still holds it then finds it gone and changes nothing.
    """
    cancelable = conn.execute(
        text(
            "SELECT 1 FROM generation_requests WHERE id = :id AND cancel_requested_at IS NOT NULL"
            " AND (status = 'pending' OR (status = 'processing' AND prediction_id IS NOT NULL)) FOR UPDATE"
        ),
        {"id": request_id},
    ).first()
    return cancelable is not None and _finish_with_refund(
        conn, request_id, None, RequestStatus.CANCELED, "canceled on request", retryable=False
    )


@dataclass(frozen=True)
class ExpiredLeases:
    """What settling expired leases did: released back to pending, or (out of attempts) failed + refunded."""

    released: int
    gave_up: list[OpenRequest]


def settle_expired_leases(conn: Connection, max_attempts: int, limit: int = 5000) -> ExpiredLeases:
    """Requests whose run stopped renewing its lease: back to pending to be resumed where they were (first
    in the queue, see `release_run`), or, when they used all `max_attempts` claims, failed with a refund
    (retryable: a later retry may work).

    Rows a live transaction holds are skipped (SKIP LOCKED); running this twice changes nothing more.
    """
    expired = conn.execute(
        text(
            "SELECT id, prediction_id, attempts FROM generation_requests"
            " WHERE status = 'processing' AND lease_expires_at < now()"
            " ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    ).all()
    exhausted = [r for r in expired if r.attempts >= max_attempts]
    to_release = [r.id for r in expired if r.attempts < max_attempts]
    released = 0
    if to_release:
        released = conn.execute(
            text(
                "UPDATE generation_requests SET status = 'pending', lease_owner = NULL,"
                " lease_expires_at = NULL, updated_at = now(),"
                " error = 'lease expired: the run holding it stopped' WHERE id = ANY(:ids)"
            ),
            {"ids": to_release},
        ).rowcount
    gave_up = []
    for row in exhausted:
        _finish_with_refund(
            conn,
            row.id,
            None,
            RequestStatus.FAILED,
            f"gave up after {row.attempts} attempts: the run holding it stopped",
            retryable=True,
            from_statuses=(RequestStatus.PROCESSING,),
        )
        gave_up.append(OpenRequest(row.id, RequestStatus.FAILED, row.prediction_id, row.attempts))
    return ExpiredLeases(released=released, gave_up=gave_up)


def requeue_due_failures(
    conn: Connection, *, backoff_seconds: float, lookback_seconds: float, limit: int = 1000
) -> int:
    """Retry, once, each retryable failure that ended at least `backoff_seconds` ago (and within
    `lookback_seconds`): a new pending request that points at it (the failure itself stays refunded).

    Like `requeue_failed(originals_only=True)`: retries are not retried, canceled work is not retried,
    and running this again adds nothing.
    """
    return conn.execute(
        text(
            """
            INSERT INTO generation_requests (batch_id, user_id, model, input, priority, retry_of, source_row)
            SELECT f.batch_id, f.user_id, f.model, f.input, f.priority, f.id, f.source_row
            FROM generation_requests f
            WHERE f.status = 'failed' AND f.retryable AND f.retry_of IS NULL
              AND f.completed_at <= now() - make_interval(secs => :backoff)
              AND f.completed_at > now() - make_interval(secs => :lookback)
              AND f.cancel_requested_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM generation_requests c WHERE c.retry_of = f.id)
            ORDER BY f.completed_at
            LIMIT :limit
            ON CONFLICT (retry_of) DO NOTHING
            """
        ),
        {"backoff": backoff_seconds, "lookback": lookback_seconds, "limit": limit},
    ).rowcount
