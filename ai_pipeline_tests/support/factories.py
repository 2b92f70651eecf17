"""Small helpers that write rows the way an application would."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.catalogue import ModelSpec, upsert_models

TEST_MODEL = "test/image"


def ensure_test_model(conn: Connection, name: str = TEST_MODEL, credits_per_run: int = 1) -> str:
    upsert_models(
        conn,
        [ModelSpec(name=name, credits_per_run=credits_per_run, replicate_version="0" * 64)],
    )
    return name


def insert_request(
    conn: Connection,
    user_id: str,
    *,
    model: str = TEST_MODEL,
    batch_id: str | None = None,
    input: dict[str, Any] | None = None,
    external_id: str | None = None,
) -> int:
    """Insert one pending request as an application would and return its id."""
    return conn.execute(
        text(
            "INSERT INTO generation_requests (external_id, batch_id, user_id, model, input)"
            " VALUES (:external_id, :batch_id, :user_id, :model, CAST(:input AS jsonb)) RETURNING id"
        ),
        {
            "external_id": external_id,
            "batch_id": batch_id,
            "user_id": user_id,
            "model": model,
            "input": json.dumps(input or {"prompt": "a red fox"}),
        },
    ).scalar_one()
