"""Put bytes to S3 with a checksum S3 verifies, and check later that the object is still what we wrote.

The SHA-256 goes twice: as `ChecksumSHA256`, so S3 rejects a body damaged on the way and keeps the
checksum with the object, and as `sha256` user metadata (hex), which every S3-compatible store returns
on HEAD, so `verify_object` works even where checksums are not kept.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ai_pipeline.storage.keys import parse_s3_uri, s3_uri

SHA256_METADATA_KEY = "sha256"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True)
class StoredObject:
    """An object written to S3, as recorded in `generation_requests.output_uris` and the manifest."""

    uri: str
    key: str
    sha256: str  # hex
    size: int
    content_type: str


def put_object(s3_client: Any, bucket: str, key: str, content: bytes, content_type: str) -> StoredObject:
    """Write `content` to `s3://bucket/key`, replacing what is there (a retry lands on the same key).

    `s3_client` is a boto3 S3 client, ideally the shared one from `client.create_s3_client`.
    """
    digest = hashlib.sha256(content).digest()
    sha256_hex = digest.hex()
    s3_client.put_object(
        Bucket=bucket,
        Key=key,
        Body=content,
        ContentType=content_type,
        # The algorithm header makes stores keep the checksum with the object (moto only keeps it then).
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
        Metadata={SHA256_METADATA_KEY: sha256_hex},
    )
    return StoredObject(
        uri=s3_uri(bucket, key),
        key=key,
        sha256=sha256_hex,
        size=len(content),
        content_type=content_type,
    )


def verify_object(s3_client: Any, uri: str, sha256_hex: str, *, require_checksum: bool = True) -> bool:
    """True when the object at `uri` exists and what S3 recorded for it says its SHA-256 is `sha256_hex`.

    Reads only the object's headers (HEAD with checksum mode): the `sha256` metadata must match, and so
    must the S3-computed `ChecksumSHA256`, which S3 verified against the body on upload and which a later
    overwrite cannot carry over. With `require_checksum=False`, a store that keeps no checksum is judged
    on the metadata alone. A missing object is False; other S3 errors are raised.
    """
    bucket, key = parse_s3_uri(uri)
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES:
            return False
        raise
    expected = sha256_hex.lower()
    recorded = head.get("Metadata", {}).get(SHA256_METADATA_KEY)
    if recorded is None or recorded.lower() != expected:
        return False
    checksum = head.get("ChecksumSHA256")
    # A multipart upload's checksum is a checksum of part checksums ("…-N"): not comparable; we never
    # write those, so treat one like a missing checksum.
    if not checksum or "-" in checksum:
        return not require_checksum
    return base64.b64decode(checksum).hex() == expected


def object_check(s3_client: Any) -> Callable[[str, str], bool]:
    """`verify_object` on this client, as the invariant checker takes it: `(uri, sha256) -> bool`."""
    return functools.partial(verify_object, s3_client)
