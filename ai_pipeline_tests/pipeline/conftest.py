from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.db.migrate import upgrade_database
from ai_pipeline_tests.support.databases import fresh_database
from ai_pipeline_tests.support.pipeline import PipelineHarness, emulator_seed_for, pipeline_harness


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: its sensor works through every batch with due work, and must
    never see what other modules left behind."""
    with fresh_database() as url:
        engine = engine_for_url(url)
        upgrade_database(engine)
        yield url
        engine.dispose()


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    return engine_for_url(database_url, pool_size=20)


@pytest.fixture(scope="module")
def harness(engine: Engine, database_url: str, request: pytest.FixtureRequest) -> Iterator[PipelineHarness]:
    seed = emulator_seed_for(request.module.__name__)
    with pipeline_harness(engine, database_url, seed=seed) as harness:
        yield harness


@pytest.fixture(autouse=True)
def _fresh_emulator(harness: PipelineHarness) -> None:
    harness.emulator.reset(restore_config=True)
    harness.emulator.configure(predict_seconds=0.2, predict_jitter_seconds=0.05)
