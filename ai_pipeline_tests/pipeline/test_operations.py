"""What operators see and do: backfills reprocess failures; secrets stay out of Dagster."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ai_pipeline.credits import balance, grant
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness


def test_a_backfill_from_the_ui_reprocesses_failed_requests_as_new_charged_requests(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch, user = f"backfill-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 10)
        failed_id = insert_request(
            conn, user, model="emulator/image", batch_id=batch, input={"prompt": unique}
        )
    harness.emulator.configure(model_failure_rates={"oom": 1.0})  # the GPU runs out of memory ...
    harness.drain()
    harness.emulator.configure(model_failure_rates={"oom": 0.0})  # ... and later it does not

    # An operator launches the partition from the UI: no sensor tag on the run.
    result = harness.run_batch(batch, launched_by_sensor=False)
    assert result.success

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, retry_of FROM generation_requests WHERE batch_id = :b ORDER BY id"),
            {"b": batch},
        ).all()
        assert [(r.status, r.retry_of) for r in rows] == [("failed", None), ("succeeded", failed_id)]
        assert balance(conn, user) == 9  # the failure was refunded; the retry was charged once


def test_the_replicate_token_never_reaches_run_config_or_logs(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    secret = f"r8_secret_{unique}"
    batch, user = f"secret-{unique}", f"u-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 5)
        insert_request(conn, user, model="emulator/image", batch_id=batch, input={"prompt": unique})
    defs = harness.definitions(replicate_api_token=secret)

    result = harness.run_batch(batch, defs=defs)

    assert result.success
    run = harness.instance.get_run_by_id(result.run_id)
    assert secret not in repr(run.run_config) and secret not in repr(run.tags)
    logs = harness.instance.all_logs(result.run_id)
    assert logs and all(secret not in repr(event) for event in logs)
