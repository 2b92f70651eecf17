"""Writing small request files for the loader tests."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

CSV_COLUMNS = ("user_id", "model", "prompt", "input", "external_id", "priority")


def write_csv(
    path: Path, rows: Sequence[dict[str, Any] | list[str]], columns: Sequence[str] = CSV_COLUMNS
) -> Path:
    """A CSV file; dict rows fill `columns` ("" when absent), list rows are written as they are.

    Text is encoded with surrogateescape, so "\\udcff" in a value writes the invalid byte 0xff.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(row if isinstance(row, list) else [row.get(c, "") for c in columns])
    data = buffer.getvalue().encode("utf-8", "surrogateescape")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_jsonl(path: Path, rows: Sequence[dict[str, Any] | bytes]) -> Path:
    """A JSONL file; bytes rows are written as raw lines."""
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_parquet(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """A Parquet file with pyarrow's inferred types; a key missing from a row is null there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
    return path


def stored_requests(engine: Engine, batch: str) -> list[dict[str, Any]]:
    """The batch's requests in file order."""
    with engine.connect() as conn:
        result = conn.execute(
            text(
                "SELECT external_id, batch_id, user_id, model, input, status, priority, source_row"
                " FROM generation_requests WHERE batch_id = :batch ORDER BY source_row, id"
            ),
            {"batch": batch},
        )
        return [dict(row._mapping) for row in result]


def rejects(path: Path) -> list[dict[str, str]]:
    """The rows of a rejects file."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
