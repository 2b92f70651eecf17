"""Caps on predictions in flight hold across runs: several run workers at once never have more
predictions at Replicate than `AI_PIPELINE_MAX_IN_FLIGHT` between them, nor more of a model than its
`max_in_flight`; and a SIGKILLed run's slots come back when its lease runs out."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import replicate
from sqlalchemy import Engine, text

from ai_pipeline.catalogue import ModelSpec, upsert_models
from ai_pipeline.credits import grant
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.dev.emulator import CAPTION_MODEL, CAPTION_MODEL_VERSION
from ai_pipeline.storage.uploads import object_check
from ai_pipeline_tests.crash_safety.crashes import batch_statuses, start_worker
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness
from ai_pipeline_tests.support.settings import TEST_TOKEN

LEASE_SECONDS = 3
ALL_CAP = 6
CAPPED_MODEL_CAP = 2


def _most_at_once(spans: list[tuple[str, str]]) -> int:
    """The most of these (created_at, completed_at) spans that overlap at any moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def _listed(harness: PipelineHarness, marker: str) -> list[Any]:
    """Every prediction at Replicate (the emulator) whose prompt holds `marker`."""
    client = replicate.Client(api_token=TEST_TOKEN, base_url=harness.emulator.base_url)
    found = []
    page = client.predictions.list()
    while True:
        found += [p for p in page.results if p.input and marker in str(p.input.get("prompt"))]
        if not page.next:
            return found
        page = client.predictions.list(page.next)


def _spans(harness: PipelineHarness, marker: str) -> dict[str, list[tuple[str, str]]]:
    """When each of those predictions ran, by model."""
    spans: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for prediction in _listed(harness, marker):
        assert prediction.created_at and prediction.completed_at
        spans[prediction.model].append((prediction.created_at, prediction.completed_at))
    return spans


def _fill(engine: Engine, batch: str, user: str, model: str, count: int, unique: str) -> None:
    with engine.begin() as conn:
        for i in range(count):
            insert_request(conn, user, model=model, batch_id=batch, input={"prompt": f"{batch} {i} {unique}"})


def _finish(workers: list[Any]) -> list[dict[str, int]]:
    outcomes = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        outcomes.append(json.loads(out.decode().strip().splitlines()[-1]))
    return outcomes


def test_runs_at_once_keep_to_the_caps_on_predictions_in_flight_between_them(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    capped, user = f"capped-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        upsert_models(
            conn,
            [ModelSpec(capped, 1, replicate_version=CAPTION_MODEL_VERSION, max_in_flight=CAPPED_MODEL_CAP)],
        )
        grant(conn, user, 100)
    batches = [f"caps-{n}-{unique}" for n in range(3)]
    _fill(engine, batches[0], user, "emulator/image", 20, unique)
    _fill(engine, batches[1], user, capped, 10, unique)
    _fill(engine, batches[2], user, "emulator/image", 10, unique)
    _fill(engine, batches[2], user, capped, 10, unique)
    harness.emulator.configure(predict_seconds=0.4, predict_jitter_seconds=0.1)

    workers = [
        start_worker(
            harness, batch, f"worker-{n}-{unique}", lease_seconds=LEASE_SECONDS, max_in_flight=ALL_CAP
        )
        for n, batch in enumerate(batches)
    ]
    outcomes = _finish(workers)

    assert [sum(o.values()) for o in outcomes] == [20, 10, 20]
    assert all(
        batch_statuses(engine, batch) == {"succeeded": 20 if batch != batches[1] else 10} for batch in batches
    )
    spans = _spans(harness, unique)
    everything = [span for model_spans in spans.values() for span in model_spans]
    assert len(everything) == 50
    # Three runs of up to 6 each could have had 18 at once, and the capped model 6.
    assert ALL_CAP - 2 <= _most_at_once(everything) <= ALL_CAP
    assert _most_at_once(spans[CAPTION_MODEL]) <= CAPPED_MODEL_CAP
    with engine.connect() as conn:
        for batch in batches:
            report = check_invariants(conn, batch_id=batch, verify_object=object_check(harness.s3))
            assert report.ok, report.summary()
        assert (
            conn.execute(
                text("SELECT count(*) FROM flight_holds WHERE owner LIKE :p"), {"p": f"%{unique}"}
            ).scalar()
            == 0
        )


def test_the_slots_of_a_run_killed_mid_batch_come_back_when_its_lease_runs_out(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    user = f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 100)
    doomed, later = f"doomed-{unique}", f"later-{unique}"
    _fill(engine, doomed, user, "emulator/image", 4, unique)
    _fill(engine, later, user, "emulator/image", 4, unique)
    harness.emulator.configure(predict_seconds=30.0, predict_jitter_seconds=0.0)
    caps = {"lease_seconds": LEASE_SECONDS, "max_in_flight": 4}

    worker = start_worker(harness, doomed, f"doomed-{unique}", **caps)
    try:
        deadline = time.monotonic() + 60
        while _holding(engine, f"doomed-{unique}") < 4 or len(_listed(harness, doomed)) < 4:
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never got going"
            time.sleep(0.1)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    killed_at = time.time()
    harness.emulator.configure(predict_seconds=0.2)

    (outcome,) = _finish([start_worker(harness, later, f"later-{unique}", **caps)])

    assert outcome == {"succeeded": 4}
    later_creates = [prediction.created_at for prediction in _listed(harness, later)]
    assert len(later_creates) == 4
    # Not before the dead run's lease on its slots ran out (renewed at most a second before the kill).
    first = min(_epoch(created) for created in later_creates if created)
    assert first >= killed_at + LEASE_SECONDS - 1.2


def _holding(engine: Engine, owner: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT coalesce(sum(held), 0) FROM flight_holds WHERE owner = :o AND pool = 'replicate'"
                ),
                {"o": owner},
            ).scalar_one()
        )


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
