"""The lifecycle is written once: `ALLOWED_TRANSITIONS` is the database's `request_transitions`, the
database refuses every other status change, and every transition in `db/` moves a request from exactly
the statuses it declares, all of them allowed by the table."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from ai_pipeline.db import batches, cancels, claims, recovery, settling
from ai_pipeline.db.lifecycle import (
    ALLOWED_TRANSITIONS,
    CANCEL,
    CLAIM,
    FAIL,
    HAND_BACK,
    MOVES,
    REJECT,
    SUCCEED,
    Move,
    RequestStatus,
)
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

OWNER = "run-lifecycle"
PENDING, PROCESSING = RequestStatus.PENDING, RequestStatus.PROCESSING


def put_in_status(conn: Connection, request_id: int, status: RequestStatus, *, expired: bool = False) -> None:
    """Move a fresh pending request to `status` the way the lifecycle allows (held by OWNER when
    processing; with a lease already run out when `expired`)."""
    if status is PENDING:
        return
    lease = "now() - interval '1 s'" if expired else "now() + interval '60 s'"
    if status in (PROCESSING, RequestStatus.SUCCEEDED):
        conn.execute(
            text(
                f"UPDATE generation_requests SET status = 'processing', lease_owner = :owner,"
                f" lease_expires_at = {lease}, attempts = 1 WHERE id = :id"
            ),
            {"owner": OWNER, "id": request_id},
        )
    if status is not PROCESSING:
        conn.execute(
            text("UPDATE generation_requests SET status = :s, lease_owner = NULL, lease_expires_at = NULL"
                 " WHERE id = :id"),
            {"s": status.value, "id": request_id},
        )  # fmt: skip


def status_of(conn: Connection, request_id: int) -> RequestStatus:
    return RequestStatus(
        conn.execute(
            text("SELECT status FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).scalar_one()
    )


def test_the_database_table_of_moves_is_the_lifecycle(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT from_status, to_status, move FROM request_transitions")).all()
    in_database = {(row.from_status, row.to_status) for row in rows}
    assert in_database == {(s.value, t.value) for s, targets in ALLOWED_TRANSITIONS.items() for t in targets}
    assert {row.move for row in rows} == {move.name for move in MOVES}


def test_the_status_check_lists_exactly_the_lifecycle_statuses(engine: Engine) -> None:
    with engine.connect() as conn:
        check = conn.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'generation_requests'::regclass AND contype = 'c'"
                " AND pg_get_constraintdef(oid) LIKE '%status = ANY%'"
            )
        ).scalar_one()
    assert set(re.findall(r"'([a-z_]+)'::text", check)) == {status.value for status in RequestStatus}


@pytest.mark.parametrize(
    ("start", "target"), [(s, t) for s, t in itertools.product(RequestStatus, RequestStatus) if s != t]
)
def test_the_database_refuses_every_status_change_the_lifecycle_does_not_allow(
    engine: Engine, unique: str, start: RequestStatus, target: RequestStatus
) -> None:
    with engine.begin() as conn:
        ensure_test_model(conn)
        request_id = insert_request(conn, f"u-{unique}", batch_id=f"b-{unique}")
        put_in_status(conn, request_id, start)
    update = text(
        "UPDATE generation_requests SET status = :s, lease_owner = CASE WHEN :s = 'processing' THEN 'x' END,"
        " lease_expires_at = CASE WHEN :s = 'processing' THEN now() + interval '1 min' END WHERE id = :id"
    )
    if target in ALLOWED_TRANSITIONS[start]:
        with engine.begin() as conn:
            conn.execute(update, {"s": target.value, "id": request_id})
            assert status_of(conn, request_id) is target
    else:
        with (
            pytest.raises(IntegrityError, match=f"cannot go from {start} to {target}"),
            engine.begin() as conn,
        ):
            conn.execute(update, {"s": target.value, "id": request_id})


@dataclass(frozen=True)
class Transition:
    """A status-changing function of `db/`, the move it makes, and the statuses it moves from."""

    move: Move
    sources: tuple[RequestStatus, ...]
    call: Callable[[Connection, int, str], Any]
    expired_lease: bool = False
    cancel_requested: bool = False
    with_prediction: bool = False
    batch: str = "b-{unique}"


TRANSITIONS = {
    "claims.claim_requests": Transition(
        CLAIM, (PENDING,), lambda c, r, b: claims.claim_requests(c, b, OWNER, 1, 60)
    ),
    "claims.release_many": Transition(
        HAND_BACK, (PROCESSING,), lambda c, r, b: claims.release_many(c, [r], OWNER)
    ),
    "claims.release_run": Transition(
        HAND_BACK, (PROCESSING,), lambda c, r, b: claims.release_run(c, OWNER, "x")
    ),
    "claims.release_expired_leases": Transition(
        HAND_BACK, (PROCESSING,), lambda c, r, b: claims.release_expired_leases(c, b), expired_lease=True
    ),
    "settling.release": Transition(
        HAND_BACK, (PROCESSING,), lambda c, r, b: settling.release(c, r, OWNER, "x", 0)
    ),
    "settling.mark_succeeded": Transition(
        SUCCEED, (PROCESSING,), lambda c, r, b: settling.mark_succeeded(c, r, OWNER, [], 1.0)
    ),
    "settling.mark_failed": Transition(
        FAIL, (PENDING, PROCESSING), lambda c, r, b: settling.mark_failed(c, r, None, "x", retryable=False)
    ),
    "settling.mark_canceled": Transition(
        CANCEL, (PENDING, PROCESSING), lambda c, r, b: settling.mark_canceled(c, r, None, "x")
    ),
    "settling.mark_rejected": Transition(
        REJECT, (PENDING, PROCESSING), lambda c, r, b: settling.mark_rejected(c, r, None, "x")
    ),
    "cancels.cancel_requests": Transition(
        CANCEL, (PENDING,), lambda c, r, b: cancels.cancel_requests(c, request_id=r)
    ),
    "cancels.finish_canceled": Transition(
        CANCEL, (PENDING,), lambda c, r, b: cancels.finish_canceled(c, r), cancel_requested=True
    ),
    "cancels.finish_canceled (prediction known)": Transition(
        CANCEL,
        (PENDING, PROCESSING),
        lambda c, r, b: cancels.finish_canceled(c, r),
        cancel_requested=True,
        with_prediction=True,
    ),
    "recovery.settle_expired_leases (out of attempts)": Transition(
        FAIL,
        (PROCESSING,),
        lambda c, r, b: recovery.settle_expired_leases(c, max_attempts=1),
        expired_lease=True,
    ),
    "recovery.settle_expired_leases (attempts left)": Transition(
        HAND_BACK,
        (PROCESSING,),
        lambda c, r, b: recovery.settle_expired_leases(c, max_attempts=5),
        expired_lease=True,
    ),
    "batches.reject_invalid_batch_names": Transition(
        REJECT, (PENDING,), lambda c, r, b: batches.reject_invalid_batch_names(c), batch="bad name {unique}"
    ),
}


def test_every_move_of_the_table_is_made_by_some_transition() -> None:
    assert {transition.move for transition in TRANSITIONS.values()} == set(MOVES)


@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_each_transition_moves_exactly_from_the_statuses_it_declares_and_the_table_allows(
    engine: Engine, unique: str, name: str
) -> None:
    transition = TRANSITIONS[name]
    assert set(transition.sources) <= set(transition.move.sources), "declares a move the table does not allow"
    for start in RequestStatus:
        key = f"{unique}-{start}"
        batch = transition.batch.format(unique=key)
        with engine.begin() as conn:
            ensure_test_model(conn)
            request_id = insert_request(conn, f"u-{key}", batch_id=batch)
            put_in_status(conn, request_id, start, expired=transition.expired_lease)
            conn.execute(
                text(
                    "UPDATE generation_requests SET cancel_requested_at = CASE WHEN :cancel THEN now() END,"
                    " prediction_id = :prediction WHERE id = :id"
                ),
                {
                    "cancel": transition.cancel_requested,
                    "prediction": f"p-{key}" if transition.with_prediction else None,
                    "id": request_id,
                },
            )
        with engine.begin() as conn:
            transition.call(conn, request_id, batch)
            after = status_of(conn, request_id)
            # Leave nothing open for later tests' runs and sweeps in the shared database.
            conn.execute(
                text(
                    "UPDATE generation_requests SET status = 'canceled', error = 'test done',"
                    " lease_owner = NULL, lease_expires_at = NULL"
                    " WHERE id = :id AND status IN ('pending', 'processing')"
                ),
                {"id": request_id},
            )
        moved = after is transition.move.target and start is not after
        assert moved == (start in transition.sources), f"{name} from {start}: now {after}"
