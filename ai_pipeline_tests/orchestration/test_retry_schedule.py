"""The retry schedule: every 15 minutes, retryable failures older than the retry backoff are requeued once
(new requests pointing at them) and their batches relaunched; anything else is left alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dagster import RunRequest, SkipReason, build_schedule_context
from sqlalchemy import Connection, Engine, text

from ai_pipeline.db import cancels, recovery
from ai_pipeline.definitions import build_definitions
from ai_pipeline.settings import Settings
from ai_pipeline_tests.crash_safety.crashes import failed_ago
from ai_pipeline_tests.db.transitions_support import setup_requests

# Failures these tests leave "recent" stay within the backoff for as long as the module runs.
BACKOFF = 3600.0
OLD, RECENT = BACKOFF * 2, 60.0


def evaluate(settings: Settings) -> SkipReason | list[RunRequest]:
    """One evaluation of the code location's retry schedule, as the daemon makes it."""
    defs = build_definitions(settings)
    return defs.resolve_schedule_def("retry_failed_batches")(build_schedule_context())  # type: ignore[no-any-return]


def failed_batch(
    engine: Engine, name: str, *, count: int = 1, retryable: bool = True, ago: float = OLD
) -> list[int]:
    """A batch `b-<name>` whose `count` requests failed (refunded) `ago` seconds ago."""
    _, _, ids = setup_requests(engine, name, count=count)
    for request_id in ids:
        failed_ago(engine, request_id, retryable=retryable, seconds_ago=ago)
    return ids


def retries_of(engine: Engine, ids: list[int]) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT r.*, f.input AS failed_input, f.user_id AS failed_user,"
                    " f.batch_id AS failed_batch,"
                    " (SELECT count(*) FROM credit_ledger l WHERE l.request_id = r.id) AS ledger_entries"
                    " FROM generation_requests r JOIN generation_requests f ON f.id = r.retry_of"
                    " WHERE r.retry_of = ANY(:ids) ORDER BY r.retry_of"
                ),
                {"ids": ids},
            )
        )


def test_retryable_failures_older_than_the_backoff_are_requeued_once_as_new_requests(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    failed = failed_batch(engine, unique, count=2)
    settings = configure(retry_backoff_seconds=BACKOFF)

    evaluate(settings)
    again = evaluate(settings)

    retries = retries_of(engine, failed)
    assert [r.retry_of for r in retries] == failed
    for retry in retries:
        assert retry.status == "pending"
        assert (retry.batch_id, retry.user_id, retry.input) == (
            retry.failed_batch,
            retry.failed_user,
            retry.failed_input,
        )
        assert retry.ledger_entries == 0  # charged when a run takes it, like any new request
    assert again == SkipReason("no retryable failures")


def test_the_schedule_launches_one_run_per_batch_with_retries_tagged_as_its_own(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    failed_batch(engine, f"{unique}-a", count=2)
    failed_batch(engine, f"{unique}-b")

    requests = evaluate(configure(retry_backoff_seconds=BACKOFF))

    assert isinstance(requests, list)
    # The tag tells the run it was not launched by a person, so it does not reprocess every failure.
    assert sorted((r.partition_key, r.tags) for r in requests) == [
        (f"b-{unique}-a", {"ai_pipeline/launched_by": "retry_schedule"}),
        (f"b-{unique}-b", {"ai_pipeline/launched_by": "retry_schedule"}),
    ]


def test_content_refusals_and_failures_within_the_backoff_are_left_alone(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    _, _, (due, refused, recent) = setup_requests(engine, unique, count=3)
    failed_ago(engine, due, retryable=True, seconds_ago=OLD)
    failed_ago(engine, refused, retryable=False, seconds_ago=OLD)
    failed_ago(engine, recent, retryable=True, seconds_ago=RECENT)

    evaluate(configure(retry_backoff_seconds=BACKOFF))

    assert [r.retry_of for r in retries_of(engine, [due, refused, recent])] == [due]


def test_with_no_failure_due_for_a_retry_the_schedule_skips(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    refused = failed_batch(engine, f"{unique}-refused", retryable=False)
    recent = failed_batch(engine, f"{unique}-recent", ago=RECENT)

    result = evaluate(configure(retry_backoff_seconds=BACKOFF))

    assert result == SkipReason("no retryable failures")
    assert retries_of(engine, refused + recent) == []


def test_a_retry_that_failed_too_is_not_retried_again(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    _, _, (first, second) = setup_requests(engine, unique, count=2)
    failed_ago(engine, first, retryable=True, seconds_ago=OLD)
    settings = configure(retry_backoff_seconds=BACKOFF)
    evaluate(settings)
    (retry,) = retries_of(engine, [first])
    failed_ago(engine, retry.id, retryable=True, seconds_ago=OLD)
    failed_ago(engine, second, retryable=True, seconds_ago=OLD)  # an original failure of the same batch

    evaluate(settings)

    assert [r.retry_of for r in retries_of(engine, [retry.id, second])] == [second]


def test_failures_of_a_canceled_batch_are_not_retried_and_the_schedule_skips(
    engine: Engine, configure: Callable[..., Settings], unique: str
) -> None:
    failed = failed_batch(engine, unique)
    with engine.begin() as conn:
        cancels.cancel_requests(conn, batch_id=f"b-{unique}")

    result = evaluate(configure(retry_backoff_seconds=BACKOFF))

    assert result == SkipReason("no retryable failures")
    assert retries_of(engine, failed) == []


def test_failures_the_sweeper_retried_meanwhile_make_the_schedule_skip(
    engine: Engine, configure: Callable[..., Settings], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = failed_batch(engine, unique)
    list_batches = recovery.batches_with_retryable_failures

    def listed_then_retried_by_the_sweeper(conn: Connection, failed_before_seconds: float) -> list[str]:
        listed = list_batches(conn, failed_before_seconds)
        with engine.begin() as sweeper:  # its own transaction, committed before the schedule copies
            recovery.requeue_due_failures(sweeper, backoff_seconds=BACKOFF, lookback_seconds=OLD * 2)
        return listed

    monkeypatch.setattr(recovery, "batches_with_retryable_failures", listed_then_retried_by_the_sweeper)

    result = evaluate(configure(retry_backoff_seconds=BACKOFF))

    assert result == SkipReason("no retryable failures")
    assert len(retries_of(engine, failed)) == 1
