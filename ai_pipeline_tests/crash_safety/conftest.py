from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from ai_pipeline.db import settling
from ai_pipeline_tests.support.harness_fixtures import (  # noqa: F401
    _fresh_emulator,
    harness,
    replicate_client,
)


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
            settling.mark_canceled(conn, request_id, None, "test over")
