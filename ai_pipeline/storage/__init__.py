"""Persisting outputs: S3 keys, safe downloads from delivery hosts, checksummed uploads, manifests.

Domain code: no Dagster here. The orchestration layer calls, per request:
`output_parts(prediction.output)` → `fetch_output(...)` for each `RemoteFile` → `put_object(...)` under
`output_key(...)`; and per batch `write_manifest(...)`.
"""

from ai_pipeline.storage.allowlist import FetchPolicy
from ai_pipeline.storage.client import create_s3_client, s3_client_config
from ai_pipeline.storage.errors import (
    OutputFetchError,
    OutputGone,
    OutputRefused,
    OutputUnavailable,
    redact_url,
)
from ai_pipeline.storage.fetch import FetchedFile, fetch_output
from ai_pipeline.storage.keys import (
    batch_key_prefix,
    extension_for_content_type,
    manifest_key,
    output_key,
    parse_s3_uri,
    s3_uri,
)
from ai_pipeline.storage.manifest import MANIFEST_COLUMNS, write_manifest
from ai_pipeline.storage.output_parts import InlineContent, OutputPart, RemoteFile, output_parts
from ai_pipeline.storage.uploads import StoredObject, put_object, verify_object

__all__ = [
    "MANIFEST_COLUMNS",
    "FetchPolicy",
    "FetchedFile",
    "InlineContent",
    "OutputFetchError",
    "OutputGone",
    "OutputPart",
    "OutputRefused",
    "OutputUnavailable",
    "RemoteFile",
    "StoredObject",
    "batch_key_prefix",
    "create_s3_client",
    "extension_for_content_type",
    "fetch_output",
    "manifest_key",
    "output_key",
    "output_parts",
    "parse_s3_uri",
    "put_object",
    "redact_url",
    "s3_client_config",
    "s3_uri",
    "verify_object",
    "write_manifest",
]
