"""The pipeline end to end: the real sensor launches real runs that charge, predict, store and settle."""

from __future__ import annotations

from typing import Any

import replicate
from dagster import DagsterRunStatus
from sqlalchemy import Engine, text

from ai_pipeline.credits import balance, grant
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.storage.uploads import object_check
from ai_pipeline_tests.support.factories import insert_request
from ai_pipeline_tests.support.pipeline import PipelineHarness


def _rows(engine: Engine, batch: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            r.external_id: r
            for r in conn.execute(
                text(
                    "SELECT r.*, EXISTS (SELECT 1 FROM credit_ledger l WHERE l.request_id = r.id"
                    " AND l.kind = 'debit') AS debited FROM generation_requests r WHERE batch_id = :b"
                ),
                {"b": batch},
            )
        }


def _insert(conn: Any, batch: str, key: str, user: str, model: str, prompt: str, **extra: Any) -> int:
    return insert_request(
        conn,
        user,
        model=model,
        batch_id=batch,
        external_id=f"{batch}:{key}",
        input={"prompt": prompt, **extra},
    )


def test_mixed_batch_ends_terminal_with_money_and_outputs_consistent(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch = f"mixed-{unique}"
    rich, poor = f"rich-{unique}", f"poor-{unique}"
    with engine.begin() as conn:
        grant(conn, rich, 100, "image_generation")
        grant(conn, rich, 10, "text_generation")
        grant(conn, poor, 1, "image_generation")
        for i in range(4):
            _insert(conn, batch, f"image-{i}", rich, "emulator/image", f"a fox {i} {unique}")
            _insert(
                conn, batch, f"images-{i}", rich, "emulator/images", f"two foxes {i} {unique}", num_outputs=2
            )
            _insert(
                conn, batch, f"deploy-{i}", rich, "emulator/image-deployment", f"a deployed fox {i} {unique}"
            )
            _insert(conn, batch, f"text-{i}", rich, "emulator/text", f"a poem {i} {unique}")
            _insert(conn, batch, f"caption-{i}", rich, "emulator/caption", f"a caption {i} {unique}")
        _insert(conn, batch, "nsfw", rich, "emulator/image", f"fail:nsfw {unique}")
        _insert(conn, batch, "oom", rich, "emulator/image", f"fail:oom {unique}")
        _insert(conn, batch, "unknown-model", rich, "nobody/nothing", f"x {unique}")
        for i in range(3):
            _insert(conn, batch, f"poor-{i}", poor, "emulator/image", f"a poor fox {i} {unique}")
    # Throttling and server errors on the way: creates answered 429/503/dropped, polls answered 5xx.
    harness.emulator.configure(
        scripted_faults={"create": [429, 503, "drop", 429, 502], "get": [503, 502, 500], "download": [500]}
    )

    runs = harness.drain()

    assert runs and all(run.success for run in runs)
    rows = _rows(engine, batch)
    assert {r.status for r in rows.values()} <= {"succeeded", "failed", "rejected"}
    for key in [
        k for k in rows if k.split(":")[1].split("-")[0] in {"image", "images", "deploy", "text", "caption"}
    ]:
        assert rows[key].status == "succeeded", (key, rows[key].error)
    assert rows[f"{batch}:nsfw"].status == "failed" and "NSFW" in rows[f"{batch}:nsfw"].error
    assert rows[f"{batch}:oom"].status == "failed" and rows[f"{batch}:oom"].retryable
    assert rows[f"{batch}:unknown-model"].status == "rejected"
    poor_rows = [rows[f"{batch}:poor-{i}"] for i in range(3)]
    assert sorted(r.status for r in poor_rows) == ["rejected", "rejected", "succeeded"]
    assert all(
        "insufficient credits" in r.error and not r.debited for r in poor_rows if r.status == "rejected"
    )
    # Every output shape was stored: one PNG, a list of PNGs, text tokens as one .txt, a dict as JSON + PNG.
    assert len(rows[f"{batch}:image-0"].output_uris) == 1
    assert len(rows[f"{batch}:images-0"].output_uris) == 2
    assert rows[f"{batch}:text-0"].output_uris[0].endswith(".txt")
    assert sorted(u.rsplit(".", 1)[1] for u in rows[f"{batch}:caption-0"].output_uris) == ["json", "png"]
    with engine.connect() as conn:
        report = check_invariants(conn, batch_id=batch, verify_object=object_check(harness.s3))
        assert report.ok, report.summary()
        assert report.checked_objects >= 4 + 8 + 4 + 4 + 8 + 1
        # 4 images + 8 images + 4 deployments + 1 poor image at 1 credit, 4 captions at 1, nsfw/oom refunded
        assert balance(conn, rich, "image_generation") == 100 - (4 + 4 * 2 + 4 + 4)
        assert balance(conn, rich, "text_generation") == 10 - 4
        assert balance(conn, poor, "image_generation") == 0
    stats = harness.emulator.stats()
    assert stats["responses_429"].get("create", 0) >= 2
    assert stats["faults_sent"]  # the scripted faults were served
    assert stats["creates_by_input"]["duplicate_creates"] == 0  # a dropped create was found, not redone


def test_requests_written_one_at_a_time_are_picked_up_by_the_next_tick(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    user = f"app-{unique}"
    with engine.begin() as conn:
        grant(conn, user, 5)
        request_id = insert_request(conn, user, model="emulator/image", input={"prompt": f"live {unique}"})

    harness.drain()

    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, batch_id FROM generation_requests WHERE id = :id"), {"id": request_id}
        ).one()
    assert row.status == "succeeded" and row.batch_id.startswith("live-")


def test_sensor_skips_a_batch_whose_run_is_still_active(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch = f"busy-{unique}"
    with engine.begin() as conn:
        grant(conn, f"u-{unique}", 5)
        insert_request(conn, f"u-{unique}", model="emulator/image", batch_id=batch, input={"prompt": unique})
    first = harness.tick()
    assert batch in {r.partition_key for r in first.run_requests}
    # The daemon has created that run but not started it yet: the next tick must not launch another.
    job = harness.definitions().resolve_job_def("process_batch")
    run = harness.instance.create_run_for_job(job, tags={"dagster/partition": batch})
    assert run.status == DagsterRunStatus.NOT_STARTED
    second = harness.tick()
    assert batch not in {r.partition_key for r in second.run_requests}


def test_predictions_in_flight_never_exceed_the_configured_bound(
    harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    batch = f"bounded-{unique}"
    with engine.begin() as conn:
        grant(conn, f"u-{unique}", 100)
        for i in range(24):
            insert_request(
                conn, f"u-{unique}", model="emulator/image", batch_id=batch, input={"prompt": f"{unique} {i}"}
            )

    harness.drain(max_in_flight=5)

    client = replicate.Client(api_token="t", base_url=harness.emulator.base_url)
    spans = []
    for prediction in client.predictions.list().results:
        if prediction.input and unique in str(prediction.input.get("prompt")):
            spans.append((prediction.created_at, prediction.completed_at))
    assert len(spans) == 24
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most, current = 0, 0
    for _, step in edges:
        current += step
        most = max(most, current)
    assert 2 <= most <= 5
