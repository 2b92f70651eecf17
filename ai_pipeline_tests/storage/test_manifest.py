"""Batch manifests in S3, read back the way an analyst would: pandas."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ai_pipeline.storage.keys import batch_key_prefix, manifest_key, parse_s3_uri, s3_uri
from ai_pipeline.storage.manifest import MANIFEST_COLUMNS, write_manifest

COMPLETED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ROWS = [
    {
        "request_id": 1,
        "external_id": "web-1",
        "user_id": "alice",
        "model": "flux-schnell",
        "status": "succeeded",
        "output_uris": ["s3://b/out-0.png", "s3://b/out-1.png"],
        "error": None,
        "credits_charged": 5,
        "predict_time": 1.25,
        "completed_at": COMPLETED,
    },
    {
        "request_id": 2,
        "user_id": "bob",
        "model": "flux-schnell",
        "status": "failed",
        "error": "E1001 out of memory",
        "credits_charged": 0,
    },
]


def read(s3_client: Any, uri: str) -> bytes:
    bucket, key = parse_s3_uri(uri)
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_manifest_is_written_as_parquet_and_csv_in_the_batch_folder(s3_client: Any, bucket: str) -> None:
    uris = write_manifest(s3_client, bucket, batch_key_prefix("ai-pipeline", "b1"), ROWS)
    assert uris == [
        s3_uri(bucket, manifest_key("ai-pipeline", "b1", "parquet")),
        s3_uri(bucket, manifest_key("ai-pipeline", "b1", "csv")),
    ]


def test_parquet_manifest_reads_back_with_pandas(s3_client: Any, bucket: str) -> None:
    parquet_uri, _ = write_manifest(s3_client, bucket, "p/batches/b1", ROWS)
    frame = pd.read_parquet(io.BytesIO(read(s3_client, parquet_uri)))
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    first = frame.iloc[0]
    assert list(first["output_uris"]) == ["s3://b/out-0.png", "s3://b/out-1.png"]
    assert (first["status"], first["credits_charged"], first["predict_time"]) == ("succeeded", 5, 1.25)
    assert first["completed_at"] == pd.Timestamp(COMPLETED)


def test_missing_fields_are_null_in_the_manifest(s3_client: Any, bucket: str) -> None:
    parquet_uri, _ = write_manifest(s3_client, bucket, "p/batches/b1", ROWS)
    second = pd.read_parquet(io.BytesIO(read(s3_client, parquet_uri))).iloc[1]
    assert (
        pd.isna(second["external_id"]) and pd.isna(second["predict_time"]) and pd.isna(second["completed_at"])
    )
    assert list(second["output_uris"]) == []


def test_csv_manifest_joins_output_uris_with_spaces(s3_client: Any, bucket: str) -> None:
    _, csv_uri = write_manifest(s3_client, bucket, "p/batches/b1", ROWS)
    frame = pd.read_csv(io.BytesIO(read(s3_client, csv_uri)))
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    assert frame.loc[0, "output_uris"] == "s3://b/out-0.png s3://b/out-1.png"
    assert frame.loc[1, "error"] == "E1001 out of memory"


def test_empty_batch_writes_readable_manifests_with_only_headers(s3_client: Any, bucket: str) -> None:
    parquet_uri, csv_uri = write_manifest(s3_client, bucket, "p/batches/empty", [])
    assert len(pd.read_parquet(io.BytesIO(read(s3_client, parquet_uri)))) == 0
    assert tuple(pd.read_csv(io.BytesIO(read(s3_client, csv_uri))).columns) == MANIFEST_COLUMNS
