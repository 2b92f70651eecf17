from __future__ import annotations

from collections.abc import Iterator

import pytest
import replicate
from sqlalchemy import Engine, text

from ai_pipeline.db import requests as transitions
from ai_pipeline_tests.support.pipeline import (
    TEST_TOKEN,
    PipelineHarness,
    emulator_seed_for,
    pipeline_harness,
)


@pytest.fixture(scope="module")
def harness(engine: Engine, database_url: str, request: pytest.FixtureRequest) -> Iterator[PipelineHarness]:
    seed = emulator_seed_for(request.module.__name__)
    with pipeline_harness(engine, database_url, seed=seed) as harness:
        yield harness


@pytest.fixture(autouse=True)
def _fresh_emulator(harness: PipelineHarness) -> None:
    harness.emulator.reset(restore_config=True)
    harness.emulator.configure(predict_seconds=0.2, predict_jitter_seconds=0.05)


@pytest.fixture(autouse=True)
def _leave_no_open_request(engine: Engine, unique: str) -> Iterator[None]:
    """End (canceled, refunded) what a test left open: later modules' sensors work through every batch
    with due work, and a leftover would be run, and counted, there."""
    yield
    with engine.begin() as conn:
        left_open = conn.execute(
            text(
                "SELECT id FROM generation_requests WHERE batch_id LIKE :pattern"
                " AND status IN ('pending', 'processing')"
            ),
            {"pattern": f"%-{unique}"},
        ).scalars()
        for request_id in list(left_open):
            transitions.mark_canceled(conn, request_id, None, "test over")


@pytest.fixture
def replicate_client(harness: PipelineHarness) -> replicate.Client:
    """A plain (blocking) client on the emulator, for what tests do at Replicate themselves."""
    return replicate.Client(api_token=TEST_TOKEN, base_url=harness.emulator.base_url)
