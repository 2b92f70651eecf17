"""The Postgres storages `dagster.yaml` names: stock behaviour, one kept connection, and schema
questions answered "yes" asked of the catalogue only once per process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterRun, RunsFilter
from sqlalchemy import event

from ai_pipeline.orchestration import dagster_storage
from ai_pipeline.orchestration.dagster_storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
)
from ai_pipeline_tests.support.databases import fresh_database


@pytest.fixture(scope="module")
def dagster_url() -> Iterator[str]:
    with fresh_database("aip_test_dagster") as url:
        yield url


def catalogue_queries(storage: object) -> list[str]:
    """Statements sent through the storage's engine that read Postgres's catalogue (pg_catalog)."""
    sent: list[str] = []
    engine = storage._engine  # type: ignore[attr-defined]

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "pg_catalog" in statement or "pg_class" in statement or "information_schema" in statement:
            sent.append(statement)

    return sent


def build(cls: type, url: str):  # type: ignore[no-untyped-def]
    return cls.from_config_value(None, {"postgres_url": url})


def test_run_storage_stores_runs_over_one_kept_connection(dagster_url: str) -> None:
    storage = build(PooledPostgresRunStorage, dagster_url)
    try:
        run = storage.add_run(DagsterRun(job_name="a_job", run_id="0" * 8 + "-aaaa-bbbb-cccc-" + "1" * 12))
        assert storage.get_runs(RunsFilter(run_ids=[run.run_id])) == [run]
        assert storage._engine.pool.size() == 1
        assert storage._engine.pool.checkedin() == 1  # given back, kept open
    finally:
        storage.dispose()


@pytest.mark.parametrize(
    ("cls", "ask"),
    [
        (PooledPostgresScheduleStorage, lambda s: s.has_instigators_table()),
        (PooledPostgresScheduleStorage, lambda s: s.has_secondary_index_table()),
        (PooledPostgresRunStorage, lambda s: s.has_run_stats_index_cols()),
        (PooledPostgresRunStorage, lambda s: s.has_backfill_tags_table()),
        (PooledPostgresEventLogStorage, lambda s: s.has_table("asset_keys")),
        (PooledPostgresEventLogStorage, lambda s: s.has_asset_key_index_cols()),
    ],
)
def test_a_yes_about_the_schema_is_not_asked_again(cls: type, ask, dagster_url: str) -> None:  # type: ignore[no-untyped-def]
    first, second = build(cls, dagster_url), build(cls, dagster_url)  # as for every sensor tick
    dagster_storage._SCHEMA_YES.clear()  # as in a fresh process
    try:
        sent_by_first = catalogue_queries(first)
        assert ask(first) is True
        assert sent_by_first, "the first question reads the catalogue"
        sent_by_second = catalogue_queries(second)
        asked = len(sent_by_first)
        assert ask(second) is True
        assert ask(first) is True
        assert sent_by_second == [] and len(sent_by_first) == asked
    finally:
        first.dispose()
        second.dispose()


def test_a_no_is_asked_again(dagster_url: str) -> None:
    storage = build(PooledPostgresEventLogStorage, dagster_url)
    try:
        sent = catalogue_queries(storage)
        assert storage.has_table("no_such_table") is False
        asked = len(sent)
        assert storage.has_table("no_such_table") is False
        assert asked >= 1 and len(sent) == 2 * asked
    finally:
        storage.dispose()
