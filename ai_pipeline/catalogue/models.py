"""Model catalogue entries, read from a YAML file and kept in the `models` table.

A catalogue file looks like:

    models:
      - name: emulator/image             # what requests put in their `model` column
        replicate_version: 5c7d5dc6...    # create by version ...
        # replicate_model: owner/name    # ... or by official model ...
        # replicate_deployment: o/name   # ... or through a deployment
        credit_type: image_generation
        credits_per_run: 1
        max_in_flight: 20                # optional per-model cap on predictions in flight
        usd_per_second: 0.000225         # optional: hardware price, for cost reports
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ai_pipeline.db.tables import models


class CatalogueError(ValueError):
    """A catalogue file or entry is malformed."""


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry."""

    name: str
    credits_per_run: int
    credit_type: str = "image_generation"
    replicate_model: str | None = None
    replicate_version: str | None = None
    replicate_deployment: str | None = None
    max_in_flight: int | None = None
    usd_per_second: float | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise CatalogueError("a model needs a name")
        if not (self.replicate_model or self.replicate_version or self.replicate_deployment):
            raise CatalogueError(
                f"model {self.name!r} needs replicate_version, replicate_model or replicate_deployment"
            )
        if not isinstance(self.credits_per_run, int) or self.credits_per_run < 0:
            raise CatalogueError(f"model {self.name!r}: credits_per_run must be a whole number >= 0")
        if self.max_in_flight is not None and self.max_in_flight <= 0:
            raise CatalogueError(f"model {self.name!r}: max_in_flight must be positive")


_FIELDS = set(ModelSpec.__dataclass_fields__)


def read_catalogue_file(path: Path) -> list[ModelSpec]:
    """Parse a catalogue YAML file into model specs (raises `CatalogueError` with the reason)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"cannot read catalogue {path}: {exc}") from exc
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: expected a top-level 'models:' list")
    specs = []
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise CatalogueError(f"{path}: entry {index} is not a mapping")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise CatalogueError(f"{path}: entry {index} has unknown keys {sorted(unknown)}")
        try:
            specs.append(ModelSpec(**entry))
        except TypeError as exc:
            raise CatalogueError(f"{path}: entry {index}: {exc}") from exc
    return specs


def upsert_models(conn: Connection, specs: list[ModelSpec]) -> int:
    """Insert or update catalogue entries by name; returns how many were written."""
    for spec in specs:
        values: dict[str, Any] = asdict(spec)
        statement = pg_insert(models).values(**values)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[models.c.name],
                set_={**{k: statement.excluded[k] for k in values if k != "name"}, "updated_at": func.now()},
            )
        )
    return len(specs)


def load_catalogue(conn: Connection, *, enabled_only: bool = True) -> dict[str, ModelSpec]:
    """The catalogue as a dict by model name."""
    query = select(models)
    if enabled_only:
        query = query.where(models.c.enabled)
    result = {}
    for row in conn.execute(query):
        usd = row.usd_per_second
        result[row.name] = ModelSpec(
            name=row.name,
            credits_per_run=int(row.credits_per_run),
            credit_type=row.credit_type,
            replicate_model=row.replicate_model,
            replicate_version=row.replicate_version,
            replicate_deployment=row.replicate_deployment,
            max_in_flight=row.max_in_flight,
            usd_per_second=float(usd) if isinstance(usd, Decimal) else usd,
            enabled=row.enabled,
        )
    return result
