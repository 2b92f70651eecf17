"""Settling a held request: the charge and its intent, refunds in the same transaction, one-statement
writes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Connection, Engine, event, text

from ai_pipeline.credits import Charge, LedgerEntry, balance
from ai_pipeline.credits.ledger import InsufficientCredits, debited_entry, refunded_entry
from ai_pipeline.db import batches, cancels, claims, rate_limits, recovery, settling
from ai_pipeline.db.lifecycle import IllegalTransition
from ai_pipeline.db.transactions import TransactionRunner
from ai_pipeline_tests.db.transitions_support import CT, lease_left, setup_requests


def test_charge_records_intent_and_failure_refunds_once(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = setup_requests(engine, unique, count=1, credits=5)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        entry = settling.charge_and_mark_intent(
            conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 2), 60
        )
        assert isinstance(entry, LedgerEntry)
        assert balance(conn, user) == 3
        assert settling.mark_failed(
            conn, request_id, f"run-a-{unique}", "model failed: NSFW", retryable=False
        )
        assert not settling.mark_failed(conn, request_id, f"run-a-{unique}", "again", retryable=False)
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
    user, batch, (request_id,) = setup_requests(engine, unique, count=1)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        settling.charge_and_mark_intent(
            conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 1), 60
        )
        with pytest.raises(IllegalTransition):
            settling.mark_rejected(conn, request_id, f"run-a-{unique}", "unknown model")


def test_the_charge_renews_the_lease_so_the_create_that_follows_is_covered(
    engine: Engine, unique: str
) -> None:
    user, batch, (request_id,) = setup_requests(engine, unique, count=1)
    owner = f"run-a-{unique}"
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, owner, 1, 5)
    assert (lease_left(engine, request_id) or 0) <= 5
    with engine.begin() as conn:
        settling.charge_and_mark_intent(conn, request_id, owner, Charge(request_id, user, CT, 1), 600)
    assert (lease_left(engine, request_id) or 0) > 590


def test_a_charge_by_a_run_that_lost_the_request_writes_nothing(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = setup_requests(engine, unique, count=1, credits=3)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        claims.release_run(conn, f"run-a-{unique}", "run died")
        claims.claim_requests(conn, batch, f"run-b-{unique}", 1, 60)
    with pytest.raises(settling.NotHeld), engine.begin() as conn:
        settling.charge_and_mark_intent(
            conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 1), 60
        )
    with engine.connect() as conn:
        assert debited_entry(conn, request_id) is None
        assert balance(conn, user) == 3
        row = conn.execute(
            text("SELECT prediction_intent_at, lease_owner FROM generation_requests WHERE id = :id"),
            {"id": request_id},
        ).one()
    assert row.prediction_intent_at is None and row.lease_owner == f"run-b-{unique}"


def test_a_short_balance_leaves_no_intent_behind(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = setup_requests(engine, unique, count=1, credits=1)
    owner = f"run-a-{unique}"
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, owner, 1, 60)
        result = settling.charge_and_mark_intent(conn, request_id, owner, Charge(request_id, user, CT, 5), 60)
        assert isinstance(result, InsufficientCredits)
        row = conn.execute(
            text("SELECT prediction_intent_at, credits_charged FROM generation_requests WHERE id = :id"),
            {"id": request_id},
        ).one()
    assert row.prediction_intent_at is None and row.credits_charged == 0


def _one_statement_calls(
    user: str, owner: str, bucket: str
) -> dict[str, Callable[[Connection, int], object]]:
    """Each marked function, called so that it takes effect (its answer is truthy)."""
    return {
        "reserve": lambda conn, rid: rate_limits.reserve(conn, bucket, 1.0) == 0.0,
        "penalise": lambda conn, rid: rate_limits.penalise(conn, bucket, 1.0) is None,
        "extend_lease": lambda conn, rid: settling.extend_lease(conn, rid, owner, 60),
        "charge_and_mark_intent": lambda conn, rid: settling.charge_and_mark_intent(
            conn, rid, owner, Charge(rid, user, CT, 1), 60
        ),
        "record_prediction": lambda conn, rid: settling.record_prediction(conn, rid, owner, f"p-{rid}"),
        "mark_succeeded": lambda conn, rid: settling.mark_succeeded(conn, rid, owner, [], 1.0),
        "release": lambda conn, rid: settling.release(conn, rid, owner, "later", 5),
    }


def test_transitions_marked_one_statement_send_exactly_one(engine: Engine, unique: str) -> None:
    """The runner sends these outside a transaction (`TransactionRunner.statement`): a second
    statement in one of them would no longer be atomic with the first."""
    user, batch, ids = setup_requests(engine, unique, count=7)
    owner = f"run-{unique}"
    bucket = rate_limits.BucketConfig(f"bucket-{unique}", per_minute=600, burst=10)
    with engine.begin() as conn:
        rate_limits.ensure_bucket(conn, bucket)
    calls = _one_statement_calls(user, owner, bucket.name)
    modules = (batches, cancels, claims, rate_limits, recovery, settling)
    marked = {
        name for module in modules for name, fn in vars(module).items() if getattr(fn, "one_statement", False)
    }
    assert marked == set(calls)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, owner, 7, 60)
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
            runner.statement_sync(settling.mark_failed, 1, "run", "no", retryable=False)
    finally:
        runner.close()
