"""Object keys and s3:// URIs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ai_pipeline.storage.keys import (
    batch_key_prefix,
    extension_for_content_type,
    manifest_key,
    output_key,
    parse_s3_uri,
    s3_uri,
)


def test_output_key_has_the_documented_layout() -> None:
    key = output_key("ai-pipeline", "batch-7", 42, 0, "png")
    assert key == "ai-pipeline/batches/batch-7/requests/42/output-0.png"


@given(
    prefix=st.text(max_size=20),
    batch_id=st.text(min_size=1, max_size=30).filter(lambda s: s not in (".", "..")),
    request_id=st.integers(min_value=0),
    index=st.integers(min_value=0, max_value=1000),
)
def test_output_key_is_the_same_for_the_same_output(
    prefix: str, batch_id: str, request_id: int, index: int
) -> None:
    assert output_key(prefix, batch_id, request_id, index, "png") == output_key(
        prefix, batch_id, request_id, index, "png"
    )


def test_outputs_of_one_request_get_distinct_keys() -> None:
    keys = {output_key("p", "b", 1, index, "png") for index in range(5)}
    assert len(keys) == 5


def test_ids_with_slashes_cannot_add_or_escape_a_folder_level() -> None:
    key = output_key("p", "../other/batch", "a/b", 0, "png")
    assert key.split("/")[:2] == ["p", "batches"]
    assert key.count("/") == output_key("p", "x", "y", 0, "png").count("/")


@pytest.mark.parametrize("batch_id", ["", ".", ".."])
def test_unusable_ids_are_refused(batch_id: str) -> None:
    with pytest.raises(ValueError):
        output_key("p", batch_id, 1, 0, "png")


def test_empty_prefix_gives_keys_without_leading_slash() -> None:
    assert output_key("", "b", 1, 0, "png") == "batches/b/requests/1/output-0.png"
    assert output_key("/", "b", 1, 0, ".png") == "batches/b/requests/1/output-0.png"


def test_manifest_key_sits_in_the_batch_folder() -> None:
    assert manifest_key("ai-pipeline", "batch-7", "parquet") == "ai-pipeline/batches/batch-7/manifest.parquet"
    assert manifest_key("ai-pipeline", "batch-7", "csv").startswith(
        batch_key_prefix("ai-pipeline", "batch-7")
    )


@given(
    bucket=st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True),
    key=st.text(min_size=1, max_size=40),
)
def test_s3_uri_round_trips(bucket: str, key: str) -> None:
    assert parse_s3_uri(s3_uri(bucket, key)) == (bucket, key)


@pytest.mark.parametrize(
    "uri", ["https://bucket/key", "s3://bucket", "s3://bucket/", "s3:///key", "bucket/key"]
)
def test_parse_s3_uri_refuses_anything_but_a_full_s3_uri(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)


@pytest.mark.parametrize(
    ("content_type", "extension"),
    [
        ("image/png", "png"),
        ("image/jpeg", "jpg"),
        ("image/webp", "webp"),
        ("image/gif", "gif"),
        ("video/mp4", "mp4"),
        ("audio/wav", "wav"),
        ("audio/x-wav", "wav"),
        ("audio/mpeg", "mp3"),
        ("text/plain; charset=utf-8", "txt"),
        ("Application/JSON", "json"),
        ("application/x-something", "bin"),
        (None, "bin"),
    ],
)
def test_extension_follows_content_type(content_type: str | None, extension: str) -> None:
    assert extension_for_content_type(content_type) == extension


def test_extension_falls_back_to_the_url_when_the_content_type_says_nothing() -> None:
    url = "https://replicate.delivery/pbxt/abc/out-0.JPEG?sig=1"
    assert extension_for_content_type("application/octet-stream", url) == "jpg"
    assert extension_for_content_type(None, "https://replicate.delivery/x/file.exe") == "bin"
