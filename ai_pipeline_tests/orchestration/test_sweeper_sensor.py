"""The sweeper sensor: each tick settles the leases dead runs left behind and says what it did in its
skip reason (it launches no runs); a tick right after changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dagster import SkipReason, build_sensor_context
from sqlalchemy import Engine

from ai_pipeline.credits import balance
from ai_pipeline.db import claims
from ai_pipeline.definitions import build_definitions
from ai_pipeline.settings import Settings
from ai_pipeline_tests.crash_safety.crashes import DeadRun, request_row
from ai_pipeline_tests.db.transitions_support import setup_requests

pytestmark = pytest.mark.usefixtures("no_open_request_left")

NOTHING_DONE = (
    "released 0 expired lease(s), gave up on 0 (refunded), sent 0 cancel(s) to Replicate,"
    " canceled 0 request(s), queued 0 retry(ies)"
)


def tick(settings: Settings) -> SkipReason:
    """One tick of the sweeper of the code location `settings` configure."""
    defs = build_definitions(settings)
    result = defs.resolve_sensor_def("sweeper")(build_sensor_context(definitions=defs))
    assert isinstance(result, SkipReason)
    return result


def sweeper_settings(configure: Callable[..., Settings], **overrides: Any) -> Settings:
    # Failures these tests leave must never come due for a retry while the module runs: a later
    # test's tick would queue it and report it.
    return configure(retry_backoff_seconds=3600, **overrides)


def test_a_tick_releases_an_expired_lease_keeping_debit_and_prediction_and_says_so(
    engine: Engine, configure: Callable[..., Settings], unique: str, capfd: pytest.CaptureFixture[str]
) -> None:
    _, batch, (expired_id, live_id, _) = setup_requests(engine, unique, count=3)
    dead = DeadRun(engine, None, f"dead-{unique}:0")
    (expired,) = dead.claim(batch, limit=1)
    dead.charge(expired)
    dead.record(expired, f"p-{unique}")
    dead.die()
    DeadRun(engine, None, f"alive-{unique}:0").claim(batch, limit=1, lease_seconds=3600)
    live_before = request_row(engine, live_id)

    result = tick(sweeper_settings(configure))

    summary = (
        "released 1 expired lease(s), gave up on 0 (refunded), sent 0 cancel(s) to Replicate,"
        " canceled 0 request(s), queued 0 retry(ies)"
    )
    assert result.skip_message == summary
    assert summary in capfd.readouterr().err
    row = request_row(engine, expired_id)
    assert (row.status, row.lease_owner, row.prediction_id) == ("pending", None, f"p-{unique}")
    assert row.error == "lease expired: the run holding it stopped"
    assert (row.debits, row.refunds) == (1, 0)
    assert request_row(engine, live_id) == live_before


def test_a_tick_gives_up_on_a_request_out_of_attempts_failing_and_refunding_it(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    user, batch, (request_id,) = setup_requests(engine, unique, count=1, credits=5)
    dead = DeadRun(engine, None, f"dead-{unique}:0")
    (request,) = dead.claim(batch)
    dead.charge(request)
    dead.die()

    result = tick(sweeper_settings(configure, max_attempts=1))

    assert result.skip_message == (
        "released 0 expired lease(s), gave up on 1 (refunded), sent 0 cancel(s) to Replicate,"
        " canceled 0 request(s), queued 0 retry(ies)"
    )
    row = request_row(engine, request_id)
    assert (row.status, row.retryable, row.lease_owner) == ("failed", True, None)
    assert row.error == "gave up after 1 attempts: the run holding it stopped"
    assert (row.debits, row.refunds) == (1, 1)
    with engine.connect() as conn:
        assert balance(conn, user) == 5


def test_a_second_tick_right_after_the_first_changes_nothing_and_says_so(
    engine: Engine, configure: Callable[..., Settings], unique: str, capfd: pytest.CaptureFixture[str]
) -> None:
    user, batch, ids = setup_requests(engine, unique, count=3)
    # The first request's earlier run was given back; the run that claimed it again died with it and
    # the second request: one is out of its two attempts, the other is released.
    earlier = DeadRun(engine, None, f"earlier-{unique}:0")
    earlier.claim(batch, limit=1)
    with engine.begin() as conn:
        claims.release_run(conn, f"earlier-{unique}", "run failed; request released for retry")
    dead = DeadRun(engine, None, f"dead-{unique}:0")
    for request in dead.claim(batch, limit=2):
        dead.charge(request)
    dead.die()
    settings = sweeper_settings(configure, max_attempts=2)
    first = tick(settings)
    assert first.skip_message is not None and first.skip_message.startswith(
        "released 1 expired lease(s), gave up on 1 (refunded)"
    )
    with engine.connect() as conn:
        before = ({i: request_row(engine, i) for i in ids}, balance(conn, user))
    capfd.readouterr()

    second = tick(settings)

    assert second.skip_message == NOTHING_DONE
    with engine.connect() as conn:
        assert ({i: request_row(engine, i) for i in ids}, balance(conn, user)) == before
    assert "released" not in capfd.readouterr().err
