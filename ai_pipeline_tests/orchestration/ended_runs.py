"""Runs of `process_batch` that ended (failed or canceled) while they held requests, made on purpose in
a real Dagster instance, for the tests of what gives those requests back (run-status sensors, hook)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagster import DagsterEvent, DagsterInstance, DagsterRun, Definitions
from sqlalchemy import Engine

from ai_pipeline.db import settling
from ai_pipeline.orchestration.assets import run_owner
from ai_pipeline.orchestration.jobs import PROCESS_BATCH_JOB
from ai_pipeline_tests.crash_safety.crashes import DeadRun, request_row
from ai_pipeline_tests.db.transitions_support import setup_requests

CREDITS = 10


@dataclass(frozen=True)
class Ending:
    """How a run ended, the sensor that answers it, and the error it leaves on what it gives back."""

    sensor: str
    report: Callable[[DagsterInstance, DagsterRun], DagsterEvent]
    error: str


FAILED = Ending(
    "release_after_run_failure",
    lambda instance, run: instance.report_run_failed(run),
    "run failed; request released for retry",
)
CANCELED = Ending(
    "release_after_run_cancel",
    lambda instance, run: instance.report_run_canceled(run),
    "run canceled; request released for retry",
)


@dataclass(frozen=True)
class EndedRun:
    """A run that ended part-way through its batch, which another run is working on too."""

    run: DagsterRun
    event: DagsterEvent
    user: str
    held_by_first_attempt: int  # charged, its prediction recorded
    held_by_retry: int  # charged, the prediction not created yet
    finished_by_the_run: int  # failed (refunded) before the run ended
    held_by_another_run: int
    never_claimed: int

    @property
    def held(self) -> list[int]:
        return [self.held_by_first_attempt, self.held_by_retry]

    @property
    def not_held(self) -> list[int]:
        return [self.finished_by_the_run, self.held_by_another_run, self.never_claimed]

    def rows(self, engine: Engine) -> dict[int, Any]:
        """Every request of the batch as it is now, with its debits and refunds."""
        return {request_id: request_row(engine, request_id) for request_id in self.held + self.not_held}


def ended_run(
    engine: Engine, instance: DagsterInstance, defs: Definitions, unique: str, ending: Ending
) -> EndedRun:
    """A run of the batch job whose attempts 0 and 1 hold a request each (and finished one), beside
    another run holding one, then ended as `ending` says. The user had `CREDITS` credits."""
    user, batch, ids = setup_requests(engine, unique, count=5, credits=CREDITS)
    run = instance.create_run_for_job(
        defs.resolve_job_def(PROCESS_BATCH_JOB), tags={"dagster/partition": batch}
    )
    first = DeadRun(engine, None, run_owner(run.run_id, 0))
    held, finished = first.claim(batch, limit=2)
    first.charge(held)
    first.record(held, f"p-{unique}")
    first.charge(finished)
    with engine.begin() as conn:
        assert settling.mark_failed(conn, finished.id, first.owner, "NSFW content detected", retryable=False)
    retry = DeadRun(engine, None, run_owner(run.run_id, 1))
    (held_by_retry,) = retry.claim(batch, limit=1)
    retry.charge(held_by_retry)
    other = DeadRun(engine, None, run_owner(str(uuid.uuid4()), 0))
    (held_by_other,) = other.claim(batch, limit=1)
    other.charge(held_by_other)

    event = ending.report(instance, run)
    ended = instance.get_run_by_id(run.run_id)
    assert ended is not None and ended.is_finished
    return EndedRun(ended, event, user, held.id, held_by_retry.id, finished.id, held_by_other.id, ids[4])
