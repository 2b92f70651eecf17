from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from ai_pipeline_tests.support.pipeline import PipelineHarness, pipeline_harness


@pytest.fixture(scope="module")
def harness(engine: Engine, database_url: str) -> Iterator[PipelineHarness]:
    with pipeline_harness(engine, database_url) as harness:
        yield harness


@pytest.fixture(autouse=True)
def _fresh_emulator(harness: PipelineHarness) -> None:
    harness.emulator.reset(restore_config=True)
    harness.emulator.configure(predict_seconds=0.2, predict_jitter_seconds=0.05)
