"""Fixtures for the loader tests: models in the catalogue, a fresh batch name per test."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from ai_pipeline.catalogue import ModelSpec, upsert_models
from ai_pipeline_tests.support.factories import ensure_test_model

DISABLED_MODEL = "test/loading-retired"


@pytest.fixture
def model(engine: Engine) -> str:
    """An enabled catalogue model."""
    with engine.begin() as conn:
        return ensure_test_model(conn)


@pytest.fixture
def disabled_model(engine: Engine) -> str:
    """A catalogue model that is switched off."""
    with engine.begin() as conn:
        upsert_models(
            conn,
            [ModelSpec(name=DISABLED_MODEL, credits_per_run=1, replicate_version="1" * 64, enabled=False)],
        )
    return DISABLED_MODEL


@pytest.fixture
def batch(unique: str) -> str:
    """A batch name no other test uses."""
    return f"load-{unique}"
