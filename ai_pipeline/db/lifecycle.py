"""The request lifecycle, once: every status, and every move between them.

    pending ──claim──▶ processing ──succeed──▶ succeeded
       ▲                   │  ├──────fail──▶ failed     (refunded if it was debited)
       └────hand back──────┘  ├────reject──▶ rejected   (never charged)
    pending ──────────────────┴────cancel──▶ canceled   (refunded if it was debited)
    pending ──────────────────────fail/reject/cancel (never claimed: bad batch name, sweeper, cancel)

`processing` always carries a lease (`lease_owner`, `lease_expires_at`); a request whose lease ran out
is handed back to `pending` and keeps what it had (its debit, its `prediction_id`), so the next claim
resumes it. Terminal statuses never change again: reprocessing a failure inserts a new request.

The transitions in `db/` build their `WHERE status ...` from the `Move` they make, and the database
refuses any other status change (migration 0005's trigger over its `request_transitions` table; a test
holds that table to `ALLOWED_TRANSITIONS`), so an UPDATE from another program cannot move a request
`pending → succeeded` either.
"""

from __future__ import annotations

from dataclasses import dataclass
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


OPEN_STATUSES: tuple[RequestStatus, ...] = (RequestStatus.PENDING, RequestStatus.PROCESSING)
TERMINAL_STATUSES: frozenset[RequestStatus] = frozenset(RequestStatus) - frozenset(OPEN_STATUSES)


def sql_in(statuses: tuple[RequestStatus, ...], column: str = "status") -> str:
    """`status IN ('pending', 'processing')` as SQL text, literals and all: Postgres uses a partial index
    (`WHERE status = 'pending'`) only when the query spells the value out, not for a bound parameter."""
    if len(statuses) == 1:
        return f"{column} = '{statuses[0].value}'"
    return f"{column} IN ({', '.join(repr(status.value) for status in statuses)})"


@dataclass(frozen=True)
class Move:
    """One move of the lifecycle: from any of `sources` to `target`."""

    name: str
    sources: tuple[RequestStatus, ...]
    target: RequestStatus

    def where(self, *, only: tuple[RequestStatus, ...] | None = None, column: str = "status") -> str:
        """The SQL condition a row must meet to make this move (`only` narrows the sources)."""
        sources = only if only is not None else self.sources
        if not set(sources) <= set(self.sources):
            raise IllegalTransition(
                f"{self.name} does not start from {sorted(set(sources) - set(self.sources))}"
            )
        return sql_in(sources, column)


PENDING, PROCESSING = RequestStatus.PENDING, RequestStatus.PROCESSING
CLAIM = Move("claim", (PENDING,), PROCESSING)
HAND_BACK = Move("hand back", (PROCESSING,), PENDING)
SUCCEED = Move("succeed", (PROCESSING,), RequestStatus.SUCCEEDED)
FAIL = Move("fail", OPEN_STATUSES, RequestStatus.FAILED)
REJECT = Move("reject", OPEN_STATUSES, RequestStatus.REJECTED)
CANCEL = Move("cancel", OPEN_STATUSES, RequestStatus.CANCELED)
MOVES: tuple[Move, ...] = (CLAIM, HAND_BACK, SUCCEED, FAIL, REJECT, CANCEL)

ALLOWED_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    status: frozenset(move.target for move in MOVES if status in move.sources) for status in RequestStatus
}


class IllegalTransition(ValueError):
    """A caller asked for a move the lifecycle does not allow."""


def check_transition(current: RequestStatus, target: RequestStatus) -> None:
    """Raise `IllegalTransition` unless `current -> target` is allowed."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"a request cannot go from {current} to {target}")
