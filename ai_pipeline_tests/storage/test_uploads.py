"""Checksummed uploads and their verification, over the S3 protocol (moto server)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import botocore

from ai_pipeline.storage.client import USER_AGENT
from ai_pipeline.storage.keys import s3_uri
from ai_pipeline.storage.uploads import StoredObject, put_object, verify_object

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
KEY = "ai-pipeline/batches/b1/requests/1/output-0.png"


def test_put_object_describes_what_it_stored(s3_client: Any, bucket: str) -> None:
    stored = put_object(s3_client, bucket, KEY, PNG, "image/png")
    assert stored == StoredObject(
        uri=f"s3://{bucket}/{KEY}", key=KEY, sha256=PNG_SHA256, size=len(PNG), content_type="image/png"
    )


def test_uploads_send_a_fixed_user_agent_and_no_expect_header(s3_client: Any, bucket: str) -> None:
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    s3_client.meta.events.register("before-send.s3.PutObject", record)
    try:
        put_object(s3_client, bucket, KEY, PNG, "image/png")
    finally:
        s3_client.meta.events.unregister("before-send.s3.PutObject", record)
    assert len(sent) == 1
    assert sent[0]["User-Agent"] == f"{USER_AGENT} Botocore/{botocore.__version__}"
    assert "Expect" not in sent[0]


def test_stored_object_has_the_content_and_content_type(s3_client: Any, bucket: str) -> None:
    put_object(s3_client, bucket, KEY, PNG, "image/png")
    got = s3_client.get_object(Bucket=bucket, Key=KEY)
    assert (got["Body"].read(), got["ContentType"]) == (PNG, "image/png")


def test_stored_object_carries_sha256_as_s3_checksum_and_metadata(s3_client: Any, bucket: str) -> None:
    put_object(s3_client, bucket, KEY, PNG, "image/png")
    head = s3_client.head_object(Bucket=bucket, Key=KEY, ChecksumMode="ENABLED")
    assert head["Metadata"] == {"sha256": PNG_SHA256}
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(PNG).digest()).decode()


def test_uploading_the_same_output_again_overwrites_it(s3_client: Any, bucket: str) -> None:
    put_object(s3_client, bucket, KEY, b"first attempt", "image/png")
    put_object(s3_client, bucket, KEY, PNG, "image/png")
    listed = s3_client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(KEY, len(PNG))]


def test_verify_object_accepts_the_object_as_written(s3_client: Any, bucket: str) -> None:
    stored = put_object(s3_client, bucket, KEY, PNG, "image/png")
    assert verify_object(s3_client, stored.uri, stored.sha256) is True


def test_verify_object_detects_a_different_checksum(s3_client: Any, bucket: str) -> None:
    stored = put_object(s3_client, bucket, KEY, PNG, "image/png")
    assert verify_object(s3_client, stored.uri, hashlib.sha256(b"something else").hexdigest()) is False


def test_verify_object_detects_an_object_replaced_behind_our_back(s3_client: Any, bucket: str) -> None:
    stored = put_object(s3_client, bucket, KEY, PNG, "image/png")
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"tampered", Metadata={"sha256": stored.sha256})
    assert verify_object(s3_client, stored.uri, stored.sha256) is False


def test_verify_object_reports_a_missing_object_as_unverified(s3_client: Any, bucket: str) -> None:
    assert verify_object(s3_client, s3_uri(bucket, "never/written.png"), PNG_SHA256) is False


def test_verify_object_requires_an_s3_checksum_by_default(s3_client: Any, bucket: str) -> None:
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=PNG, Metadata={"sha256": PNG_SHA256})
    assert verify_object(s3_client, s3_uri(bucket, KEY), PNG_SHA256) is False


def test_verify_object_can_judge_by_metadata_alone_for_stores_without_checksums(
    s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=PNG, Metadata={"sha256": PNG_SHA256})
    assert verify_object(s3_client, s3_uri(bucket, KEY), PNG_SHA256, require_checksum=False) is True
