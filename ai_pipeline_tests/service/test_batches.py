"""`/v1/batches` through the running service: an upload's per-row report, counts, results and errors
files that match the database after the real sensor and runs; idempotent uploads; cancel; refusals."""

from __future__ import annotations

import io
import json

import pandas as pd
from sqlalchemy import Engine, text

from ai_pipeline.credits import grant
from ai_pipeline_tests.service.conftest import App
from ai_pipeline_tests.support.pipeline import PipelineHarness


def _jsonl(content: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in content.decode().splitlines() if line]


def _database_rows(engine: Engine, batch_id: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, source_row, status, output_uris, error, credits_charged FROM generation_requests"
                " WHERE batch_id = :b ORDER BY id"
            ),
            {"b": batch_id},
        )
        return [dict(row._mapping) for row in rows]


def test_a_batch_uploads_counts_results_and_errors_files_match_the_database(
    app: App, harness: PipelineHarness, engine: Engine, unique: str
) -> None:
    rich, poor = f"rich-{unique}", f"poor-{unique}"
    with engine.begin() as conn:
        grant(conn, rich, 10)
    csv = (
        "user_id,model,prompt\n"
        f"{rich},emulator/image,a fox\n"
        f"{rich},emulator/image,fail:nsfw a fox\n"
        f"{rich},no/such-model,a fox\n"
        "not a user,emulator/image,a fox\n"
        f"{poor},emulator/image,a fox\n"
        f"{rich},emulator/images,two foxes\n"
    )
    answer = app.client.post("/v1/batches", files={"file": ("requests.csv", csv.encode(), "text/csv")})
    assert answer.status_code == 201, answer.text
    batch = answer.json()
    assert batch["upload"]["rows_read"] == 6 and batch["upload"]["rows_inserted"] == 4
    assert batch["upload"]["refused_by_reason"] == {"unknown_model": 1, "invalid_user_id": 1}
    assert batch["status"] == "queued" and batch["request_counts"]["pending"] == 4

    harness.drain()

    done = app.client.get(f"/v1/batches/{batch['id']}").json()
    rows = _database_rows(engine, batch["id"])
    statuses = [row["status"] for row in rows]
    assert done["status"] == "completed" and done["completed_at"] is not None and done["started_at"]
    assert done["request_counts"] == {
        "total": 4,
        **{
            s: statuses.count(s)
            for s in ("pending", "processing", "succeeded", "failed", "rejected", "canceled")
        },
    }
    assert statuses.count("succeeded") == 2 and statuses.count("rejected") == 1
    with engine.connect() as conn:
        kept = conn.execute(
            text(
                "SELECT COALESCE(sum(-l.delta), 0) FROM credit_ledger l JOIN generation_requests r"
                " ON r.id = l.request_id WHERE r.batch_id = :b"
            ),
            {"b": batch["id"]},
        ).scalar_one()
    assert done["credits"]["charged"] == kept == sum(int(row["credits_charged"]) for row in rows) == 3

    results = _jsonl(app.client.get(done["results_url"]).content)
    assert [
        (r["id"], r["row"], r["status"], [o["uri"] for o in r["outputs"]], r["error"]) for r in results
    ] == [
        (row["id"], row["source_row"], row["status"], row["output_uris"] or [], row["error"]) for row in rows
    ]
    errors = _jsonl(app.client.get(done["errors_url"]).content)
    assert [(e["row"], e["code"]) for e in errors] == [
        (3, "unknown_model"),
        (4, "invalid_user_id"),
        *((row["source_row"], row["status"]) for row in rows if row["status"] in ("failed", "rejected")),
    ]


def test_a_json_list_or_a_parquet_file_is_a_batch_and_a_retried_upload_makes_one(
    app: App, engine: Engine, unique: str
) -> None:
    body = {
        "requests": [
            {"user_id": f"u-{unique}", "model": "emulator/image", "prompt": f"p{i}"} for i in range(3)
        ]
    }
    first = app.client.post("/v1/batches", json=body, headers={"Idempotency-Key": "upload-1"})
    again = app.client.post("/v1/batches", json=body, headers={"Idempotency-Key": "upload-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    changed = app.client.post(
        "/v1/batches", json={"requests": body["requests"][:1]}, headers={"Idempotency-Key": "upload-1"}
    )
    assert changed.status_code == 422
    assert len(_database_rows(engine, first.json()["id"])) == 3

    frame = pd.DataFrame(body["requests"])
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    uploaded = app.client.post(
        "/v1/batches", content=parquet.getvalue(), headers={"Content-Type": "application/vnd.apache.parquet"}
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["upload"]["rows_inserted"] == 3

    listed = app.client.get("/v1/batches", params={"limit": 1}).json()
    assert listed["has_more"] and listed["data"][0]["id"] == uploaded.json()["id"]
    older = app.client.get("/v1/batches", params={"after": listed["next_cursor"]}).json()
    assert [b["id"] for b in older["data"]] == [first.json()["id"]]


def test_canceling_a_batch_ends_its_pending_requests_canceled(app: App, engine: Engine, unique: str) -> None:
    body = {
        "requests": [
            {"user_id": f"u-{unique}", "model": "emulator/image", "prompt": f"c{i}"} for i in range(3)
        ]
    }
    batch = app.client.post("/v1/batches", json=body).json()
    canceled = app.client.post(f"/v1/batches/{batch['id']}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled" and canceled.json()["request_counts"]["canceled"] == 3
    assert {row["status"] for row in _database_rows(engine, batch["id"])} == {"canceled"}


def test_an_upload_that_cannot_be_loaded_is_refused_whole_and_records_no_batch(app: App) -> None:
    missing = app.client.post(
        "/v1/batches", content=b"user,prompt\nx,y\n", headers={"Content-Type": "text/csv"}
    )
    assert missing.status_code == 422 and "missing required column" in missing.json()["detail"]
    pdf = app.client.post("/v1/batches", content=b"%PDF", headers={"Content-Type": "application/pdf"})
    assert pdf.status_code == 415 and pdf.headers["content-type"] == "application/problem+json"
    assert app.client.get("/v1/batches").json()["data"] == []
    huge = app.client.post("/v1/generations", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert huge.status_code == 413 and huge.json()["limit"] == 1024 * 1024
    chunks = (b" " * 65536 for _ in range(40))  # chunked: no Content-Length to refuse it by up front
    streamed = app.client.post(
        "/v1/generations", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413 and streamed.headers["content-type"] == "application/problem+json"
    assert app.client.get("/v1/batches/no-such-batch").status_code == 404
