"""Batches: due work, the rolling batch, and the one batch-name rule."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ai_pipeline.db import batches
from ai_pipeline_tests.db.transitions_support import setup_requests
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request


def test_due_batches_finds_batches_with_due_pending_work_only(engine: Engine, unique: str) -> None:
    _, batch, _ = setup_requests(engine, unique, count=2)
    later = f"later-{unique}"
    with engine.begin() as conn:
        future = insert_request(conn, f"u-{unique}", batch_id=later)
        conn.execute(
            text("UPDATE generation_requests SET available_at = now() + interval '1 hour' WHERE id = :id"),
            {"id": future},
        )
        due = batches.due_batches(conn)
    assert batch in due and later not in due


def test_requests_without_a_batch_join_the_rolling_batch(engine: Engine, unique: str) -> None:
    with engine.begin() as conn:
        ensure_test_model(conn)
        request_id = insert_request(conn, f"u-{unique}")
        assert batches.assign_rolling_batch(conn, f"live-{unique}") >= 1
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
        assert batches.reject_invalid_batch_names(conn) >= 1
        row = conn.execute(
            text("SELECT status, error FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).one()
    assert row.status == "rejected" and "invalid batch_id" in row.error


def test_the_batch_name_rule_is_the_one_the_database_checks(engine: Engine) -> None:
    with engine.connect() as conn:
        check = conn.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'batches'::regclass AND contype = 'c'"
                " AND pg_get_constraintdef(oid) LIKE '%id ~%'"
            )
        ).scalar_one()
    assert f"'^{batches.BATCH_NAME}$'" in check


def test_the_loader_and_the_sensor_agree_on_batch_names(engine: Engine, unique: str) -> None:
    names = ["ok-1", "a.b_c", "x" * 100, "x" * 101, "-starts-with-dash", "has space", "ümlaut", "a/b"]
    with engine.connect() as conn:
        in_database = {
            name: conn.execute(
                text("SELECT :n ~ :p"), {"n": name, "p": f"^{batches.BATCH_NAME}$"}
            ).scalar_one()
            for name in names
        }
    assert in_database == {name: bool(batches.BATCH_NAME_PATTERN.fullmatch(name)) for name in names}
