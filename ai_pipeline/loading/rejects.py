"""The rejects file: one line per refused row, so the person who made the file can fix it.

    row,reason_code,reason,user_id,model,prompt,...
    17,unknown_model,model 'sdxl-typo' is not in the catalogue,u-42,sdxl-typo,a red fox

The value columns repeat what the file held (the loader ignores `row`, `reason_code` and `reason`, so a
corrected rejects file can be loaded as it is). Bytes that were not valid UTF-8 are shown as `\\xff`, a
NUL as `\\x00`. The file is written next to its final name and moved into place when the load ends, so
it never mixes two loads; it is written even when nothing was refused (header only).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ai_pipeline.loading.errors import LoadError
from ai_pipeline.loading.readers import RawRow
from ai_pipeline.loading.validation import Refusal

REJECTS_HEADER = ("row", "reason_code", "reason")


def default_rejects_path(path: Path) -> Path:
    """`<file>.rejects.csv` next to the loaded file."""
    return path.with_name(path.name + ".rejects.csv")


class RejectsFile:
    """Collects refused rows into a CSV file at `path`."""

    def __init__(self, path: Path, value_columns: Sequence[str]) -> None:
        self.path = path
        self._columns = list(value_columns)
        self._partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            self._file = open(self._partial, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise LoadError(f"cannot write the rejects file {path}: {exc.strerror}") from exc
        self._writer = csv.writer(self._file)
        self._writer.writerow([*REJECTS_HEADER, *self._columns])

    def write(self, refused: Iterable[tuple[RawRow, Refusal]]) -> None:
        """Add refused rows, each with its reason and the values it had."""
        self._writer.writerows(
            [
                row.number,
                refusal.reason.value,
                refusal.message,
                *(_printable(row.values.get(column)) for column in self._columns),
            ]
            for row, refusal in refused
        )

    def finish(self) -> None:
        """Move the file into place."""
        self._file.close()
        os.replace(self._partial, self.path)

    def discard(self) -> None:
        """Forget the file (the load failed)."""
        self._file.close()
        self._partial.unlink(missing_ok=True)


def _printable(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and "\x00" not in text:
        return text
    try:  # bytes that were not UTF-8 come back as themselves, then shown as \xNN
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")
