"""Trouble with the Replicate account pauses the pipeline and it resumes on its own: a token revoked,
billing stopped or the service down mid-batch fails nothing, refunds nothing, charges nobody twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner, Result
from dagster import SkipReason
from sqlalchemy import Engine, text

from ai_pipeline.cli import main
from ai_pipeline.credits import balance, grant
from ai_pipeline.db import breakers, settling
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.orchestration.assets import REPLICATE_TAG
from ai_pipeline.replicate.breaker import REPLICATE_BREAKER
from ai_pipeline.storage.uploads import object_check
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness

REQUESTS = 60


class TroubleMidway(threading.Thread):
    """Once `after` requests of the batch succeeded, `start()` trouble at Replicate; `end()` it
    `seconds` later."""

    def __init__(
        self,
        engine: Engine,
        batch: str,
        after: int,
        start: Callable[[], Any],
        end: Callable[[], Any],
        seconds: float,
    ) -> None:
        super().__init__(daemon=True)
        self.engine, self.batch, self.after, self.seconds = engine, batch, after, seconds
        self.start_trouble, self.end_trouble = start, end
        self.succeeded_before = -1

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _succeeded(self.engine, self.batch) < self.after:
            time.sleep(0.02)
        self.start_trouble()
        self.succeeded_before = _succeeded(self.engine, self.batch)
        time.sleep(self.seconds)
        self.end_trouble()


def _succeeded(engine: Engine, batch: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM generation_requests WHERE batch_id = :b AND status = 'succeeded'"),
                {"b": batch},
            ).scalar_one()
        )


def _batch(engine: Engine, name: str, unique: str) -> tuple[str, str]:
    batch, user = f"{name}-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, REQUESTS + 10)
        for i in range(REQUESTS):
            insert_request(
                conn, user, model="emulator/image", batch_id=batch, input={"prompt": f"{unique} {i}"}
            )
    return batch, user


def _run_through_trouble(harness: PipelineHarness, batch: str, trouble: TroubleMidway) -> Any:
    trouble.start()
    result = harness.run_batch(
        batch, defs=harness.definitions(max_in_flight=10, breaker_cooldown_seconds=0.3)
    )
    trouble.join(timeout=5)
    return result


def _assert_all_succeeded_charged_once(
    harness: PipelineHarness, engine: Engine, batch: str, user: str
) -> None:
    with engine.connect() as conn:
        ledger = conn.execute(
            text(
                "SELECT l.kind, count(*) AS entries, count(DISTINCT l.request_id) AS requests"
                " FROM credit_ledger l JOIN generation_requests r ON r.id = l.request_id"
                " WHERE r.batch_id = :b GROUP BY l.kind"
            ),
            {"b": batch},
        ).all()
        statuses = dict(
            conn.execute(
                text("SELECT status, count(*) FROM generation_requests WHERE batch_id = :b GROUP BY status"),
                {"b": batch},
            ).all()
        )
        report = check_invariants(conn, batch_id=batch, verify_object=object_check(harness.s3))
        assert report.ok, report.summary()
        assert balance(conn, user) == 10
    assert statuses == {"succeeded": REQUESTS}
    assert {row.kind: (row.entries, row.requests) for row in ledger} == {"debit": (REQUESTS, REQUESTS)}
    assert harness.emulator.stats()["creates_by_input"]["duplicate_creates"] == 0


def _paused_seconds(harness: PipelineHarness, result: Any) -> float:
    (materialization,) = result.asset_materializations_for_node("batch_generations")
    return float(materialization.metadata["replicate_paused_seconds"].value)


def test_a_token_revoked_then_restored_mid_batch_pauses_the_run_and_fails_nothing(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, user = _batch(engine, "revoked", unique)
    trouble = TroubleMidway(
        engine,
        batch,
        after=15,
        start=lambda: harness.emulator.configure(token="r8_the-rotated-token"),  # ours is refused: 401
        end=lambda: harness.emulator.configure(token=None),
        seconds=3.0,
    )

    result = _run_through_trouble(harness, batch, trouble)

    assert result.success
    assert trouble.succeeded_before < REQUESTS  # the trouble came mid-batch
    _assert_all_succeeded_charged_once(harness, engine, batch, user)
    assert harness.emulator.stats()["responses_401"] > 0
    assert _paused_seconds(harness, result) >= 2.0
    assert harness.instance.get_run_by_id(result.run_id).tags[REPLICATE_TAG] == "resumed"
    with engine.connect() as conn:
        assert breakers.read_breaker(conn, REPLICATE_BREAKER).closed


def test_billing_stopped_then_restored_mid_batch_pauses_the_run_and_fails_nothing(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, user = _batch(engine, "billing", unique)
    trouble = TroubleMidway(
        engine,
        batch,
        after=15,
        start=lambda: harness.emulator.configure(billing_required=True),  # creates answer 402
        end=lambda: harness.emulator.configure(billing_required=False),
        seconds=3.0,
    )

    result = _run_through_trouble(harness, batch, trouble)

    assert result.success
    _assert_all_succeeded_charged_once(harness, engine, batch, user)
    assert harness.emulator.stats()["responses_by_status"]["402"] > 0
    assert _paused_seconds(harness, result) >= 1.0


def test_replicate_failing_every_call_pauses_the_run_until_it_answers_again(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, user = _batch(engine, "outage", unique)
    every_call = {"create": 1.0, "get": 1.0, "other": 1.0}
    trouble = TroubleMidway(
        engine,
        batch,
        after=15,
        # 500 and 502: the client itself tries GETs again on 503 and 504, for minutes.
        start=lambda: harness.emulator.configure(http_error_rates=every_call, http_error_statuses=[500, 502]),
        end=lambda: harness.emulator.configure(http_error_rates=None, http_error_statuses=None),
        seconds=4.0,
    )

    result = _run_through_trouble(harness, batch, trouble)

    assert result.success
    _assert_all_succeeded_charged_once(harness, engine, batch, user)
    assert _paused_seconds(harness, result) >= 1.0


def _open(engine: Engine) -> None:
    with engine.begin() as conn:
        state = breakers.read_breaker(conn, REPLICATE_BREAKER)
        assert breakers.open_breaker(
            conn,
            REPLICATE_BREAKER,
            "Replicate 401: You did not pass a valid authentication token",
            generation=state.generation,
            first_cooldown=60,
            longest_cooldown=600,
        )


def test_status_says_while_replicate_pauses_work_and_why(harness: PipelineHarness, engine: Engine) -> None:
    def status(*args: str) -> Result:
        return CliRunner().invoke(
            main, ["status", *args], env={"AI_PIPELINE_DATABASE_URL": harness.database_url}
        )

    assert "Replicate" not in status().output
    _open(engine)
    try:
        paused = status()
        as_json = status("--json")
    finally:
        _close(engine)

    assert paused.exit_code == 0
    assert (
        "Replicate paused since" in paused.output
        and "401" in paused.output
        and "next probe at" in paused.output
    )
    assert "Replicate paused since" in as_json.stderr
    json.loads(as_json.stdout)  # the JSON itself keeps its shape


def test_the_sensor_launches_no_run_while_replicate_pauses_work_and_says_why(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, _ = _batch(engine, "waiting", unique)
    _open(engine)
    try:
        skipped = harness.tick()
        assert isinstance(skipped, SkipReason)
        assert "Replicate paused since" in str(skipped.skip_message) and "401" in str(skipped.skip_message)

        with engine.begin() as conn:  # the probe is due: a run is launched to make it
            conn.execute(
                text("UPDATE circuit_breakers SET probe_at = now() WHERE name = :n"), {"n": REPLICATE_BREAKER}
            )
        launched = harness.tick()
        assert not isinstance(launched, SkipReason)
        assert batch in {request.partition_key for request in launched.run_requests}
    finally:
        _close(engine)
        with engine.begin() as conn:
            for request_id in conn.execute(
                text("SELECT id FROM generation_requests WHERE batch_id = :b"), {"b": batch}
            ).scalars():
                settling.mark_canceled(conn, request_id, None, "test over")


def _close(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE circuit_breakers SET state = 'closed', closed_at = now(),"
                " generation = generation + 1, probe_owner = NULL, probe_expires_at = NULL WHERE name = :n"
            ),
            {"n": REPLICATE_BREAKER},
        )
