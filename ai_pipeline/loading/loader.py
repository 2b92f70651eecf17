"""`load_file`: a request file into `generation_requests` as one batch, chunk by chunk.

read a chunk ──▶ validate rows ──▶ assign keys ──▶ COPY + INSERT ... ON CONFLICT ──▶ commit
                     │                 │                     │
                     └──── refused rows, with row number and reason ──▶ rejects file
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy import Engine
from tqdm import tqdm

from ai_pipeline.catalogue import ModelSpec, load_catalogue
from ai_pipeline.loading.keys import FileKeys, content_hash
from ai_pipeline.loading.readers import RawRow, RowSource, open_rows
from ai_pipeline.loading.rejects import RejectsFile, default_rejects_path
from ai_pipeline.loading.summary import LoadSummary
from ai_pipeline.loading.validation import (
    AcceptedRow,
    Refusal,
    check_columns,
    validate_batch_name,
    validate_row,
    well_formed_external_id,
)
from ai_pipeline.loading.writer import InsertOutcome, RequestWriter, staging_copy

# A chunk also ends at this many characters of data, so a file of large inputs stays within memory.
CHUNK_CHARS = 32 * 1024 * 1024


def load_file(
    engine: Engine,
    path: str | Path,
    batch: str,
    *,
    rejects_path: str | Path | None = None,
    chunk_rows: int = 20_000,
    progress: bool = True,
) -> LoadSummary:
    """Load a CSV, Parquet or JSONL file of requests into `batch`; return what happened.

    Good rows become pending requests of the batch; refused rows go to `rejects_path` (default
    `<file>.rejects.csv`) with their row number and reason. Loading the same file into the same batch
    again inserts nothing twice. Raises `LoadError`, before inserting anything, for a bad batch name,
    a missing or unsupported file, or missing columns. Each chunk of `chunk_rows` rows is committed
    on its own, so an interrupted load is finished by running it again.
    """
    validate_batch_name(batch)
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    started = time.monotonic()
    path = Path(path)
    with open_rows(path) as source:
        check_columns(source.columns)
        with engine.connect() as conn:
            catalogue = load_catalogue(conn, enabled_only=False)
        rejects = RejectsFile(
            Path(rejects_path) if rejects_path else default_rejects_path(path), source.value_columns
        )
        try:
            tally = _load_rows(engine, source, batch, catalogue, rejects, chunk_rows, progress)
        except BaseException:
            rejects.discard()
            raise
        rejects.finish()
        ignored = source.ignored_columns()  # JSONL: every unknown key seen, not just the first line's
    warnings = (f"ignored column(s) the loader does not use: {', '.join(ignored)}",) if ignored else ()
    return LoadSummary(
        path=path,
        batch=batch,
        format=source.format,
        rows_read=tally.read,
        rows_inserted=tally.inserted,
        rows_already_present=tally.already_present,
        rows_refused=sum(tally.refused.values()),
        refused_by_reason=dict(tally.refused.most_common()),
        rejects_path=rejects.path,
        seconds=time.monotonic() - started,
        blank_rows=source.blank_rows,
        ignored_columns=tuple(ignored),
        warnings=warnings,
    )


@dataclass
class _Tally:
    read: int = 0
    inserted: int = 0
    already_present: int = 0
    refused: Counter[str] = field(default_factory=Counter)


@dataclass
class _CheckedChunk:
    """A chunk after the row rules: its rows, the refused ones, the accepted ones ready to COPY."""

    rows: list[RawRow]
    refused: list[tuple[int, Refusal]]
    accepted: int
    generated_keys: int  # accepted rows without an external_id: the loader makes their key
    given_ids: int  # rows staged with an external_id, accepted or refused
    copy_text: str


def _load_rows(
    engine: Engine,
    source: RowSource,
    batch: str,
    catalogue: Mapping[str, ModelSpec],
    rejects: RejectsFile,
    chunk_rows: int,
    progress: bool,
) -> _Tally:
    tally = _Tally()
    bar = tqdm(
        total=source.total_rows,
        desc=source.path.name,
        unit=" rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not (progress and sys.stderr.isatty()),
    )

    def finish(
        checked: _CheckedChunk, stored: Future[tuple[InsertOutcome, list[tuple[int, Refusal]]]]
    ) -> None:
        outcome, refusals = stored.result()
        if refusals:
            by_number = {row.number: row for row in checked.rows}
            rejects.write(
                (by_number[n], refusal) for n, refusal in sorted(refusals, key=lambda item: item[0])
            )
        tally.read += len(checked.rows)
        tally.inserted += outcome.inserted
        tally.already_present += outcome.already_present
        tally.refused.update(refusal.reason.value for _, refusal in refusals)
        bar.update(len(checked.rows))

    # The database stores one chunk while this thread reads and checks the next (psycopg2 releases the
    # GIL while it waits on the server); at most two chunks are in memory.
    with (
        bar,
        _load_session(engine, batch, source.path.name) as session,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-writer") as database,
    ):
        in_flight: tuple[_CheckedChunk, Future[Any]] | None = None
        for chunk in _chunks(source.rows(), chunk_rows):
            checked = _check(chunk, catalogue)
            if in_flight is not None:
                finish(*in_flight)
            in_flight = checked, database.submit(session.store, checked)
        if in_flight is not None:
            finish(*in_flight)
    return tally


def _check(chunk: list[RawRow], catalogue: Mapping[str, ModelSpec]) -> _CheckedChunk:
    """Apply the row rules and write the accepted rows as COPY text (off the database's thread)."""
    refused: list[tuple[int, Refusal]] = []
    accepted: list[tuple[AcceptedRow, str | None]] = []
    refused_ids: list[tuple[int, str]] = []
    for raw in chunk:
        outcome = raw.problem or validate_row(raw.number, raw.values, catalogue)
        if isinstance(outcome, Refusal):
            refused.append((raw.number, outcome))
            if raw.problem is None and (external_id := well_formed_external_id(raw.values)) is not None:
                refused_ids.append((raw.number, external_id))
        else:
            accepted.append((outcome, None if outcome.external_id else content_hash(outcome)))
    generated_keys = sum(1 for _, digest in accepted if digest is not None)
    return _CheckedChunk(
        rows=chunk,
        refused=refused,
        accepted=len(accepted),
        generated_keys=generated_keys,
        given_ids=len(accepted) - generated_keys + len(refused_ids),
        copy_text=staging_copy(accepted, refused_ids),
    )


def _chunks(rows: Iterator[RawRow], chunk_rows: int) -> Iterator[list[RawRow]]:
    chunk: list[RawRow] = []
    chars = 0
    for row in rows:
        chunk.append(row)
        chars += row.size
        if len(chunk) >= chunk_rows or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


class _LoadSession:
    """The load's database side, on one connection: keys, inserts, one commit per chunk."""

    def __init__(self, connection: Any, batch: str, source: str) -> None:
        self.connection = connection
        cursor = connection.cursor()
        self.keys = FileKeys(cursor, batch)
        self.writer = RequestWriter(cursor, batch, source)

    def store(self, checked: _CheckedChunk) -> tuple[InsertOutcome, list[tuple[int, Refusal]]]:
        """Stage, key, insert and commit a checked chunk; return what happened and every refusal in it."""
        self.writer.stage(checked.copy_text)
        duplicates = self.keys.refuse_repeated_external_ids() if checked.given_ids else []
        if checked.generated_keys:
            self.keys.make_generated_keys()
        outcome = self.writer.insert(staged=checked.accepted - len(duplicates))
        refusals = checked.refused + duplicates + outcome.refusals
        self.writer.add_counts(outcome.inserted, len(refusals))
        self.connection.commit()
        return outcome, refusals


@contextmanager
def _load_session(engine: Engine, batch: str, source: str) -> Iterator[_LoadSession]:
    """A connection of the load's own: its TEMP tables and settings end with it, not in the pool."""
    connection = engine.raw_connection()
    connection.detach()
    try:
        cursor = connection.cursor()
        try:
            # A staged chunk is larger than the default 8 MB of TEMP buffers; past them Postgres
            # writes TEMP tables to disk. (Refused if this session has used TEMP tables already.)
            cursor.execute("SET temp_buffers = '256MB'")
        except psycopg2.Error:
            connection.rollback()
        session = _LoadSession(connection, batch, source)
        session.keys.prepare()
        session.writer.prepare()
        connection.commit()
        yield session
    finally:
        connection.close()
