"""Request transitions: claims with leases, compare-and-set settling, money in the same transaction."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Connection, Engine, event, text

from ai_pipeline.credits import Charge, LedgerEntry, balance, grant
from ai_pipeline.credits.ledger import InsufficientCredits, debited_entry, refunded_entry
from ai_pipeline.db import requests as t
from ai_pipeline.db.statuses import ALLOWED_TRANSITIONS, IllegalTransition, RequestStatus
from ai_pipeline.processing.database import TransactionRunner
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

CT = "image_generation"


def _setup(engine: Engine, unique: str, count: int = 3, credits: int = 10) -> tuple[str, str, list[int]]:
    user, batch = f"u-{unique}", f"b-{unique}"
    with engine.begin() as conn:
        ensure_test_model(conn)
        grant(conn, user, credits)
        ids = [insert_request(conn, user, batch_id=batch) for _ in range(count)]
    return user, batch, ids


def _status(engine: Engine, request_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).scalar_one()


def test_two_runs_never_claim_the_same_request(engine: Engine, unique: str) -> None:
    _, batch, ids = _setup(engine, unique, count=5)
    with engine.begin() as first, engine.begin() as second:
        a = t.claim_requests(first, batch, f"run-a-{unique}", 3, 60)
        b = t.claim_requests(second, batch, f"run-b-{unique}", 10, 60)  # skips the rows run-a has locked
    assert {r.id for r in a}.isdisjoint({r.id for r in b})
    assert {r.id for r in a} | {r.id for r in b} == set(ids)
    assert all(r.attempts == 1 for r in a + b)


def test_a_run_that_lost_its_lease_changes_nothing(engine: Engine, unique: str) -> None:
    _, batch, (request_id,) = _setup(engine, unique, count=1)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        assert t.release_run(conn, f"run-a-{unique}", "run died") == 1
        (claimed,) = t.claim_requests(conn, batch, f"run-b-{unique}", 1, 60)
        assert claimed.id == request_id
        assert not t.mark_succeeded(conn, request_id, f"run-a-{unique}", [], 1.0)
        assert not t.record_prediction(conn, request_id, f"run-a-{unique}", "p-stale")
    assert _status(engine, request_id) == "processing"


def test_charge_records_intent_and_failure_refunds_once(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = _setup(engine, unique, count=1, credits=5)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        entry = t.charge_and_mark_intent(
            conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 2), 60
        )
        assert isinstance(entry, LedgerEntry)
        assert balance(conn, user) == 3
        assert t.mark_failed(conn, request_id, f"run-a-{unique}", "model failed: NSFW", retryable=False)
        assert not t.mark_failed(conn, request_id, f"run-a-{unique}", "again", retryable=False)
        assert balance(conn, user) == 5
        assert refunded_entry(conn, request_id) is not None
        row = conn.execute(
            text(
                "SELECT status, credits_charged, prediction_intent_at FROM generation_requests WHERE id=:id"
            ),
            {"id": request_id},
        ).one()
    assert row.status == "failed" and row.credits_charged == 0 and row.prediction_intent_at is not None


def test_a_debited_request_cannot_be_rejected(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = _setup(engine, unique, count=1)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        t.charge_and_mark_intent(conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 1), 60)
        with pytest.raises(IllegalTransition):
            t.mark_rejected(conn, request_id, f"run-a-{unique}", "unknown model")


def test_expired_leases_go_back_to_pending_keeping_debit_and_prediction(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = _setup(engine, unique, count=1)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        t.charge_and_mark_intent(conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 1), 60)
        t.record_prediction(conn, request_id, f"run-a-{unique}", f"pred-{unique}")
        conn.execute(
            text("UPDATE generation_requests SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": request_id},
        )
        assert t.release_expired_leases(conn, batch) == 1
        (resumed,) = t.claim_requests(conn, batch, f"run-b-{unique}", 1, 60)
        assert resumed.prediction_id == f"pred-{unique}"
        assert resumed.attempts == 2
        assert debited_entry(conn, request_id) is not None


def test_requeue_of_failed_requests_copies_each_once(engine: Engine, unique: str) -> None:
    _, batch, ids = _setup(engine, unique, count=2)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 2, 60)
        t.mark_failed(conn, ids[0], f"run-a-{unique}", "timeout starting (E6716)", retryable=True)
        t.mark_failed(conn, ids[1], f"run-a-{unique}", "NSFW", retryable=False)
        assert t.requeue_failed(conn, batch, only_retryable=True) == 1
        assert t.requeue_failed(conn, batch, only_retryable=True) == 0
        assert t.requeue_failed(conn, batch, only_retryable=False) == 1
        assert t.requeue_failed(conn, batch, only_retryable=False) == 0
        pending = conn.execute(
            text("SELECT retry_of FROM generation_requests WHERE batch_id = :b AND status = 'pending'"),
            {"b": batch},
        ).scalars()
        assert sorted(pending) == sorted(ids)


def test_due_batches_finds_batches_with_due_pending_work_only(engine: Engine, unique: str) -> None:
    _, batch, _ = _setup(engine, unique, count=2)
    later = f"later-{unique}"
    with engine.begin() as conn:
        future = insert_request(conn, f"u-{unique}", batch_id=later)
        conn.execute(
            text("UPDATE generation_requests SET available_at = now() + interval '1 hour' WHERE id = :id"),
            {"id": future},
        )
        due = t.due_batches(conn)
    assert batch in due and later not in due


def test_requests_without_a_batch_join_the_rolling_batch(engine: Engine, unique: str) -> None:
    with engine.begin() as conn:
        ensure_test_model(conn)
        request_id = insert_request(conn, f"u-{unique}")
        assert t.assign_rolling_batch(conn, f"live-{unique}") >= 1
        assert (
            conn.execute(
                text("SELECT batch_id FROM generation_requests WHERE id = :id"), {"id": request_id}
            ).scalar_one()
            == f"live-{unique}"
        )


def test_writer_batch_names_that_cannot_be_partitions_are_rejected_with_a_reason(
    engine: Engine, unique: str
) -> None:
    with engine.begin() as conn:
        ensure_test_model(conn)
        request_id = insert_request(conn, f"u-{unique}", batch_id=f"bad name/{unique}")
        assert t.reject_invalid_batch_names(conn) >= 1
        row = conn.execute(
            text("SELECT status, error FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).one()
    assert row.status == "rejected" and "invalid batch_id" in row.error


# Each transition function and the status it moves a request to.
_MOVES = {
    RequestStatus.PROCESSING: lambda conn, rid, owner, batch: t.claim_requests(conn, batch, owner, 1, 60),
    RequestStatus.PENDING: lambda conn, rid, owner, batch: t.release(conn, rid, owner, "hand back", 0),
    RequestStatus.SUCCEEDED: lambda conn, rid, owner, batch: t.mark_succeeded(conn, rid, owner, [], 1.0),
    RequestStatus.FAILED: lambda conn, rid, owner, batch: t.mark_failed(
        conn, rid, None, "x", retryable=False
    ),
    RequestStatus.REJECTED: lambda conn, rid, owner, batch: t.mark_rejected(conn, rid, None, "x"),
    RequestStatus.CANCELED: lambda conn, rid, owner, batch: t.mark_canceled(conn, rid, None, "x"),
}


@pytest.mark.parametrize("start", list(RequestStatus))
def test_the_sql_transitions_allow_exactly_the_documented_lifecycle(
    engine: Engine, unique: str, start: RequestStatus
) -> None:
    """`statuses.ALLOWED_TRANSITIONS` is the lifecycle's documentation; every compare-and-set in
    `db.requests` encodes its own allowed sources in SQL. This keeps the two the same."""
    for target, move in _MOVES.items():
        if target == start:
            continue
        _, batch, (request_id,) = _setup(engine, f"{unique}-{start}-{target}", count=1)
        owner = f"run-{unique}"
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE generation_requests SET status = :status,"
                    " lease_owner = CASE WHEN :status = 'processing' THEN :owner END,"
                    " lease_expires_at = CASE WHEN :status = 'processing' THEN now() + interval '60 s' END"
                    " WHERE id = :id"
                ),
                {"status": start.value, "owner": owner, "id": request_id},
            )
            move(conn, request_id, owner, batch)
        moved = _status(engine, request_id) == target
        assert moved == (target in ALLOWED_TRANSITIONS[start]), f"{start} -> {target}"


def _lease_left(engine: Engine, request_id: int) -> float | None:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT EXTRACT(EPOCH FROM lease_expires_at - now()) FROM generation_requests WHERE id = :id"
            ),
            {"id": request_id},
        ).scalar_one()


def test_the_charge_renews_the_lease_so_the_create_that_follows_is_covered(
    engine: Engine, unique: str
) -> None:
    user, batch, (request_id,) = _setup(engine, unique, count=1)
    owner = f"run-a-{unique}"
    with engine.begin() as conn:
        t.claim_requests(conn, batch, owner, 1, 5)
    assert (_lease_left(engine, request_id) or 0) <= 5
    with engine.begin() as conn:
        t.charge_and_mark_intent(conn, request_id, owner, Charge(request_id, user, CT, 1), 600)
    assert (_lease_left(engine, request_id) or 0) > 590


def test_a_charge_by_a_run_that_lost_the_request_writes_nothing(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = _setup(engine, unique, count=1, credits=3)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        t.release_run(conn, f"run-a-{unique}", "run died")
        t.claim_requests(conn, batch, f"run-b-{unique}", 1, 60)
    with pytest.raises(t.NotHeld), engine.begin() as conn:
        t.charge_and_mark_intent(conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 1), 60)
    with engine.connect() as conn:
        assert debited_entry(conn, request_id) is None
        assert balance(conn, user) == 3
        row = conn.execute(
            text("SELECT prediction_intent_at, lease_owner FROM generation_requests WHERE id = :id"),
            {"id": request_id},
        ).one()
    assert row.prediction_intent_at is None and row.lease_owner == f"run-b-{unique}"


def test_a_short_balance_leaves_no_intent_behind(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = _setup(engine, unique, count=1, credits=1)
    owner = f"run-a-{unique}"
    with engine.begin() as conn:
        t.claim_requests(conn, batch, owner, 1, 60)
        result = t.charge_and_mark_intent(conn, request_id, owner, Charge(request_id, user, CT, 5), 60)
        assert isinstance(result, InsufficientCredits)
        row = conn.execute(
            text("SELECT prediction_intent_at, credits_charged FROM generation_requests WHERE id = :id"),
            {"id": request_id},
        ).one()
    assert row.prediction_intent_at is None and row.credits_charged == 0


def test_extending_a_lease_answers_whether_it_is_still_held(engine: Engine, unique: str) -> None:
    _, batch, (request_id,) = _setup(engine, unique, count=1)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 5)
        assert t.extend_lease(conn, request_id, f"run-a-{unique}", 600)
        assert not t.extend_lease(conn, request_id, f"run-b-{unique}", 600)
        assert t.renew_leases(conn, f"run-a-{unique}", [request_id], 600) == {request_id}
        t.release_run(conn, f"run-a-{unique}", "run died")
        assert not t.extend_lease(conn, request_id, f"run-a-{unique}", 600)
        assert t.renew_leases(conn, f"run-a-{unique}", [request_id], 600) == set()
    assert _lease_left(engine, request_id) is None


def test_automatic_requeues_wait_for_the_backoff(engine: Engine, unique: str) -> None:
    _, batch, (request_id,) = _setup(engine, unique, count=1)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        t.mark_failed(conn, request_id, f"run-a-{unique}", "out of memory (E1001)", retryable=True)
    with engine.begin() as conn:
        assert t.requeue_failed(conn, batch, only_retryable=True, failed_before_seconds=60) == 0
        conn.execute(
            text("UPDATE generation_requests SET completed_at = now() - interval '61 s' WHERE id = :id"),
            {"id": request_id},
        )
        assert t.requeue_failed(conn, batch, only_retryable=True, failed_before_seconds=60) == 1


def _one_statement_calls(user: str, owner: str) -> dict[str, Callable[[Connection, int], object]]:
    return {
        "extend_lease": lambda conn, rid: t.extend_lease(conn, rid, owner, 60),
        "charge_and_mark_intent": lambda conn, rid: t.charge_and_mark_intent(
            conn, rid, owner, Charge(rid, user, CT, 1), 60
        ),
        "record_prediction": lambda conn, rid: t.record_prediction(conn, rid, owner, f"p-{rid}"),
        "mark_succeeded": lambda conn, rid: t.mark_succeeded(conn, rid, owner, [], 1.0),
        "release": lambda conn, rid: t.release(conn, rid, owner, "later", 5),
    }


def test_transitions_marked_one_statement_send_exactly_one(engine: Engine, unique: str) -> None:
    """The runner sends these outside a transaction (`TransactionRunner.statement`): a second
    statement in one of them would no longer be atomic with the first."""
    user, batch, ids = _setup(engine, unique, count=5)
    owner = f"run-{unique}"
    calls = _one_statement_calls(user, owner)
    marked = {name for name, fn in vars(t).items() if getattr(fn, "one_statement", False)}
    assert marked == set(calls)
    with engine.begin() as conn:
        t.claim_requests(conn, batch, owner, 5, 60)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    for (name, call), request_id in zip(calls.items(), ids, strict=True):
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            event.listen(conn, "before_cursor_execute", count)
            statements.clear()
            assert call(conn, request_id), name  # each took effect
            event.remove(conn, "before_cursor_execute", count)
        assert len(statements) == 1, f"{name}: {statements}"


def test_only_one_statement_transitions_run_outside_a_transaction(engine: Engine) -> None:
    runner = TransactionRunner(engine, threads=1)
    try:
        with pytest.raises(TypeError, match="mark_failed"):
            runner.statement_sync(t.mark_failed, 1, "run", "no", retryable=False)
    finally:
        runner.close()
