"""Shared fixtures: a migrated, isolated database on real Postgres for the whole test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from ai_pipeline.db.engine import engine_for_url
from ai_pipeline_tests.support.databases import migrated_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a freshly created database, migrated to the newest schema."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Engine:
    return engine_for_url(database_url, pool_size=20)


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so tests sharing the session database never share rows."""
    return uuid.uuid4().hex[:10]
