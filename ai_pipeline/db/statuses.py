"""The request lifecycle: every status and every allowed move between them, in one place.

    pending ──claim──▶ processing ──▶ succeeded
       ▲                   │  ├──────▶ failed     (refunded if it was debited)
       └──release/retry────┘  ├──────▶ rejected   (never charged)
    pending ─────────────────────────▶ canceled   (refunded if it was debited)

`processing` always carries a lease (`lease_owner`, `lease_expires_at`); a request whose lease ran out
goes back to `pending` and keeps what it had (its debit, its `prediction_id`), so the next claim resumes it.
"""

from __future__ import annotations

from enum import StrEnum


class RequestStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.SUCCEEDED, RequestStatus.FAILED, RequestStatus.REJECTED, RequestStatus.CANCELED}
)

ALLOWED_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.PENDING: frozenset(
        {RequestStatus.PROCESSING, RequestStatus.CANCELED, RequestStatus.REJECTED, RequestStatus.FAILED}
    ),
    RequestStatus.PROCESSING: frozenset(
        {
            RequestStatus.PENDING,
            RequestStatus.SUCCEEDED,
            RequestStatus.FAILED,
            RequestStatus.REJECTED,
            RequestStatus.CANCELED,
        }
    ),
    RequestStatus.SUCCEEDED: frozenset(),
    RequestStatus.FAILED: frozenset(),
    RequestStatus.REJECTED: frozenset(),
    RequestStatus.CANCELED: frozenset(),
}


class IllegalTransition(ValueError):
    """A caller asked for a move the lifecycle does not allow."""


def check_transition(current: RequestStatus, target: RequestStatus) -> None:
    """Raise `IllegalTransition` unless `current -> target` is allowed."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"a request cannot go from {current} to {target}")
