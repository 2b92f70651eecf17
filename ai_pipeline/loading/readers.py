"""Readers for request files, streamed row by row so memory stays flat however large the file is.

    .csv  .csv.gz              header row, then one request per record (stdlib `csv`)
    .jsonl .ndjson (+ .gz)     one JSON object per line; the first line's keys are the columns
    .parquet                   read in record batches (pyarrow), only the columns the loader uses

Rows are numbered from 1 in file order, the CSV header excluded: a CSV record, a JSONL line or a Parquet
row. Blank rows (a CSV record of empty fields, an empty line, a Parquet row with no value in any loader
column) keep their number but are skipped, since they hold no request. Text is decoded with
`errors="surrogateescape"` so one row of invalid UTF-8 is refused by the validation rules instead of
stopping the file.

Why not pandas: `read_csv` stops the file (or silently skips the row) when a record has too many fields,
and `read_json` turns a user id "007" into 7 and stops the whole chunk at one malformed line. Every row
here is either loaded or refused with a reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_pipeline.loading.errors import LoadError
from ai_pipeline.loading.validation import KNOWN_COLUMNS, Reason, Refusal

FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".parquet": "parquet",
}
# A CSV field or JSONL line beyond this is no request (the row limits are far smaller); the bound keeps
# one damaged line (a lost quote, a missing newline) from filling memory.
MAX_LINE_CHARS = 8 * 1024 * 1024
PARQUET_BATCH_ROWS = 4096
_MAX_REPORTED_UNKNOWN_KEYS = 100


@dataclass(slots=True)
class RawRow:
    """One row as the file held it: its number, the loader's columns it had, its size in characters.

    `problem` is set when the row could not even be parsed (a CSV record with the wrong number of
    fields, a JSONL line that is not a JSON object).
    """

    number: int
    values: dict[str, Any]
    size: int = 0
    problem: Refusal | None = None


class RowSource:
    """An open request file: its columns, then its rows."""

    format: str = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self.total_rows: int | None = None
        self.blank_rows = 0

    @property
    def value_columns(self) -> list[str]:
        """The loader's columns this file has, in file order (the rejects file repeats them)."""
        return [name for name in self.columns if name in KNOWN_COLUMNS]

    def ignored_columns(self) -> list[str]:
        """Columns (or JSONL keys) the file has that the loader does not use."""
        return [name for name in self.columns if name not in KNOWN_COLUMNS]

    def rows(self) -> Iterator[RawRow]:
        """The file's non-blank rows, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def file_format(path: Path) -> str:
    """'csv', 'jsonl' or 'parquet', from the file name; `LoadError` for anything else."""
    name = path.name.lower()
    for suffix, kind in sorted(FORMATS.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return kind
    raise LoadError(f"{path.name}: unsupported file type; use one of {', '.join(FORMATS)}")


def open_rows(path: Path) -> RowSource:
    """Open a request file of any supported format and read its columns (`LoadError` if it can't)."""
    kind = file_format(path)
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    sources: dict[str, type[RowSource]] = {"csv": CsvSource, "jsonl": JsonlSource, "parquet": ParquetSource}
    try:
        return sources[kind](path)
    except LoadError:
        raise
    except (OSError, EOFError, ValueError, csv.Error) as exc:
        raise LoadError(f"{path.name}: cannot read the file as {kind}: {exc}") from exc


def _unreadable(path: Path, unit: str, number: int, exc: BaseException) -> LoadError:
    return LoadError(
        f"{path.name}: cannot read {unit} {number}: {exc} ({unit}s before it were loaded; "
        "loading the file again after fixing it is safe)"
    )


def _is_blank(values: dict[str, Any]) -> bool:
    return all(value is None or value == "" for value in values.values())


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


class CsvSource(RowSource):
    """A CSV file with a header row; every value arrives as text ("" = not given)."""

    format = "csv"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        csv.field_size_limit(MAX_LINE_CHARS)
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        self._file = opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            self._reader = csv.reader(self._file)
            header = next(self._reader, None)
        except BaseException:
            self._file.close()
            raise
        if header is None:
            self._file.close()
            raise LoadError(f"{path.name}: the file is empty (no header row)")
        # A header name with bytes that are not UTF-8 matches no column; shown with U+FFFD in warnings.
        self.columns = [
            name.strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace") for name in header
        ]

    def rows(self) -> Iterator[RawRow]:
        """The file's non-blank records; a record with the wrong number of fields comes with a problem."""
        wanted = [(name, index) for index, name in enumerate(self.columns) if name in KNOWN_COLUMNS]
        width = len(self.columns)
        number = 0
        try:
            for fields in self._reader:
                number += 1
                if not any(fields):
                    self.blank_rows += 1
                    continue
                values = {name: fields[index] for name, index in wanted if index < len(fields)}
                row = RawRow(number, values, sum(map(len, fields)))
                if len(fields) != width:
                    row.problem = Refusal(
                        Reason.MALFORMED_ROW, f"row has {len(fields)} fields; the header has {width}"
                    )
                yield row
        except (csv.Error, OSError, EOFError) as exc:
            raise _unreadable(self.path, "row", number + 1, exc) from exc

    def close(self) -> None:
        self._file.close()


class JsonlSource(RowSource):
    """One JSON object per line. Lines that are not valid UTF-8 or not a JSON object are refused."""

    format = "jsonl"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file = _open_binary(path)
        self._unknown_keys: dict[str, None] = {}
        self._number = 0
        self._first: RawRow | None = None
        try:
            self._first = self._first_row()
        except BaseException:
            self._file.close()
            raise
        if self._first is None:
            self._file.close()
            raise LoadError(f"{path.name}: the file has no rows")

    def _first_row(self) -> RawRow | None:
        # The first line's keys stand in for a header, so missing columns are refused up front.
        for row in self._lines():
            if row.problem is not None:
                raise LoadError(
                    f"{self.path.name}: line {row.number} is not a JSON object ({row.problem.message}); "
                    "expected one JSON object per line"
                )
            self.columns = [*row.values, *self._unknown_keys]
            return row
        return None

    @property
    def value_columns(self) -> list[str]:
        return list(KNOWN_COLUMNS)

    def ignored_columns(self) -> list[str]:
        return list(self._unknown_keys)

    def rows(self) -> Iterator[RawRow]:
        """The file's non-blank lines as rows; an unparseable line comes with a problem."""
        if self._first is not None:
            yield self._first
            self._first = None
        try:
            yield from self._lines()
        except (OSError, EOFError) as exc:
            raise _unreadable(self.path, "line", self._number + 1, exc) from exc

    def _lines(self) -> Iterator[RawRow]:
        while True:
            line = self._file.readline(MAX_LINE_CHARS + 1)
            if not line:
                return
            self._number += 1
            if len(line) > MAX_LINE_CHARS and not line.endswith(b"\n"):
                while (rest := self._file.readline(MAX_LINE_CHARS)) and not rest.endswith(b"\n"):
                    pass
                yield RawRow(
                    self._number,
                    {},
                    problem=Refusal(Reason.MALFORMED_ROW, f"line is longer than {MAX_LINE_CHARS:,} bytes"),
                )
                continue
            if not line.strip():
                self.blank_rows += 1
                continue
            yield self._parse(line)

    def _parse(self, line: bytes) -> RawRow:
        number = self._number
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            refusal = Refusal(
                Reason.INVALID_UTF8, f"line is not valid UTF-8 (byte 0x{line[exc.start]:02x} at {exc.start})"
            )
            return RawRow(number, {}, len(line), refusal)
        try:
            obj = json.loads(text.lstrip("\ufeff"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            return RawRow(
                number, {}, len(line), Refusal(Reason.MALFORMED_ROW, f"line is not valid JSON: {exc}")
            )
        if not isinstance(obj, dict):
            refusal = Refusal(Reason.MALFORMED_ROW, f"line is a JSON {type(obj).__name__}, not an object")
            return RawRow(number, {}, len(line), refusal)
        values = {}
        for key, value in obj.items():
            if key in KNOWN_COLUMNS:
                values[key] = value
            elif len(self._unknown_keys) < _MAX_REPORTED_UNKNOWN_KEYS:
                self._unknown_keys.setdefault(key, None)
        return RawRow(number, values, len(line))

    def close(self) -> None:
        self._file.close()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class ParquetSource(RowSource):
    """A Parquet file read in record batches. `input` may be a JSON string, a struct or a map."""

    format = "parquet"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import pyarrow.parquet as pq  # imported here: only Parquet loads need pyarrow

        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a damaged or non-Parquet file
            raise LoadError(f"{path.name}: cannot read the file as parquet: {exc}") from exc
        self.columns = list(self._file.schema_arrow.names)
        self.total_rows = self._file.metadata.num_rows

    def rows(self) -> Iterator[RawRow]:
        """The file's non-blank rows, decoded column by column from each record batch."""
        number = 0
        batches = self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=self.value_columns)
        try:
            for batch in batches:
                columns = {name: _python_values(batch.column(name)) for name in batch.schema.names}
                for index in range(batch.num_rows):
                    number += 1
                    values = {name: column[index] for name, column in columns.items()}
                    if _is_blank(values):
                        self.blank_rows += 1
                        continue
                    yield RawRow(number, values)
        except Exception as exc:  # pyarrow's errors for a damaged page
            if isinstance(exc, LoadError):
                raise
            raise _unreadable(self.path, "row", number + 1, exc) from exc

    def close(self) -> None:
        self._file.close()


def _python_values(array: Any) -> list[Any]:
    """An Arrow column as Python values: text decoded like CSV text, structs and maps as dicts."""
    import pyarrow as pa

    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # Through bytes, so text that is not valid UTF-8 is refused per row rather than per file.
        array = array.cast(pa.large_binary())
        kind = array.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [None if v is None else v.decode("utf-8", "surrogateescape") for v in array.to_pylist()]
    if pa.types.is_map(kind):
        return [None if v is None else dict(v) for v in array.to_pylist()]
    if pa.types.is_struct(kind):
        # A struct column gives every row every field; a field that is null in a row was not set.
        return [
            None if v is None else {key: item for key, item in v.items() if item is not None}
            for v in array.to_pylist()
        ]
    values: list[Any] = array.to_pylist()
    return values
