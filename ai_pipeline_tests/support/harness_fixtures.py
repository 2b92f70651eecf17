"""Fixtures of the folders that run the real pipeline (`pipeline/`, `crash_safety/`), imported by their
conftests: one harness (daemon-less Dagster, emulator, S3) per module, the emulator reset per test, and
a plain Replicate client on that emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import replicate
from sqlalchemy import Engine

from ai_pipeline_tests.support.pipeline import PipelineHarness, emulator_seed_for, pipeline_harness
from ai_pipeline_tests.support.settings import TEST_TOKEN


@pytest.fixture(scope="module")
def harness(engine: Engine, database_url: str, request: pytest.FixtureRequest) -> Iterator[PipelineHarness]:
    seed = emulator_seed_for(request.module.__name__)
    with pipeline_harness(engine, database_url, seed=seed) as harness:
        yield harness


@pytest.fixture(autouse=True)
def _fresh_emulator(harness: PipelineHarness) -> None:
    harness.emulator.reset(restore_config=True)
    harness.emulator.configure(predict_seconds=0.2, predict_jitter_seconds=0.05)


@pytest.fixture
def replicate_client(harness: PipelineHarness) -> replicate.Client:
    """A plain (blocking) client on the emulator, for what tests do at Replicate themselves."""
    return replicate.Client(api_token=TEST_TOKEN, base_url=harness.emulator.base_url)
