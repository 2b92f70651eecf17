"""What a load did, for people (the command prints it) and programs (`to_dict`, `--json`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LoadSummary:
    """Counts of one load. `rows_read` = `rows_inserted` + `rows_already_present` + `rows_refused`."""

    path: Path
    batch: str
    format: str
    rows_read: int
    rows_inserted: int
    rows_already_present: int
    rows_refused: int
    refused_by_reason: dict[str, int]
    rejects_path: Path
    seconds: float
    blank_rows: int = 0
    ignored_columns: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def rows_per_second(self) -> float:
        """Rows read per second of the whole load."""
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "path": str(self.path),
            "batch": self.batch,
            "format": self.format,
            "rows_read": self.rows_read,
            "rows_inserted": self.rows_inserted,
            "rows_already_present": self.rows_already_present,
            "rows_refused": self.rows_refused,
            "refused_by_reason": dict(self.refused_by_reason),
            "rejects_path": str(self.rejects_path),
            "blank_rows": self.blank_rows,
            "ignored_columns": list(self.ignored_columns),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
        }
