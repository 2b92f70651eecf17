"""Fixtures of the Dagster layer's tests: a database of each module's own, a Dagster instance per test,
and the settings and code location on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dagster import DagsterInstance, Definitions
from sqlalchemy import Engine, text

from ai_pipeline.db import settling
from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.definitions import build_definitions
from ai_pipeline.settings import Settings
from ai_pipeline_tests.support.databases import migrated_database
from ai_pipeline_tests.support.settings import settings_for_tests


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: the sensors and the schedule work through every row of the
    database, and their reports count them, so they must never see what other modules left behind."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    return engine_for_url(database_url, pool_size=20)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """An in-memory Dagster instance: runs, their events and dynamic partitions, as the daemon keeps them."""
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def configure(database_url: str) -> Callable[..., Settings]:
    """`configure(**overrides)`: the settings a deployment on this module's database would read."""

    def settings(**overrides: Any) -> Settings:
        return settings_for_tests(database_url, **overrides)

    return settings


@pytest.fixture
def defs(configure: Callable[..., Settings]) -> Definitions:
    """The code location as `definitions.py` builds it, on this module's database."""
    return build_definitions(configure())


@pytest.fixture
def no_open_request_left(engine: Engine) -> Iterator[None]:
    """End (canceled, refunded) whatever a test left open in the module's database: the next test's
    tick would find it otherwise."""
    yield
    with engine.begin() as conn:
        left_open = conn.execute(
            text("SELECT id FROM generation_requests WHERE status IN ('pending', 'processing')")
        ).scalars()
        for request_id in list(left_open):
            settling.mark_canceled(conn, request_id, None, "test over")
