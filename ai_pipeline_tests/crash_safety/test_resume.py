"""A run that died leaves its requests claimed; they are resumed where they were, never created twice."""

from __future__ import annotations

import time

import replicate
from sqlalchemy import Engine

from ai_pipeline.credits import balance, grant
from ai_pipeline.db import claims
from ai_pipeline_tests.crash_safety.crashes import DeadRun, creates_of, request_row, sweep_once
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness


def _one_request(engine: Engine, unique: str) -> tuple[str, str, int, dict[str, str]]:
    batch, user, model_input = f"resume-{unique}", f"u-{unique}", {"prompt": f"a lighthouse {unique}"}
    with engine.begin() as conn:
        grant(conn, user, 5)
        request_id = insert_request(conn, user, model="emulator/image", batch_id=batch, input=model_input)
    return batch, user, request_id, model_input


def test_a_request_whose_run_died_after_storing_its_prediction_resumes_that_prediction(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, user, request_id, model_input = _one_request(engine, unique)
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "record")

    sweep_once(harness)
    assert request_row(engine, request_id).status == "pending"
    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "succeeded" and row.prediction_id == prediction_id
    assert creates_of(harness, model_input) == 1
    assert (row.debits, row.refunds) == (1, 0)
    with engine.connect() as conn:
        assert balance(conn, user) == 4


def test_an_intent_without_a_stored_id_is_reconciled_with_the_prediction_it_created(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, request_id, model_input = _one_request(engine, unique)
    # The answer never got stored: the worker died first.
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "create")

    sweep_once(harness)
    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "succeeded" and row.prediction_id == prediction_id
    assert creates_of(harness, model_input) == 1
    assert (row.debits, row.refunds) == (1, 0)


def test_an_intent_is_reconciled_at_the_first_resume_although_listing_answers_errors(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, request_id, model_input = _one_request(engine, unique)
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "create")
    sweep_once(harness)
    # More failures in a row than a run retries one call: each page of the listing must be retried.
    harness.emulator.configure(scripted_faults={"other": [502, "drop", 503, 500, "drop", 502]})

    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "succeeded" and row.prediction_id == prediction_id
    assert creates_of(harness, model_input) == 1


def test_an_intent_whose_create_never_left_creates_exactly_one_prediction_and_charges_once(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, user, request_id, model_input = _one_request(engine, unique)
    DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "charge")  # before the create

    sweep_once(harness)
    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "succeeded" and row.prediction_id is not None
    assert creates_of(harness, model_input) == 1
    assert (row.debits, row.refunds) == (1, 0)
    with engine.connect() as conn:
        assert balance(conn, user) == 4


def test_a_run_reclaims_expired_leases_of_its_batch_without_waiting_for_the_sweeper(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, request_id, model_input = _one_request(engine, unique)
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "record")

    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "succeeded" and row.prediction_id == prediction_id
    assert creates_of(harness, model_input) == 1


def test_a_live_lease_is_left_to_the_run_that_holds_it(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    batch, _, request_id, _ = _one_request(engine, unique)
    DeadRun(engine, replicate_client, f"slow-{unique}").claim(batch, lease_seconds=60)

    sweep_once(harness)
    harness.run_batch(batch)

    row = request_row(engine, request_id)
    with engine.begin() as conn:
        claims.release_run(conn, f"slow-{unique}", "test over")  # leave no lease to expire later
    assert row.status == "processing" and row.lease_owner == f"slow-{unique}"


def test_a_resumed_prediction_whose_output_replicate_deleted_fails_and_is_refunded(
    harness: PipelineHarness, engine: Engine, replicate_client: replicate.Client, unique: str
) -> None:
    harness.emulator.configure(output_ttl=0.5)
    batch, user, request_id, _ = _one_request(engine, unique)
    _, prediction_id = DeadRun(engine, replicate_client, f"dead-{unique}").die_after(batch, "record")
    while replicate_client.predictions.get(prediction_id).status != "succeeded":
        time.sleep(0.1)
    time.sleep(1.0)  # the output is deleted before anyone resumes the request

    sweep_once(harness)
    harness.run_batch(batch)

    row = request_row(engine, request_id)
    assert row.status == "failed" and "output deleted" in row.error
    assert (row.debits, row.refunds) == (1, 1)
    with engine.connect() as conn:
        assert balance(conn, user) == 5
