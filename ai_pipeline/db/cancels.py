"""Cancels: a person asks (`ai-pipeline cancel`); pending work ends at once, work in flight is marked and
ended by the sweeper once its prediction is stopped at Replicate. Refunded whenever it was debited."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from ai_pipeline.credits.ledger import debited_entry, refund
from ai_pipeline.db.lifecycle import CANCEL, OPEN_STATUSES, RequestStatus, sql_in
from ai_pipeline.db.settling import finish_with_refund

_SELECTION = (
    "(CAST(:batch AS text) IS NULL OR batch_id = :batch) AND (CAST(:id AS bigint) IS NULL OR id = :id)"
)
_OPEN = sql_in(OPEN_STATUSES)
_PENDING = sql_in((RequestStatus.PENDING,))


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
            f"SELECT count(*) AS matched, count(*) FILTER (WHERE NOT ({_OPEN})) AS finished"
            f" FROM generation_requests WHERE {_SELECTION}"
        ),
        params,
    ).one()
    conn.execute(
        text(
            "UPDATE generation_requests SET cancel_requested_at = now(), updated_at = now()"
            f" WHERE {_SELECTION} AND cancel_requested_at IS NULL"
            f" AND ({_OPEN} OR (status = '{RequestStatus.FAILED}' AND retryable))"
        ),
        params,
    )
    ended = list(
        conn.execute(
            text(
                f"UPDATE generation_requests SET status = '{CANCEL.target}', error = 'canceled on request',"
                " retryable = false, credits_charged = 0, completed_at = now(), updated_at = now()"
                f" WHERE {_SELECTION} AND {CANCEL.where(only=(RequestStatus.PENDING,))}"
                " AND prediction_id IS NULL AND cancel_requested_at IS NOT NULL RETURNING id"
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
        text(f"SELECT count(*) FROM generation_requests WHERE {_SELECTION} AND {_OPEN}"), params
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
            f" WHERE cancel_requested_at IS NOT NULL AND {_OPEN} ORDER BY id LIMIT :limit"
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
            f" AND ({_PENDING} OR (status = '{RequestStatus.PROCESSING}' AND prediction_id IS NOT NULL))"
            " FOR UPDATE"
        ),
        {"id": request_id},
    ).first()
    return cancelable is not None and finish_with_refund(
        conn, request_id, None, CANCEL, "canceled on request", retryable=False
    )
