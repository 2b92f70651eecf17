"""Random sequences of grants, debits and refunds keep balance = sum of deltas >= 0."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

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
from ai_pipeline.db.tables import credit_ledger
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

CREDIT_TYPE = "image_generation"
operations = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(1, 20)),
        st.tuples(st.just("debit"), st.integers(0, 5), st.integers(0, 12)),
        st.tuples(st.just("refund"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_random_ledger_sequences_keep_balance_equal_to_deltas(engine: Engine, ops: list[tuple]) -> None:
    user = f"prop-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        ensure_test_model(conn)
        requests = [insert_request(conn, user) for _ in range(6)]
    expected = 0
    debited: dict[int, int] = {}
    refunded: set[int] = set()
    for op in ops:
        with engine.begin() as conn:
            if op[0] == "grant":
                grant(conn, user, op[1])
                expected += op[1]
            elif op[0] == "debit":
                request_id, amount = requests[op[1]], op[2]
                result = debit(conn, Charge(request_id, user, CREDIT_TYPE, amount))
                if request_id in debited:
                    assert isinstance(result, LedgerEntry) and result.delta == -debited[request_id]
                elif amount > expected:
                    assert isinstance(result, InsufficientCredits)
                else:
                    assert isinstance(result, LedgerEntry)
                    debited[request_id] = amount
                    expected -= amount
            else:
                request_id = requests[op[1]]
                if request_id not in debited:
                    try:
                        refund(conn, request_id)
                    except RefundWithoutDebit:
                        pass
                    else:
                        raise AssertionError("refund without debit was accepted")
                else:
                    refund(conn, request_id)
                    if request_id not in refunded:
                        expected += debited[request_id]
                        refunded.add(request_id)
        with engine.connect() as conn:
            current = balance(conn, user)
            assert current == expected == ledger_sum(conn, user)
            assert current >= 0
    with engine.connect() as conn:
        kinds = conn.execute(
            select(credit_ledger.c.request_id, credit_ledger.c.kind).where(credit_ledger.c.user_id == user)
        ).all()
    per_request = [(r, k) for r, k in kinds if r is not None]
    assert len(per_request) == len(set(per_request))  # at most one debit and one refund per request
