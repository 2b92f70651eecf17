"""Claims and leases: two runs never share a request; a run that lost its lease changes nothing."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ai_pipeline.credits import Charge
from ai_pipeline.credits.ledger import debited_entry
from ai_pipeline.db import claims, settling
from ai_pipeline_tests.db.transitions_support import CT, lease_left, setup_requests, status_of


def test_two_runs_never_claim_the_same_request(engine: Engine, unique: str) -> None:
    _, batch, ids = setup_requests(engine, unique, count=5)
    with engine.begin() as first, engine.begin() as second:
        a = claims.claim_requests(first, batch, f"run-a-{unique}", 3, 60)
        b = claims.claim_requests(second, batch, f"run-b-{unique}", 10, 60)  # skips the rows run-a has locked
    assert {r.id for r in a}.isdisjoint({r.id for r in b})
    assert {r.id for r in a} | {r.id for r in b} == set(ids)
    assert all(r.attempts == 1 for r in a + b)


def test_a_run_that_lost_its_lease_changes_nothing(engine: Engine, unique: str) -> None:
    _, batch, (request_id,) = setup_requests(engine, unique, count=1)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        assert claims.release_run(conn, f"run-a-{unique}", "run died") == 1
        (claimed,) = claims.claim_requests(conn, batch, f"run-b-{unique}", 1, 60)
        assert claimed.id == request_id
        assert not settling.mark_succeeded(conn, request_id, f"run-a-{unique}", [], 1.0)
        assert not settling.record_prediction(conn, request_id, f"run-a-{unique}", "p-stale")
    assert status_of(engine, request_id) == "processing"


def test_expired_leases_go_back_to_pending_keeping_debit_and_prediction(engine: Engine, unique: str) -> None:
    user, batch, (request_id,) = setup_requests(engine, unique, count=1)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        settling.charge_and_mark_intent(
            conn, request_id, f"run-a-{unique}", Charge(request_id, user, CT, 1), 60
        )
        settling.record_prediction(conn, request_id, f"run-a-{unique}", f"pred-{unique}")
        conn.execute(
            text("UPDATE generation_requests SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": request_id},
        )
        assert claims.release_expired_leases(conn, batch) == 1
        (resumed,) = claims.claim_requests(conn, batch, f"run-b-{unique}", 1, 60)
        assert resumed.prediction_id == f"pred-{unique}"
        assert resumed.attempts == 2
        assert debited_entry(conn, request_id) is not None


def test_extending_a_lease_answers_whether_it_is_still_held(engine: Engine, unique: str) -> None:
    _, batch, (request_id,) = setup_requests(engine, unique, count=1)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 5)
        assert settling.extend_lease(conn, request_id, f"run-a-{unique}", 600)
        assert not settling.extend_lease(conn, request_id, f"run-b-{unique}", 600)
        assert claims.renew_leases(conn, f"run-a-{unique}", [request_id], 600) == {request_id}
        claims.release_run(conn, f"run-a-{unique}", "run died")
        assert not settling.extend_lease(conn, request_id, f"run-a-{unique}", 600)
        assert claims.renew_leases(conn, f"run-a-{unique}", [request_id], 600) == set()
    assert lease_left(engine, request_id) is None
