"""A batch upload, received into a temporary file the loader reads: a CSV, JSONL or Parquet body
(streamed to disk as it arrives; `BodyLimit` caps its size), the same as a multipart file field, or a
JSON list written out as JSONL. The loader (`loading.load_file`) does the rest, with its own rules."""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ai_pipeline.loading.readers import MAX_LINE_CHARS
from ai_pipeline.service.problems import Problem, invalid
from ai_pipeline.service.schemas import BatchCreate

# Media types of a raw upload, and the file name suffix the loader reads it by.
RAW_TYPES = {
    "text/csv": ".csv",
    "application/csv": ".csv",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/x-jsonlines": ".jsonl",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
}
FILE_SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet")
_COPY_CHUNK = 1024 * 1024


@dataclass
class Upload:
    """A received upload: where it is, its digest (the Idempotency-Key compares it), its webhook."""

    path: Path
    sha256: str
    webhook_url: str | None


def new_batch_id() -> str:
    """`batch_<UTC time>_<random>`: a valid batch name (a partition key), sorting by upload time."""
    return f"batch_{datetime.now(UTC):%Y%m%d%H%M%S%f}_{secrets.token_hex(4)}"


def _unsupported(media_type: str) -> Problem:
    known = ", ".join(["application/json", "multipart/form-data", *RAW_TYPES])
    return Problem(
        415, "unsupported-media-type", "Unsupported media type", f"{media_type or 'none'}: use {known}"
    )


async def receive(request: Request, folder: Path, webhook_url: str | None) -> Upload:
    """Write the request's batch into `folder`, whatever form it came in."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    digest = hashlib.sha256()
    if media_type == "application/json":
        return await _json_list(request, folder, webhook_url)
    if media_type == "multipart/form-data":
        return await _multipart(request, folder, webhook_url)
    suffix = RAW_TYPES.get(media_type)
    if suffix is None:
        raise _unsupported(media_type)
    path = folder / f"upload{suffix}"
    with path.open("wb") as handle:
        async for chunk in request.stream():
            handle.write(chunk)
            digest.update(chunk)
    return Upload(path, digest.hexdigest(), webhook_url)


async def _json_list(request: Request, folder: Path, webhook_url: str | None) -> Upload:
    raw = await request.body()
    try:
        body = BatchCreate.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "code": e["type"], "message": e["msg"]}
            for e in exc.errors()
        ]
        raise invalid(errors) from None
    path = folder / "upload.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for row in body.requests:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    webhook = body.webhook_url if body.webhook_url is not None else webhook_url
    fingerprint = hashlib.sha256(raw).hexdigest()
    return Upload(path, fingerprint, webhook)


async def _multipart(request: Request, folder: Path, webhook_url: str | None) -> Upload:
    async with request.form(max_files=1, max_fields=5) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise invalid(
                [{"field": "file", "code": "missing", "message": "send the batch as the `file` field"}]
            )
        name = (file.filename or "").lower()
        suffix = next((s for s in sorted(FILE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)
        if suffix is None:
            suffix = RAW_TYPES.get((file.content_type or "").lower())
        if suffix is None:
            raise invalid(
                [
                    {
                        "field": "file",
                        "code": "unsupported_file",
                        "message": f"name it *{', *'.join(FILE_SUFFIXES)}",
                    }
                ]
            )
        form_webhook = form.get("webhook_url")
        if isinstance(form_webhook, str) and form_webhook:
            webhook_url = form_webhook
        digest = hashlib.sha256()
        path = folder / f"upload{suffix}"
        with path.open("wb") as handle:
            while chunk := await file.read(_COPY_CHUNK):
                handle.write(chunk)
                digest.update(chunk)
    return Upload(path, digest.hexdigest(), webhook_url)


def refused_rows(rejects_path: Path) -> Iterator[tuple[int, str, str]]:
    """(row, reason code, message) of every row the loader wrote to its rejects file."""
    csv.field_size_limit(max(csv.field_size_limit(), 4 * MAX_LINE_CHARS))
    with rejects_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for record in reader:
            yield int(record[0]), record[1], record[2]


def scratch_folder() -> tempfile.TemporaryDirectory[str]:
    """A private folder for one upload, removed afterwards."""
    return tempfile.TemporaryDirectory(prefix="ai-pipeline-upload-")
