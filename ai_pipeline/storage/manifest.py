"""A batch's manifest: one row per request, written to S3 as Parquet (for tools) and CSV (for people)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ai_pipeline.storage.keys import manifest_key_under
from ai_pipeline.storage.uploads import put_object

# The manifest's columns, in order, with their Parquet types. Keys of a row outside this list are ignored.
MANIFEST_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("external_id", pa.string()),
        ("user_id", pa.string()),
        ("model", pa.string()),
        ("status", pa.string()),
        ("output_uris", pa.list_(pa.string())),
        ("error", pa.string()),
        ("credits_charged", pa.int64()),
        ("predict_time", pa.float64()),
        ("completed_at", pa.timestamp("us", tz="UTC")),
    ]
)
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def write_manifest(
    s3_client: Any, bucket: str, key_prefix: str, rows: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Write `rows` as `{key_prefix}/manifest.parquet` and `{key_prefix}/manifest.csv`; return their URIs.

    `key_prefix` is the batch's folder (`keys.batch_key_prefix(prefix, batch_id)`), so the files land at
    `keys.manifest_key(prefix, batch_id, fmt)`. In the CSV, `output_uris` is one space-separated field.
    Rewriting a manifest replaces it.
    """
    table = manifest_table(rows)
    uris = []
    for fmt, content, content_type in (
        ("parquet", _parquet_bytes(table), PARQUET_CONTENT_TYPE),
        ("csv", _csv_bytes(manifest_frame(table)), CSV_CONTENT_TYPE),
    ):
        stored = put_object(s3_client, bucket, manifest_key_under(key_prefix, fmt), content, content_type)
        uris.append(stored.uri)
    return uris


def manifest_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The manifest as an Arrow table with `MANIFEST_SCHEMA` (missing values are null)."""
    columns = {name: [_cell(name, row.get(name)) for row in rows] for name in MANIFEST_COLUMNS}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def manifest_frame(table: pa.Table) -> pd.DataFrame:
    """The manifest as a pandas DataFrame, with nullable dtypes so missing integers stay integers."""
    frame: pd.DataFrame = table.to_pandas(types_mapper=_NULLABLE_DTYPES.get)
    return frame


_NULLABLE_DTYPES: dict[pa.DataType, Any] = {
    pa.int64(): pd.Int64Dtype(),
    pa.string(): pd.StringDtype(),
    pa.float64(): pd.Float64Dtype(),
}


def _cell(name: str, value: Any) -> Any:
    if name == "output_uris":
        return list(value or [])
    if name == "completed_at" and value is not None:
        stamp = pd.Timestamp(value)
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return value


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    flat = frame.copy()
    flat["output_uris"] = [" ".join(uris) for uris in flat["output_uris"]]
    return flat.to_csv(index=False).encode("utf-8")
