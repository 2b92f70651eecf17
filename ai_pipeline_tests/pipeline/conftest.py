from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from ai_pipeline.db.engine import engine_for_url
from ai_pipeline_tests.support.databases import migrated_database
from ai_pipeline_tests.support.harness_fixtures import _fresh_emulator, harness  # noqa: F401


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: its sensor works through every batch with due work, and must
    never see what other modules left behind."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    return engine_for_url(database_url, pool_size=20)
