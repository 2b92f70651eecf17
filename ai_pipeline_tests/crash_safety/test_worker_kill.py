"""A run worker SIGKILLed mid-batch: after the sweeper and the next run, nothing is open, nobody is charged
twice, and no request that had a prediction gets a second one."""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import Engine, text

from ai_pipeline.credits import grant
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.storage.uploads import object_check
from ai_pipeline_tests.crash_safety.crashes import batch_statuses, creates_of, start_worker, sweep_once
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness

LEASE_SECONDS = 3


def _in_flight_predictions(engine: Engine, batch: str) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT id, prediction_id FROM generation_requests WHERE batch_id = :b"
                    " AND status = 'processing' AND prediction_id IS NOT NULL"
                ),
                {"b": batch},
            ).all()
        )


def test_a_worker_killed_mid_batch_leaves_nothing_open_nor_charged_twice_nor_predicted_twice(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, user = f"killed-{unique}", f"u-{unique}"
    inputs = {}
    with engine.begin() as conn:
        grant(conn, user, 100)
        for i in range(30):
            model_input = {"prompt": f"a paper crane {i} {unique}"}
            inputs[insert_request(conn, user, model="emulator/image", batch_id=batch, input=model_input)] = (
                model_input
            )
    harness.emulator.configure(predict_seconds=3.0, predict_jitter_seconds=0.5)

    worker = start_worker(harness, batch, owner=f"worker-{unique}", lease_seconds=LEASE_SECONDS)
    try:
        deadline = time.monotonic() + 60
        while len(_in_flight_predictions(engine, batch)) < 10:
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never got going"
            time.sleep(0.1)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    had_a_prediction = _in_flight_predictions(engine, batch)
    assert had_a_prediction, "the worker was killed with nothing in flight"
    time.sleep(LEASE_SECONDS + 0.5)  # nobody renews the dead worker's leases

    sweep_once(harness)
    harness.run_batch(batch)
    sweep_once(harness)

    assert set(batch_statuses(engine, batch)) == {"succeeded"}
    with engine.connect() as conn:
        report = check_invariants(conn, batch_id=batch, verify_object=object_check(harness.s3))
        final = dict(
            conn.execute(
                text("SELECT id, prediction_id FROM generation_requests WHERE id = ANY(:ids)"),
                {"ids": list(had_a_prediction)},
            ).all()
        )
    assert report.ok, report.summary()  # includes: at most one debit per request, money follows outcome
    assert final == had_a_prediction
    assert all(creates_of(harness, inputs[request_id]) == 1 for request_id in had_a_prediction)
    assert harness.emulator.stats()["creates_by_input"]["duplicate_creates"] == 0
