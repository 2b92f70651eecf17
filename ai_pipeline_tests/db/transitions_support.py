"""Set-up shared by the transition tests: a user with credits, a batch of pending requests."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ai_pipeline.credits import grant
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

CT = "image_generation"


def setup_requests(
    engine: Engine, unique: str, count: int = 3, credits: int = 10
) -> tuple[str, str, list[int]]:
    user, batch = f"u-{unique}", f"b-{unique}"
    with engine.begin() as conn:
        ensure_test_model(conn)
        grant(conn, user, credits)
        ids = [insert_request(conn, user, batch_id=batch) for _ in range(count)]
    return user, batch, ids


def status_of(engine: Engine, request_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).scalar_one()


def lease_left(engine: Engine, request_id: int) -> float | None:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT EXTRACT(EPOCH FROM lease_expires_at - now()) FROM generation_requests WHERE id = :id"
            ),
            {"id": request_id},
        ).scalar_one()
