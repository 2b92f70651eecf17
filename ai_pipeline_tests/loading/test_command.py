"""`ai-pipeline load`: summaries, exit codes, and one-line errors for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from ai_pipeline.loading.command import load_command
from ai_pipeline_tests.loading.files import write_csv


def _run(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(load_command, list(args), env={"AI_PIPELINE_DATABASE_URL": database_url})


def test_load_reports_refused_rows_and_the_rejects_file_and_exits_zero(
    database_url: str, tmp_path: Path, model: str, batch: str
) -> None:
    rows = [
        {"user_id": "u-1", "model": model, "prompt": "a fox"},
        {"user_id": "u-2", "model": "nope", "prompt": "x"},
    ]
    path = write_csv(tmp_path / "requests.csv", rows)

    result = _run(database_url, str(path), "--batch", batch, "--no-progress")

    assert result.exit_code == 0, result.output
    assert "inserted         1" in result.output
    assert "refused          1" in result.output
    assert "unknown_model" in result.output
    assert str(tmp_path / "requests.csv.rejects.csv") in result.output


def test_load_prints_the_summary_as_json(database_url: str, tmp_path: Path, model: str, batch: str) -> None:
    path = write_csv(tmp_path / "requests.csv", [{"user_id": "u-1", "model": model, "prompt": "a fox"}])

    result = _run(database_url, str(path), "--batch", batch, "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["batch"], summary["rows_inserted"], summary["rows_refused"]) == (batch, 1, 0)


def test_a_missing_file_exits_nonzero_with_one_line_and_no_traceback(
    database_url: str, tmp_path: Path, batch: str
) -> None:
    result = _run(database_url, str(tmp_path / "nope.csv"), "--batch", batch)

    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'nope.csv'}: no such file"]
    assert "Traceback" not in result.output


def test_a_bad_batch_name_exits_nonzero_with_one_line(database_url: str, tmp_path: Path, model: str) -> None:
    path = write_csv(tmp_path / "requests.csv", [{"user_id": "u-1", "model": model, "prompt": "a fox"}])

    result = _run(database_url, str(path), "--batch", "march 2026")

    assert result.exit_code == 1
    assert result.output.startswith("Error: invalid batch name 'march 2026'")
    assert len(result.output.strip().splitlines()) == 1


def test_missing_columns_exit_nonzero_naming_them(database_url: str, tmp_path: Path, batch: str) -> None:
    path = write_csv(tmp_path / "requests.csv", [["u-1", "a fox"]], columns=("user_id", "prompt"))

    result = _run(database_url, str(path), "--batch", batch)

    assert result.exit_code == 1
    assert "missing required column(s): model" in result.output
    assert "Traceback" not in result.output


def test_load_without_a_batch_is_a_usage_error(database_url: str, tmp_path: Path) -> None:
    result = _run(database_url, str(tmp_path / "requests.csv"))

    assert result.exit_code == 2
    assert "Missing option '--batch'" in result.output
