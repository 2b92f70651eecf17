"""The Alembic migrations build the schema the code and the public contract expect."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.db.migrate import current_revision, head_revision, upgrade_database
from ai_pipeline.db.tables import metadata
from ai_pipeline.db.urls import DatabaseUrlError, normalise_database_url
from ai_pipeline_tests.support.databases import fresh_database
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

CONTRACT_COLUMNS = {
    "generation_requests": {
        "id", "external_id", "batch_id", "user_id", "model", "input", "status", "attempts",
        "prediction_id", "error", "output_uris", "credits_charged", "created_at", "updated_at",
        "completed_at",
    },
    "credit_accounts": {"user_id", "credit_type", "balance"},
    "credit_ledger": {"user_id", "credit_type", "delta", "kind", "request_id", "created_at"},
}  # fmt: skip


def test_upgrade_of_an_empty_database_reaches_head_and_is_repeatable() -> None:
    with fresh_database() as url:
        engine = engine_for_url(url)
        assert current_revision(engine) is None
        assert upgrade_database(engine) == head_revision(engine)
        assert upgrade_database(engine) == head_revision(engine)  # a second upgrade is a no-op
        engine.dispose()


def test_schema_has_the_contract_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, columns in CONTRACT_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        assert columns <= present, f"{table} lacks {columns - present}"


def test_table_descriptions_match_the_migrated_schema(engine: Engine) -> None:
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        assert set(table.columns.keys()) == present, table.name


def test_due_work_is_found_through_the_pending_index(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                text(
                    "EXPLAIN SELECT id FROM generation_requests WHERE batch_id = 'b' AND status = 'pending'"
                    " AND available_at <= now() ORDER BY priority DESC, available_at, id LIMIT 10"
                )
            ).scalars()
        )
    assert "Index" in plan and "Seq Scan" not in plan


def test_external_id_is_unique(engine: Engine, unique: str) -> None:
    with engine.begin() as conn:
        ensure_test_model(conn)
        insert_request(conn, f"u-{unique}", external_id=f"ext-{unique}")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        insert_request(conn, f"u-{unique}", external_id=f"ext-{unique}")


def test_status_outside_the_lifecycle_is_refused(engine: Engine, unique: str) -> None:
    with engine.begin() as conn:
        ensure_test_model(conn)
        request_id = insert_request(conn, f"u-{unique}")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE generation_requests SET status='done' WHERE id=:id"), {"id": request_id})


def test_ledger_rows_cannot_be_changed_or_deleted(engine: Engine, unique: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO credit_ledger (user_id, credit_type, delta, kind) VALUES (:u,'t',5,'grant')"),
            {"u": f"u-{unique}"},
        )
    for statement in (
        "UPDATE credit_ledger SET delta = 500 WHERE user_id = :u",
        "DELETE FROM credit_ledger WHERE user_id = :u",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement), {"u": f"u-{unique}"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
    ],
)
def test_bare_postgres_urls_are_pinned_to_psycopg2(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_non_postgres_urls_are_refused() -> None:
    with pytest.raises(DatabaseUrlError, match="only Postgres"):
        normalise_database_url("sqlite:///x.db")
