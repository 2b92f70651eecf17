"""What a run does to a request it holds: charge it, record its prediction, and settle it (succeeded;
failed, canceled or rejected; or handed back to the queue). Each is a compare-and-set on the request's row.

A run only changes a request it holds: every update checks the move's source status and
`lease_owner = <this run>`. A run that lost its lease (too slow, or declared dead and its work released)
therefore changes nothing, and whoever holds the request now carries on. Money moves in the same
transaction (or the same statement) as the status it belongs to.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import Connection, TextClause, text

from ai_pipeline.credits.ledger import (
    Charge,
    InsufficientCredits,
    LedgerEntry,
    debit_outcome,
    debited_entry,
    refund,
)
from ai_pipeline.db.lifecycle import (
    CANCEL,
    FAIL,
    HAND_BACK,
    REJECT,
    SUCCEED,
    IllegalTransition,
    Move,
    RequestStatus,
)
from ai_pipeline.db.transactions import one_statement


class NotHeld(Exception):
    """The caller no longer holds the request (its lease ran out or was released); nothing was written."""


def _set(
    conn: Connection, request_id: int, owner: str, assignments: str, *, unless: str = "false", **params: Any
) -> bool:
    """An update of a request `owner` holds (`processing` under its lease)."""
    result = conn.execute(_set_statement(assignments, unless), {"id": request_id, "owner": owner, **params})
    return result.rowcount == 1


@functools.cache
def _set_statement(assignments: str, unless: str) -> TextClause:
    """One `text()` per kind of update, built once: building one (its bind parameters are found with a
    regular expression) and its cache key cost about as much CPU as sending the statement."""
    return text(
        f"UPDATE generation_requests SET {assignments}, updated_at = now()"
        f" WHERE id = :id AND status = '{RequestStatus.PROCESSING}' AND lease_owner = :owner"
        f" AND NOT ({unless})"
    )


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


_CHARGE_REQUEST = text(
    "SELECT held, entry_id AS id, user_id, credit_type, delta, kind, request_id, created_at, balance"
    " FROM charge_request(:id, :owner, :user_id, :credit_type, :amount, :lease)"
)


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
    return _set(
        conn,
        request_id,
        owner,
        f"status = '{SUCCEED.target}', output_uris = CAST(:uris AS jsonb), outputs = CAST(:outputs AS jsonb),"
        " predict_time = :predict_time, error = NULL, completed_at = now(),"
        " lease_owner = NULL, lease_expires_at = NULL",
        unless="cancel_requested_at IS NOT NULL",
        uris=json.dumps([o["uri"] for o in outputs]),
        outputs=json.dumps(outputs),
        predict_time=predict_time,
    )


@one_statement
def release(conn: Connection, request_id: int, owner: str, error: str | None, delay_seconds: float) -> bool:
    """processing → pending, due again after `delay_seconds`; keeps its debit and prediction for resuming."""
    return _set(
        conn,
        request_id,
        owner,
        f"status = '{HAND_BACK.target}', error = :error, lease_owner = NULL, lease_expires_at = NULL,"
        " available_at = now() + make_interval(secs => :delay)",
        error=error,
        delay=delay_seconds,
    )


def finish_with_refund(
    conn: Connection,
    request_id: int,
    owner: str | None,
    move: Move,
    error: str,
    *,
    retryable: bool | None,
    predict_time: float | None = None,
    only: tuple[RequestStatus, ...] | None = None,
) -> bool:
    """End the request with `move` (fail or cancel), refunding its debit (once) in the same transaction.
    `owner=None`: whoever holds it; `only` narrows the statuses it may end from."""
    owner_check = "AND lease_owner = :owner" if owner is not None else ""
    row = conn.execute(
        text(
            f"SELECT status FROM generation_requests WHERE id = :id AND {move.where(only=only)}"
            f" {owner_check} FOR UPDATE"
        ),
        {"id": request_id, "owner": owner},
    ).first()
    if row is None:
        return False
    if debited_entry(conn, request_id) is not None:
        refund(conn, request_id)
    conn.execute(
        text(
            "UPDATE generation_requests SET status = :status, error = :error, retryable = :retryable,"
            " credits_charged = 0, predict_time = COALESCE(:predict_time, predict_time),"
            " completed_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL"
            " WHERE id = :id"
        ),
        {
            "status": move.target.value,
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
    return finish_with_refund(
        conn, request_id, owner, FAIL, error, retryable=retryable, predict_time=predict_time
    )


def mark_canceled(conn: Connection, request_id: int, owner: str | None, reason: str) -> bool:
    """→ canceled, refunding the debit (once) in the same transaction."""
    return finish_with_refund(conn, request_id, owner, CANCEL, reason, retryable=False)


def mark_rejected(conn: Connection, request_id: int, owner: str | None, reason: str) -> bool:
    """→ rejected: refused before any charge (insufficient credits, unknown model, invalid input)."""
    if debited_entry(conn, request_id) is not None:
        raise IllegalTransition(
            f"request {request_id} was debited; it can fail (and be refunded), not be rejected"
        )
    owner_check = "AND lease_owner = :owner" if owner is not None else ""
    result = conn.execute(
        text(
            f"UPDATE generation_requests SET status = '{REJECT.target}', error = :reason, retryable = false,"
            " completed_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL"
            f" WHERE id = :id AND {REJECT.where()} {owner_check}"
        ),
        {"reason": reason[:2000], "id": request_id, "owner": owner},
    )
    return result.rowcount == 1


def predictions_of_twins(
    conn: Connection, request_id: int, model: str, model_input: dict[str, Any]
) -> frozenset[str]:
    """Predictions that other requests with the same model and input already own: a lookup for this
    request's lost create must never take theirs."""
    return frozenset(
        conn.execute(
            text(
                "SELECT prediction_id FROM generation_requests WHERE prediction_id IS NOT NULL"
                " AND model = :model AND input = CAST(:input AS jsonb) AND id <> :id"
            ),
            {"model": model, "input": json.dumps(model_input), "id": request_id},
        ).scalars()
    )
