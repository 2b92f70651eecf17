"""Recovery: failures are copied once as new requests, automatic ones only after the backoff."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ai_pipeline.db import cancels, claims, recovery, settling
from ai_pipeline_tests.db.transitions_support import setup_requests


def test_requeue_of_failed_requests_copies_each_once(engine: Engine, unique: str) -> None:
    _, batch, ids = setup_requests(engine, unique, count=2)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 2, 60)
        settling.mark_failed(conn, ids[0], f"run-a-{unique}", "timeout starting (E6716)", retryable=True)
        settling.mark_failed(conn, ids[1], f"run-a-{unique}", "NSFW", retryable=False)
        assert recovery.requeue_failed(conn, batch, only_retryable=True) == 1
        assert recovery.requeue_failed(conn, batch, only_retryable=True) == 0
        assert recovery.requeue_failed(conn, batch, only_retryable=False) == 1
        assert recovery.requeue_failed(conn, batch, only_retryable=False) == 0
        pending = conn.execute(
            text("SELECT retry_of FROM generation_requests WHERE batch_id = :b AND status = 'pending'"),
            {"b": batch},
        ).scalars()
        assert sorted(pending) == sorted(ids)


def test_automatic_requeues_wait_for_the_backoff(engine: Engine, unique: str) -> None:
    _, batch, (request_id,) = setup_requests(engine, unique, count=1)
    with engine.begin() as conn:
        claims.claim_requests(conn, batch, f"run-a-{unique}", 1, 60)
        settling.mark_failed(conn, request_id, f"run-a-{unique}", "out of memory (E1001)", retryable=True)
    with engine.begin() as conn:
        assert recovery.requeue_failed(conn, batch, only_retryable=True, failed_before_seconds=60) == 0
        conn.execute(
            text("UPDATE generation_requests SET completed_at = now() - interval '61 s' WHERE id = :id"),
            {"id": request_id},
        )
        assert recovery.requeue_failed(conn, batch, only_retryable=True, failed_before_seconds=60) == 1


def test_batches_listed_for_retry_are_those_with_a_failure_requeue_would_copy(
    engine: Engine, unique: str
) -> None:
    _, kept, (kept_id,) = setup_requests(engine, f"{unique}-kept", count=1)
    _, canceled, (canceled_id,) = setup_requests(engine, f"{unique}-canceled", count=1)
    with engine.begin() as conn:
        for request_id in (kept_id, canceled_id):
            settling.mark_failed(conn, request_id, None, "out of memory (E1001)", retryable=True)
        cancels.cancel_requests(conn, batch_id=canceled)  # a canceled batch's failures are never retried
        listed = recovery.batches_with_retryable_failures(conn, 0)
        assert kept in listed and canceled not in listed
        assert recovery.requeue_failed(conn, canceled, only_retryable=True, originals_only=True) == 0
