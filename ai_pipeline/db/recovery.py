"""Recovery: what dead runs leave behind, and failures tried again.

Expired leases go back to the queue, or fail (refunded) once a request used all its attempts. A failed
request is never charged again: reprocessing it inserts a new request pointing at it (`retry_of`, unique,
so each failure is copied once at most), by the sweeper, the retry schedule or a person's backfill.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from ai_pipeline.db.cancels import OpenRequest
from ai_pipeline.db.lifecycle import FAIL, HAND_BACK, RequestStatus
from ai_pipeline.db.settling import finish_with_refund

# A failure `f` that may still be reprocessed: nobody asked to cancel it, and it has no copy yet.
_COPYABLE_FAILURE = (
    f"f.status = '{RequestStatus.FAILED}' AND f.cancel_requested_at IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM generation_requests c WHERE c.retry_of = f.id)"
)
# A new pending request for each failure `f` the query selects (the failure itself stays refunded). It
# belongs to the same application and reports to the same webhook (the API shows it as `retried_as`).
_COPY_FAILURES = f"""
    INSERT INTO generation_requests
        (batch_id, user_id, model, input, priority, retry_of, source_row, application_id, webhook_url)
    SELECT f.batch_id, f.user_id, f.model, f.input, f.priority, f.id, f.source_row, f.application_id,
        f.webhook_url
    FROM generation_requests f
    WHERE {_COPYABLE_FAILURE}
"""


@dataclass(frozen=True)
class ExpiredLeases:
    """What settling expired leases did: released back to pending, or (out of attempts) failed + refunded."""

    released: int
    gave_up: list[OpenRequest]


def settle_expired_leases(conn: Connection, max_attempts: int, limit: int = 5000) -> ExpiredLeases:
    """Requests whose run stopped renewing its lease: back to pending to be resumed where they were (first
    in the queue, see `claims.release_run`), or, when they used all `max_attempts` claims, failed with a
    refund (retryable: a later retry may work).

    Rows a live transaction holds are skipped (SKIP LOCKED); running this twice changes nothing more.
    """
    expired = conn.execute(
        text(
            "SELECT id, prediction_id, attempts FROM generation_requests"
            f" WHERE {HAND_BACK.where()} AND lease_expires_at < now()"
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
                f"UPDATE generation_requests SET status = '{HAND_BACK.target}', lease_owner = NULL,"
                " lease_expires_at = NULL, updated_at = now(),"
                " error = 'lease expired: the run holding it stopped' WHERE id = ANY(:ids)"
            ),
            {"ids": to_release},
        ).rowcount
    gave_up = []
    for row in exhausted:
        finish_with_refund(
            conn,
            row.id,
            None,
            FAIL,
            f"gave up after {row.attempts} attempts: the run holding it stopped",
            retryable=True,
            only=(RequestStatus.PROCESSING,),
        )
        gave_up.append(OpenRequest(row.id, RequestStatus.FAILED, row.prediction_id, row.attempts))
    return ExpiredLeases(released=released, gave_up=gave_up)


def requeue_failed(
    conn: Connection,
    batch_id: str,
    *,
    only_retryable: bool,
    originals_only: bool = False,
    failed_before_seconds: float = 0.0,
) -> int:
    """Reprocess a batch's failed requests as new pending requests (a failed request is never re-charged).

    Each failed request is copied once at most, so running this again adds nothing. `originals_only`
    skips requests that are themselves retries, so automatic retries stop after one;
    `failed_before_seconds` leaves alone what failed more recently (a backoff before automatic retries).
    A failure someone canceled (`cancels.cancel_requests`) is never retried.
    """
    return conn.execute(
        text(
            f"""{_COPY_FAILURES}
              AND f.batch_id = :batch
              {"AND f.retryable" if only_retryable else ""}
              {"AND f.retry_of IS NULL" if originals_only else ""}
              AND f.completed_at <= now() - make_interval(secs => :age)
            ON CONFLICT (retry_of) DO NOTHING
            """
        ),
        {"batch": batch_id, "age": failed_before_seconds},
    ).rowcount


def requeue_due_failures(
    conn: Connection, *, backoff_seconds: float, lookback_seconds: float, limit: int = 1000
) -> int:
    """Retry, once, each retryable failure that ended at least `backoff_seconds` ago (and within
    `lookback_seconds`). Like `requeue_failed(originals_only=True)`: retries are not retried, canceled
    work is not retried, and running this again adds nothing.
    """
    return conn.execute(
        text(
            f"""{_COPY_FAILURES}
              AND f.retryable AND f.retry_of IS NULL
              AND f.completed_at <= now() - make_interval(secs => :backoff)
              AND f.completed_at > now() - make_interval(secs => :lookback)
            ORDER BY f.completed_at
            LIMIT :limit
            ON CONFLICT (retry_of) DO NOTHING
            """
        ),
        {"backoff": backoff_seconds, "lookback": lookback_seconds, "limit": limit},
    ).rowcount


def batches_with_retryable_failures(conn: Connection, failed_before_seconds: float) -> list[str]:
    """Batches holding a retryable original failure, older than the backoff, not retried yet (nor
    canceled): those `requeue_failed(only_retryable=True, originals_only=True)` has work in."""
    return list(
        conn.execute(
            text(
                f"SELECT DISTINCT f.batch_id FROM generation_requests f WHERE {_COPYABLE_FAILURE}"
                " AND f.retryable AND f.retry_of IS NULL AND f.batch_id IS NOT NULL"
                " AND f.completed_at <= now() - make_interval(secs => :age)"
            ),
            {"age": failed_before_seconds},
        ).scalars()
    )
