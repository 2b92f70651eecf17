from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest
import replicate
from sqlalchemy import Engine

from ai_pipeline_tests.support.pipeline import TEST_TOKEN, PipelineHarness, pipeline_harness


@pytest.fixture(scope="module")
def harness(engine: Engine, database_url: str, request: pytest.FixtureRequest) -> Iterator[PipelineHarness]:
    # Each module starts its own emulator; a seed of its own keeps its prediction ids apart from the
    # ids the other modules' emulators stored in the shared database.
    seed = zlib.crc32(request.module.__name__.encode())
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
