"""Turn a Replicate prediction's `output`, whatever its shape, into the list of things to store.

Models answer with one URL, a list of URLs, a dict, a list of text tokens or a scalar
(see reference/REPLICATE_NOTES.md). This module decides, in one place and without any I/O, which of
those become files to download and which are stored as they are:

| output                                   | parts                                             |
| ---------------------------------------- | ------------------------------------------------- |
| `None`                                   | none                                              |
| URL string                               | one file to fetch                                 |
| `data:` URI                              | its decoded bytes                                 |
| other string                             | one text part (`text/plain`)                      |
| list of URLs / data URIs                 | one part per item, in order                       |
| list of other strings (LLM tokens)       | ONE text part: the tokens joined with ""          |
| dict, or a list holding non-strings      | every URL / data URI leaf (depth first), then the |
|                                          | whole value as one JSON part                      |
| number, bool                             | one JSON part                                     |
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

TEXT_CONTENT_TYPE = "text/plain"
JSON_CONTENT_TYPE = "application/json"

# RFC 2397: data:[<mediatype>][;base64],<data>
_DATA_URI = re.compile(
    r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<base64>;base64)?,(?P<data>.*)",
    re.DOTALL | re.IGNORECASE,
)


@dataclass(frozen=True)
class RemoteFile:
    """An output file that has to be downloaded from `url`."""

    url: str


@dataclass(frozen=True)
class InlineContent:
    """An output that is already here: text, JSON, or bytes decoded from a data URI."""

    content: bytes
    content_type: str


OutputPart = RemoteFile | InlineContent


def output_parts(output: object) -> list[OutputPart]:
    """The ordered parts to store for a prediction output of any shape (table in the module docstring)."""
    if output is None:
        return []
    if isinstance(output, str):
        return [_string_part(output)]
    if isinstance(output, bool | int | float):
        return [_json_part(output)]
    if isinstance(output, list | tuple):
        return _list_parts(list(output))
    if isinstance(output, Mapping):
        return _structured_parts(output)
    raise TypeError(f"unsupported prediction output type: {type(output).__name__}")


def is_url(value: str) -> bool:
    """True for an absolute http(s) URL with a host and no whitespace."""
    if not value[:8].lower().startswith(("http://", "https://")) or any(c.isspace() for c in value):
        return False
    try:
        return bool(urlsplit(value).hostname)
    except ValueError:
        return False


def _list_parts(items: list[object]) -> list[OutputPart]:
    if not items:
        return []
    strings = [item for item in items if isinstance(item, str)]
    if len(strings) < len(items):
        return _structured_parts(items)
    file_parts = [_file_part(item) for item in strings]
    files = [part for part in file_parts if part is not None]
    if len(files) == len(strings):
        return files
    # Streamed language-model output: the tokens make one text, even if one of them looks like a URL.
    return [_text_part("".join(strings))]


def _structured_parts(value: object) -> list[OutputPart]:
    parts: list[OutputPart] = []
    for leaf in _string_leaves(value):
        part = _file_part(leaf)
        if part is not None:
            parts.append(part)
    parts.append(_json_part(value))
    return parts


def _string_leaves(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _string_leaves(item)


def _string_part(value: str) -> OutputPart:
    return _file_part(value) or _text_part(value)


def _file_part(value: str) -> OutputPart | None:
    """The part for a URL or data URI; None for any other string."""
    if is_url(value):
        return RemoteFile(url=value)
    return _decode_data_uri(value)


def _decode_data_uri(value: str) -> InlineContent | None:
    if value[:5].lower() != "data:":
        return None
    match = _DATA_URI.fullmatch(value)
    if match is None:
        return None
    data = match["data"]
    if match["base64"]:
        try:
            encoded = re.sub(rb"\s+", b"", unquote_to_bytes(data))
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        content = unquote_to_bytes(data)
    content_type = (match["type"] or TEXT_CONTENT_TYPE).lower()
    return InlineContent(content=content, content_type=content_type)


def _text_part(text: str) -> InlineContent:
    return InlineContent(content=_utf8(text), content_type=TEXT_CONTENT_TYPE)


def _json_part(value: object) -> InlineContent:
    return InlineContent(content=_utf8(json.dumps(value, ensure_ascii=False)), content_type=JSON_CONTENT_TYPE)


def _utf8(text: str) -> bytes:
    """UTF-8 bytes; surrogate halves split across tokens are paired up, stray ones replaced."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        paired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return paired.encode("utf-8", "replace")
