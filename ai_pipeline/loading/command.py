"""`ai-pipeline load FILE --batch NAME`: the bulk loader on the command line.

Exit status: 0 when the file loaded (refused rows included: they are listed in the rejects file),
1 with a one-line message for a mistake the user can fix (file, batch name, columns, database),
2 for a usage error.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from psycopg2.errors import UndefinedTable
from sqlalchemy.exc import OperationalError, ProgrammingError

from ai_pipeline.loading.errors import LoadError
from ai_pipeline.loading.loader import load_file
from ai_pipeline.loading.summary import LoadSummary
from ai_pipeline.loading.validation import Reason


@click.command("load")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--batch", "batch", required=True, help="Batch name (letters, digits, '.', '_', '-').")
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write refused rows (default: FILE.rejects.csv).",
)
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def load_command(file: Path, batch: str, rejects_path: Path | None, no_progress: bool, as_json: bool) -> None:
    """Load a CSV, Parquet or JSONL file of requests into batch NAME as pending requests.

    Columns: user_id, model, prompt or input (a JSON object), and optionally external_id and
    priority. Bad rows are refused with their row number and reason in a rejects file; loading the
    same file into the same batch again inserts nothing twice.
    """
    from ai_pipeline.db.engine import get_engine  # imported here so `--help` needs no database
    from ai_pipeline.settings import Settings

    try:
        summary = load_file(
            get_engine(Settings.from_env()), file, batch, rejects_path=rejects_path, progress=not no_progress
        )
    except LoadError as exc:
        raise click.ClickException(str(exc)) from exc
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise click.ClickException(f"cannot use the database: {reason}") from exc
    except ProgrammingError as exc:
        if not isinstance(exc.orig, UndefinedTable):
            raise
        raise click.ClickException("the database has no tables yet: run `ai-pipeline db upgrade`") from exc
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(describe(summary))


def describe(summary: LoadSummary) -> str:
    """The summary as a few lines for people."""
    width = len(f"{summary.rows_read:,}")
    lines = [
        f"Loaded {summary.path.name} into batch {summary.batch!r} ({summary.format}, "
        f"{summary.seconds:.1f} s, {summary.rows_per_second:,.0f} rows/s)",
        f"  rows read        {summary.rows_read:>{width},}",
        f"  inserted         {summary.rows_inserted:>{width},}",
        f"  already present  {summary.rows_already_present:>{width},}",
        f"  refused          {summary.rows_refused:>{width},}",
    ]
    code_width = max(map(len, summary.refused_by_reason), default=0)
    for code, count in summary.refused_by_reason.items():
        lines.append(f"    {code:<{code_width}}  {count:>{width},}  {Reason(code).description}")
    if summary.rows_refused:
        lines.append(f"Refused rows, with row numbers and reasons: {summary.rejects_path}")
    lines.extend(f"Warning: {warning}" for warning in summary.warnings)
    return "\n".join(lines)


if __name__ == "__main__":
    load_command()
