"""Idempotency keys: why loading the same file into the same batch twice inserts nothing twice.

A row with an `external_id` is stored under it (unique in `generation_requests`). A row without one is
stored under a key the loader makes:

    load:<batch>:<content hash>:<occurrence>

The hash covers user_id, model and input; `occurrence` counts identical rows so far in the file (1 for
the first), so two identical rows stay two requests. The row number is deliberately not part of the key:
inserting or deleting a line and loading the file again must not duplicate every row after it, each of
which would be a paid generation. Priority is not part of it either: raising a row's priority and
loading again does not make a second request.

An external_id may appear on one row of a file only; later rows with it are refused.

Both rules need what the load has seen so far (each external_id's first row, a count per content
hash). That is kept in TEMP tables on the load's connection, not in Python, so memory does not grow
with the file, and it is applied to each chunk in SQL over the staging table (see writer.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ai_pipeline.loading.validation import GENERATED_KEY_PREFIX, AcceptedRow, Reason, Refusal
from ai_pipeline.loading.writer import STAGING_TABLE

_SEEN_IDS = "load_seen_external_ids"
_OCCURRENCES = "load_content_occurrences"


def content_hash(row: AcceptedRow) -> str:
    """A short hash of what the row asks for: who, which model, which input."""
    content = f"{row.user_id}\x1f{row.model}\x1f{row.input_json}".encode()
    return hashlib.sha1(content, usedforsecurity=False).hexdigest()[:16]


class FileKeys:
    """Applies the key rules to each staged chunk of one file, on the load's psycopg2 cursor."""

    def __init__(self, cursor: Any, batch: str) -> None:
        self._cursor = cursor
        self.batch = batch

    def prepare(self) -> None:
        """Create the per-load TEMP tables."""
        self._cursor.execute(
            f"CREATE TEMP TABLE {_SEEN_IDS} (external_id text PRIMARY KEY, first_row bigint)"
        )
        self._cursor.execute(
            f"CREATE TEMP TABLE {_OCCURRENCES} (content_hash text PRIMARY KEY, occurrences bigint)"
        )

    def refuse_repeated_external_ids(self) -> list[tuple[int, Refusal]]:
        """Unstage every accepted row whose external_id an earlier row of the file has; refuse them.

        Refused rows are staged with their external_id too, so an id counts from the first row that
        has it, whether or not that row was accepted.
        """
        self._cursor.execute(
            f"INSERT INTO {_SEEN_IDS} (external_id, first_row)"
            f" SELECT external_id, min(source_row) FROM {STAGING_TABLE}"
            " WHERE external_id IS NOT NULL GROUP BY external_id"
            " ON CONFLICT (external_id) DO NOTHING"
        )
        self._cursor.execute(
            f"DELETE FROM {STAGING_TABLE} s USING {_SEEN_IDS} seen"
            " WHERE s.accepted AND s.external_id = seen.external_id AND s.source_row <> seen.first_row"
            " RETURNING s.source_row, s.external_id, seen.first_row"
        )
        return [
            (
                row,
                Refusal(
                    Reason.DUPLICATE_EXTERNAL_ID, f"external_id {external_id!r} is already on row {first}"
                ),
            )
            for row, external_id, first in self._cursor.fetchall()
        ]

    def make_generated_keys(self) -> None:
        """Give staged rows without an external_id their key, and count their contents."""
        self._cursor.execute(
            f"UPDATE {STAGING_TABLE} s SET key = %s || n.content_hash || ':' || n.occurrence"
            " FROM ("
            "   SELECT source_row, content_hash, coalesce(o.occurrences, 0)"
            "     + row_number() OVER (PARTITION BY content_hash ORDER BY source_row) AS occurrence"
            f"  FROM {STAGING_TABLE} LEFT JOIN {_OCCURRENCES} o USING (content_hash)"
            "   WHERE accepted AND content_hash IS NOT NULL"
            " ) n WHERE s.source_row = n.source_row",
            (f"{GENERATED_KEY_PREFIX}{self.batch}:",),
        )
        self._cursor.execute(
            f"INSERT INTO {_OCCURRENCES} (content_hash, occurrences)"
            f" SELECT content_hash, count(*) FROM {STAGING_TABLE}"
            " WHERE accepted AND content_hash IS NOT NULL GROUP BY content_hash"
            f" ON CONFLICT (content_hash) DO UPDATE SET occurrences = {_OCCURRENCES}.occurrences"
            " + EXCLUDED.occurrences"
        )
