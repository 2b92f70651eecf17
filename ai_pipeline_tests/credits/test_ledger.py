"""The credit ledger: idempotent debits and refunds, no overdraft, balance = sum of deltas."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ai_pipeline.credits import (
    Charge,
    InsufficientCredits,
    LedgerEntry,
    RefundWithoutDebit,
    balance,
    debit,
    grant,
    ledger_sum,
    refund,
)
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

CREDIT_TYPE = "image_generation"


def _new_requests(engine: Engine, user: str, count: int) -> list[int]:
    with engine.begin() as conn:
        ensure_test_model(conn)
        return [insert_request(conn, user) for _ in range(count)]


def test_grant_creates_the_account_and_raises_the_balance(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 10)
        grant(conn, user, 5)
        assert balance(conn, user) == 15 == ledger_sum(conn, user)


def test_grant_with_an_idempotency_key_is_applied_once(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    with engine.begin() as conn:
        first = grant(conn, user, 10, idempotency_key=f"signup-{unique}")
        again = grant(conn, user, 10, idempotency_key=f"signup-{unique}")
        assert again == first
        assert balance(conn, user) == 10


def test_debit_is_idempotent_per_request(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        grant(conn, user, 10)
        first = debit(conn, Charge(request_id, user, CREDIT_TYPE, 3))
        again = debit(conn, Charge(request_id, user, CREDIT_TYPE, 3))
        assert isinstance(first, LedgerEntry)
        assert again == first
        assert balance(conn, user) == 7 == ledger_sum(conn, user)


def test_debit_beyond_the_balance_is_refused_and_writes_nothing(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        grant(conn, user, 2)
        result = debit(conn, Charge(request_id, user, CREDIT_TYPE, 3))
        assert isinstance(result, InsufficientCredits)
        assert "insufficient credits" in result.reason
        assert balance(conn, user) == 2 == ledger_sum(conn, user)


def test_debit_of_an_unknown_account_is_insufficient(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        assert isinstance(debit(conn, Charge(request_id, user, CREDIT_TYPE, 1)), InsufficientCredits)


def test_refund_is_idempotent_and_restores_the_balance(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        grant(conn, user, 10)
        debit(conn, Charge(request_id, user, CREDIT_TYPE, 4))
        first = refund(conn, request_id)
        again = refund(conn, request_id)
        assert first == again and first.delta == 4
        assert balance(conn, user) == 10 == ledger_sum(conn, user)


def test_refund_without_debit_is_refused(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        grant(conn, user, 10)
        with pytest.raises(RefundWithoutDebit):
            refund(conn, request_id)
        assert balance(conn, user) == 10


def test_database_refuses_a_refund_row_without_debit_from_other_writers(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with pytest.raises(DBAPIError, match="refund without a matching debit"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO credit_ledger (user_id, credit_type, delta, kind, request_id)"
                " VALUES (:u, :t, 5, 'refund', :r)"
            ),
            {"u": user, "t": CREDIT_TYPE, "r": request_id},
        )


def test_database_refuses_a_second_debit_row_for_one_request(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        grant(conn, user, 10)
        debit(conn, Charge(request_id, user, CREDIT_TYPE, 1))
    with pytest.raises(DBAPIError, match="credit_ledger_one_per_request"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO credit_ledger (user_id, credit_type, delta, kind, request_id)"
                " VALUES (:u, :t, -1, 'debit', :r)"
            ),
            {"u": user, "t": CREDIT_TYPE, "r": request_id},
        )


def test_sixteen_threads_debiting_one_account_never_overdraw(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    threads_count, per_thread, granted = 16, 10, 100
    request_ids = _new_requests(engine, user, threads_count * per_thread)
    with engine.begin() as conn:
        grant(conn, user, granted)
    start = threading.Barrier(threads_count)
    outcomes: list[object] = []
    lock = threading.Lock()

    def worker(ids: list[int]) -> None:
        start.wait()
        for request_id in ids:
            with engine.begin() as conn:
                result = debit(conn, Charge(request_id, user, CREDIT_TYPE, 1))
            with lock:
                outcomes.append(result)

    chunks = [request_ids[i::threads_count] for i in range(threads_count)]
    workers = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    charged = [o for o in outcomes if isinstance(o, LedgerEntry)]
    refused = [o for o in outcomes if isinstance(o, InsufficientCredits)]
    assert len(charged) == granted
    assert len(refused) == threads_count * per_thread - granted
    with engine.connect() as conn:
        assert balance(conn, user) == 0 == ledger_sum(conn, user)


def test_concurrent_debits_of_the_same_request_charge_once(engine: Engine, unique: str) -> None:
    user = f"u-{unique}"
    (request_id,) = _new_requests(engine, user, 1)
    with engine.begin() as conn:
        grant(conn, user, 50)
    start = threading.Barrier(16)
    entries: list[object] = []

    def worker() -> None:
        start.wait()
        with engine.begin() as conn:
            entries.append(debit(conn, Charge(request_id, user, CREDIT_TYPE, 5)))

    workers = [threading.Thread(target=worker) for _ in range(16)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert len({e.id for e in entries if isinstance(e, LedgerEntry)}) == 1
    with engine.connect() as conn:
        assert balance(conn, user) == 45 == ledger_sum(conn, user)
