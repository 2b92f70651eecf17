"""Writing validated rows: COPY into a TEMP staging table, then one INSERT ... ON CONFLICT per chunk.

A row whose key is already taken is not inserted again. If the request holding the key is this row
(same batch, user, model and input) it counts as already present; otherwise the row is refused as
`external_id_taken`, so a reused id never hides a request silently.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ai_pipeline.db.lifecycle import RequestStatus
from ai_pipeline.loading.validation import AcceptedRow, Reason, Refusal

STAGING_TABLE = "load_staging"
_STAGING_COLUMNS = (
    "source_row",
    "accepted",
    "external_id",
    "key",
    "content_hash",
    "user_id",
    "model",
    "input",
    "priority",
)


def staging_copy(
    accepted: Iterable[tuple[AcceptedRow, str | None]], refused_ids: Iterable[tuple[int, str]]
) -> str:
    """The COPY text for one chunk: accepted rows (with their content hash when they have no
    external_id) and, for the one-row-per-external_id rule, the ids of refused rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(
        (r.number, "t", r.external_id, r.external_id, digest, r.user_id, r.model, r.input_json, r.priority)
        for r, digest in accepted
    )
    nothing_else = (None,) * (len(_STAGING_COLUMNS) - 3)
    writer.writerows((number, "f", external_id, *nothing_else) for number, external_id in refused_ids)
    return buffer.getvalue()


@dataclass
class InsertOutcome:
    """What one chunk's insert did."""

    inserted: int = 0
    already_present: int = 0
    refusals: list[tuple[int, Refusal]] = field(default_factory=list)


class RequestWriter:
    """Inserts rows of one batch into `generation_requests` on a psycopg2 connection's cursor.

    The caller owns the transaction: one commit per chunk keeps a crash from losing more than the chunk
    in flight, and a second run of the same file picks up where the first stopped.
    """

    def __init__(self, cursor: Any, batch: str, source: str) -> None:
        self._cursor = cursor
        self.batch = batch
        self.source = source

    def prepare(self) -> None:
        """Create the staging table and the batch row (kept as it is when it exists)."""
        # `external_id` is what the file gave; `key` what the request is stored under (keys.py).
        # Refused rows appear with their external_id only, and accepted = false.
        self._cursor.execute(
            f"CREATE TEMP TABLE {STAGING_TABLE} ("
            " source_row bigint NOT NULL, accepted boolean NOT NULL, external_id text, key text,"
            " content_hash text, user_id text, model text, input jsonb, priority integer"
            ") ON COMMIT DELETE ROWS"
        )
        self._cursor.execute(
            "INSERT INTO batches (id, kind, source) VALUES (%s, 'bulk', %s)"
            " ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, updated_at = now()",
            (self.batch, self.source),
        )

    def stage(self, copy_text: str) -> None:
        """COPY a chunk (made by `staging_copy`) into the staging table."""
        self._cursor.copy_expert(
            f"COPY {STAGING_TABLE} ({', '.join(_STAGING_COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
            io.StringIO(copy_text),
            size=1 << 20,
        )

    def insert(self, staged: int) -> InsertOutcome:
        """Insert the `staged` accepted rows (keys made) as pending requests; say what was new."""
        if not staged:
            return InsertOutcome()
        self._cursor.execute(
            "INSERT INTO generation_requests"
            " (external_id, batch_id, user_id, model, input, priority, source_row, status)"
            f" SELECT key, %s, user_id, model, input, priority, source_row, %s FROM {STAGING_TABLE}"
            " WHERE accepted ORDER BY source_row ON CONFLICT (external_id) DO NOTHING",
            (self.batch, RequestStatus.PENDING.value),
        )
        outcome = InsertOutcome(inserted=self._cursor.rowcount)
        if outcome.inserted < staged:
            outcome.refusals = self._taken_by_other_requests()
        outcome.already_present = staged - outcome.inserted - len(outcome.refusals)
        return outcome

    def _taken_by_other_requests(self) -> list[tuple[int, Refusal]]:
        # Rows just inserted match themselves; only keys held by a different request come back.
        self._cursor.execute(
            "SELECT s.source_row, s.key, g.id, g.batch_id"
            f" FROM {STAGING_TABLE} s JOIN generation_requests g ON g.external_id = s.key"
            " WHERE s.accepted AND (g.batch_id IS DISTINCT FROM %s OR g.user_id <> s.user_id"
            " OR g.model <> s.model OR g.input <> s.input)",
            (self.batch,),
        )
        return [
            (
                row,
                Refusal(
                    Reason.EXTERNAL_ID_TAKEN,
                    f"external_id {key!r} already names request {request_id}"
                    f" (batch {batch_id!r}) with different content",
                ),
            )
            for row, key, request_id, batch_id in self._cursor.fetchall()
        ]

    def add_counts(self, inserted: int, refused: int) -> None:
        """Add a chunk's counts to the batch row (in the chunk's transaction)."""
        self._cursor.execute(
            "UPDATE batches SET rows_loaded = rows_loaded + %s, rows_refused = rows_refused + %s,"
            " updated_at = now() WHERE id = %s",
            (inserted, refused, self.batch),
        )
