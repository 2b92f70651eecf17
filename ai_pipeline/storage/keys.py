"""Where things live in the bucket: deterministic object keys and `s3://` URIs.

Keys depend only on what identifies an output (batch, request, position), never on time or attempt, so a
retried upload overwrites the object it already wrote instead of leaving a duplicate behind.
"""

from __future__ import annotations

import posixpath
from urllib.parse import quote, urlsplit

MANIFEST_NAME = "manifest"
FALLBACK_EXTENSION = "bin"

# Content type (without parameters) → file extension. Anything else is stored as `.bin`.
_EXTENSIONS: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "audio/wav": "wav",
    "audio/wave": "wav",
    "audio/x-wav": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "text/plain": "txt",
    "application/json": "json",
}
_KNOWN_EXTENSIONS = frozenset(_EXTENSIONS.values())
_EXTENSION_ALIASES = {"jpeg": "jpg"}


def _segment(value: str | int, what: str) -> str:
    """One path segment: percent-encode anything unusual so ids can never add or escape a level."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{what} cannot be used in an object key: {text!r}")
    return quote(text, safe="-_.~=+@,")


def _join(prefix: str, *segments: str) -> str:
    prefix = prefix.strip("/")
    return "/".join([prefix, *segments]) if prefix else "/".join(segments)


def batch_key_prefix(prefix: str, batch_id: str) -> str:
    """The folder holding everything written for one batch: `{prefix}/batches/{batch_id}`."""
    return _join(prefix, "batches", _segment(batch_id, "batch id"))


def output_key(prefix: str, batch_id: str, request_id: str | int, index: int, extension: str) -> str:
    """Key of the `index`-th output of a request.

    `{prefix}/batches/{batch_id}/requests/{request_id}/output-{index}.{extension}`; the same arguments
    always give the same key.
    """
    if index < 0:
        raise ValueError(f"output index must be >= 0, got {index}")
    ext = extension.lstrip(".").lower() or FALLBACK_EXTENSION
    return "/".join(
        [
            batch_key_prefix(prefix, batch_id),
            "requests",
            _segment(request_id, "request id"),
            f"output-{index}.{_segment(ext, 'extension')}",
        ]
    )


def manifest_key_under(key_prefix: str, fmt: str) -> str:
    """Key of the manifest in format `fmt` (`parquet`, `csv`) inside the folder `key_prefix`."""
    return f"{key_prefix.rstrip('/')}/{MANIFEST_NAME}.{_segment(fmt.lstrip('.').lower(), 'format')}"


def manifest_key(prefix: str, batch_id: str, fmt: str) -> str:
    """Key of a batch's manifest: `{prefix}/batches/{batch_id}/manifest.{fmt}`."""
    return manifest_key_under(batch_key_prefix(prefix, batch_id), fmt)


def s3_uri(bucket: str, key: str) -> str:
    """`s3://bucket/key`."""
    if not bucket or "/" in bucket:
        raise ValueError(f"invalid bucket name: {bucket!r}")
    if not key:
        raise ValueError("object key must not be empty")
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into `(bucket, key)`; raises ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"s3:// URI needs a bucket and a key: {uri!r}")
    return bucket, key


def extension_for_content_type(content_type: str | None, url: str | None = None) -> str:
    """File extension for a content type, e.g. `image/png` → `png`; `bin` when unknown.

    When the content type is not one we know (missing, `application/octet-stream`, …), a known
    extension at the end of the source URL's path is used instead.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    extension = _EXTENSIONS.get(media_type)
    if extension is not None:
        return extension
    if url:
        suffix = posixpath.splitext(urlsplit(url).path)[1].lstrip(".").lower()
        suffix = _EXTENSION_ALIASES.get(suffix, suffix)
        if suffix in _KNOWN_EXTENSIONS:
            return suffix
    return FALLBACK_EXTENSION
