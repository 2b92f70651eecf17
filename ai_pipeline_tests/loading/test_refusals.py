"""Every kind of bad row is refused with its row number and a reason, and never reaches the table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from ai_pipeline.loading import load_file
from ai_pipeline_tests.loading.files import rejects, stored_requests, write_csv, write_jsonl
from ai_pipeline_tests.support.factories import insert_request

MODEL = "<model>"  # replaced by the catalogue model of the test
GOOD = {"user_id": "u-1", "model": MODEL, "prompt": "a red fox"}


@dataclass
class BadRow:
    """Row 2 of a three-row file (rows 1 and 3 are good), and the code it must be refused with."""

    code: str
    row: dict[str, Any] | list[str] | bytes
    format: str = "csv"


BAD_ROWS = {
    "unknown model": BadRow("unknown_model", {**GOOD, "model": "no/such-model"}),
    "disabled model": BadRow("model_disabled", {**GOOD, "model": "<disabled>"}),
    "input is invalid JSON": BadRow("invalid_input_json", {**GOOD, "prompt": "", "input": '{"prompt": "x",'}),
    "input holds NaN": BadRow("invalid_input_json", {**GOOD, "prompt": "", "input": '{"seed": NaN}'}),
    "input is a JSON list": BadRow("input_not_object", {**GOOD, "prompt": "", "input": '["a red fox"]'}),
    "JSONL input is a string": BadRow(
        "input_not_object", {"user_id": "u-1", "model": MODEL, "input": 42}, format="jsonl"
    ),
    "both prompt and input": BadRow("both_prompt_and_input", {**GOOD, "input": '{"prompt": "a fox"}'}),
    "neither prompt nor input": BadRow("no_prompt_or_input", {**GOOD, "prompt": "", "input": ""}),
    "JSONL neither prompt nor input": BadRow(
        "no_prompt_or_input", {"user_id": "u-1", "model": MODEL}, format="jsonl"
    ),
    "NUL in prompt": BadRow("nul_byte", {**GOOD, "prompt": "a red\x00fox"}),
    "NUL in input": BadRow("nul_byte", {**GOOD, "prompt": "", "input": '{"prompt": "a\\u0000b"}'}),
    "NUL in user_id": BadRow("nul_byte", {**GOOD, "user_id": "u\x001"}),
    "invalid UTF-8 in prompt": BadRow("invalid_utf8", {**GOOD, "prompt": "caf\udce9"}),
    "invalid UTF-8 in a JSONL line": BadRow(
        "invalid_utf8", b'{"user_id": "u-1", "model": "<model>", "prompt": "caf\xe9"}', format="jsonl"
    ),
    "unpaired surrogate escape": BadRow(
        "invalid_utf8", b'{"user_id": "u-1", "model": "<model>", "prompt": "a \\ud800 fox"}', format="jsonl"
    ),
    "blank prompt": BadRow("empty_prompt", {**GOOD, "prompt": "   "}),
    "empty prompt, the only request column": BadRow(
        "empty_prompt", ["u-1", MODEL, ""], format="csv-prompt-only"
    ),
    "prompt is a number": BadRow("prompt_not_text", {**GOOD, "prompt": 7}, format="jsonl"),
    "prompt over 10,000 characters": BadRow("prompt_too_long", {**GOOD, "prompt": "x" * 10_001}),
    "input over 64 KiB": BadRow(
        "input_too_large", {**GOOD, "prompt": "", "input": json.dumps({"prompt": "x" * 65_536})}
    ),
    "external_id over 200 characters": BadRow("external_id_too_long", {**GOOD, "external_id": "e" * 201}),
    "external_id with the loader's prefix": BadRow(
        "invalid_external_id", {**GOOD, "external_id": "load:x:1"}
    ),
    "malformed user_id": BadRow("invalid_user_id", {**GOOD, "user_id": "user 42"}),
    "missing user_id": BadRow("invalid_user_id", {**GOOD, "user_id": ""}),
    "priority is a word": BadRow("invalid_priority", {**GOOD, "priority": "high"}),
    "priority is a fraction": BadRow("invalid_priority", {**GOOD, "priority": "1.5"}),
    "CSV record with an extra field": BadRow("malformed_row", ["u-1", MODEL, "a fox", "", "", "0", "extra"]),
    "JSONL line that is not JSON": BadRow("malformed_row", b"{user_id: u-1}", format="jsonl"),
    "JSONL line that is a list": BadRow("malformed_row", b'["u-1", "<model>", "a fox"]', format="jsonl"),
}


def _fill(value: Any, model: str, disabled: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, model, disabled) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, model, disabled) for v in value]
    if isinstance(value, bytes):
        return value.replace(b"<model>", model.encode())
    return {MODEL: model, "<disabled>": disabled}.get(value, value) if isinstance(value, str) else value


def _file_with(tmp_path: Path, bad: BadRow, model: str, disabled: str) -> Path:
    good = _fill(GOOD, model, disabled)
    row = _fill(bad.row, model, disabled)
    if bad.format == "jsonl":
        return write_jsonl(tmp_path / "requests.jsonl", [good, row, good])
    if bad.format == "csv-prompt-only":
        columns = ("user_id", "model", "prompt")
        return write_csv(tmp_path / "requests.csv", [good, row, good], columns=columns)
    return write_csv(tmp_path / "requests.csv", [good, row, good])


@pytest.mark.parametrize("bad", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row_is_refused_with_its_row_number_and_reason(
    engine: Engine, tmp_path: Path, model: str, disabled_model: str, batch: str, bad: BadRow
) -> None:
    path = _file_with(tmp_path, bad, model, disabled_model)

    summary = load_file(engine, path, batch, progress=False)

    assert (summary.rows_read, summary.rows_inserted, summary.rows_refused) == (3, 2, 1)
    assert summary.refused_by_reason == {bad.code: 1}
    [refused] = rejects(summary.rejects_path)
    assert (refused["row"], refused["reason_code"]) == ("2", bad.code)
    assert refused["reason"]
    assert [r["source_row"] for r in stored_requests(engine, batch)] == [1, 3]


def test_a_repeated_external_id_is_refused_on_every_later_row(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str
) -> None:
    rows = [
        {"user_id": f"u-{i}", "model": model, "prompt": f"fox {i}", "external_id": f"x-{unique}"}
        for i in range(4)
    ]
    path = write_csv(tmp_path / "requests.csv", rows)

    summary = load_file(engine, path, batch, progress=False, chunk_rows=1)  # each row its own chunk

    assert summary.refused_by_reason == {"duplicate_external_id": 3}
    assert [(r["row"], r["reason"]) for r in rejects(summary.rejects_path)] == [
        (str(n), f"external_id 'x-{unique}' is already on row 1") for n in (2, 3, 4)
    ]
    assert [r["user_id"] for r in stored_requests(engine, batch)] == ["u-0"]


def test_an_external_id_repeated_after_a_refused_row_counts_from_that_row(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str
) -> None:
    rows = [
        {"user_id": "u-1", "model": "no/such-model", "prompt": "fox", "external_id": f"x-{unique}"},
        {"user_id": "u-1", "model": model, "prompt": "fox", "external_id": f"x-{unique}"},
    ]
    path = write_csv(tmp_path / "requests.csv", rows)

    summary = load_file(engine, path, batch, progress=False)

    assert summary.refused_by_reason == {"unknown_model": 1, "duplicate_external_id": 1}
    assert stored_requests(engine, batch) == []


def test_an_external_id_naming_a_different_request_is_refused(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str
) -> None:
    with engine.begin() as conn:
        existing = insert_request(conn, "u-app", external_id=f"app-{unique}", input={"prompt": "an owl"})
    path = write_csv(tmp_path / "requests.csv", [{**GOOD, "model": model, "external_id": f"app-{unique}"}])

    summary = load_file(engine, path, batch, progress=False)

    assert summary.refused_by_reason == {"external_id_taken": 1}
    [refused] = rejects(summary.rejects_path)
    assert f"already names request {existing}" in refused["reason"]
    assert stored_requests(engine, batch) == []


def test_row_numbers_count_file_rows_across_chunks_and_blank_lines(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    good = {**GOOD, "model": model}
    rows = [good, good, ["", "", "", "", "", ""], good, {**good, "user_id": "bad user"}, good]
    path = write_csv(tmp_path / "requests.csv", rows)

    summary = load_file(engine, path, batch, progress=False, chunk_rows=2)

    assert (summary.rows_read, summary.blank_rows, summary.rows_inserted) == (5, 1, 4)
    assert [r["row"] for r in rejects(summary.rejects_path)] == ["5"]
    assert [r["source_row"] for r in stored_requests(engine, batch)] == [1, 2, 4, 6]
