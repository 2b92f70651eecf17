"""Loading request files: what lands in the table, idempotent re-loads, and files refused up front."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from ai_pipeline.loading import LoadError, load_file
from ai_pipeline_tests.loading.files import (
    rejects,
    stored_requests,
    write_csv,
    write_jsonl,
    write_parquet,
)


def _rows(model: str) -> list[dict[str, Any]]:
    return [
        {"user_id": "u-1", "model": model, "prompt": "a red fox", "priority": 5},
        {"user_id": "u-2", "model": model, "input": {"prompt": "an owl", "seed": 7}, "external_id": "e-2"},
    ]


def _as_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import json

    flat = [{**r, "input": json.dumps(r["input"]) if "input" in r else ""} for r in rows]
    return write_csv(path, flat)


def _as_parquet_with_json_text(path: Path, rows: list[dict[str, Any]]) -> Path:
    import json

    return write_parquet(
        path, [{**r, "input": json.dumps(r["input"]) if "input" in r else None} for r in rows]
    )


WRITERS: dict[str, Callable[[Path, list[dict[str, Any]]], Path]] = {
    "requests.csv": _as_csv,
    "requests.csv.gz": _as_csv,
    "requests.jsonl": write_jsonl,
    "requests.ndjson": write_jsonl,
    "requests.jsonl.gz": write_jsonl,
    "requests.parquet": _as_parquet_with_json_text,
}


@pytest.mark.parametrize("name", WRITERS)
def test_every_format_loads_good_rows_as_pending_requests(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str, name: str
) -> None:
    rows = _rows(model)
    rows[1]["external_id"] = f"e-{unique}"
    path = WRITERS[name](tmp_path / name, rows)

    summary = load_file(engine, path, batch, progress=False)

    assert (summary.rows_read, summary.rows_inserted, summary.rows_refused) == (2, 2, 0)
    first, second = stored_requests(engine, batch)
    assert first["status"] == second["status"] == "pending"
    assert (first["batch_id"], first["user_id"], first["model"]) == (batch, "u-1", model)
    assert first["input"] == {"prompt": "a red fox"}
    assert (first["priority"], first["source_row"]) == (5, 1)
    assert second["input"] == {"prompt": "an owl", "seed": 7}
    assert (second["external_id"], second["priority"], second["source_row"]) == (f"e-{unique}", 0, 2)


def test_parquet_struct_input_is_stored_as_an_object_without_unset_fields(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    rows = [
        {"user_id": "u-1", "model": model, "input": {"prompt": "a fox", "seed": 1}},
        {"user_id": "u-2", "model": model, "input": {"prompt": "an owl", "seed": None}},
    ]
    path = write_parquet(tmp_path / "requests.parquet", rows)

    load_file(engine, path, batch, progress=False)

    assert [r["input"] for r in stored_requests(engine, batch)] == [
        {"prompt": "a fox", "seed": 1},
        {"prompt": "an owl"},
    ]


def test_loading_the_same_file_again_inserts_nothing(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str
) -> None:
    rows = _rows(model)
    rows[1]["external_id"] = f"e-{unique}"
    path = _as_csv(tmp_path / "requests.csv", [*rows, {"user_id": "bad user", "model": model, "prompt": "x"}])
    load_file(engine, path, batch, progress=False)

    again = load_file(engine, path, batch, progress=False)

    assert (again.rows_inserted, again.rows_already_present, again.rows_refused) == (0, 2, 1)
    assert len(stored_requests(engine, batch)) == 2


def test_reloading_a_chunk_mixing_refused_ids_and_rows_without_ids_inserts_nothing(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str
) -> None:
    rows = [
        {"user_id": "u-1", "model": "no/such-model", "prompt": "fox", "external_id": f"x-{unique}"},
        {"user_id": "u-2", "model": model, "prompt": "owl"},
    ]
    path = write_csv(tmp_path / "requests.csv", rows)
    load_file(engine, path, batch, progress=False)

    again = load_file(engine, path, batch, progress=False)

    assert (again.rows_inserted, again.rows_already_present) == (0, 1)
    assert [r["external_id"].startswith(f"load:{batch}:") for r in stored_requests(engine, batch)] == [True]


def test_rows_are_stored_under_their_external_id(
    engine: Engine, tmp_path: Path, model: str, batch: str, unique: str
) -> None:
    rows = [{"user_id": "u-1", "model": model, "prompt": "fox", "external_id": f"order-{unique}"}]

    load_file(engine, write_csv(tmp_path / "requests.csv", rows), batch, progress=False)

    assert [r["external_id"] for r in stored_requests(engine, batch)] == [f"order-{unique}"]


def test_identical_rows_without_external_id_are_separate_requests(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    row = {"user_id": "u-1", "model": model, "prompt": "a red fox"}
    path = write_csv(tmp_path / "requests.csv", [row, row, row])

    first = load_file(engine, path, batch, progress=False, chunk_rows=2)
    again = load_file(engine, path, batch, progress=False)

    assert (first.rows_inserted, again.rows_inserted, again.rows_already_present) == (3, 0, 3)
    keys = [r["external_id"] for r in stored_requests(engine, batch)]
    assert len(set(keys)) == 3
    assert all(key.startswith(f"load:{batch}:") for key in keys)


def test_a_row_added_at_the_top_of_a_loaded_file_is_the_only_one_inserted(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    rows = [{"user_id": f"u-{i}", "model": model, "prompt": f"fox {i}"} for i in range(3)]
    load_file(engine, write_csv(tmp_path / "requests.csv", rows), batch, progress=False)
    added = {"user_id": "u-new", "model": model, "prompt": "an owl"}

    again = load_file(engine, write_csv(tmp_path / "requests.csv", [added, *rows]), batch, progress=False)

    assert (again.rows_inserted, again.rows_already_present) == (1, 3)


def test_the_batch_row_records_the_file_and_counts(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    rows = [*_rows(model)[:1], {"user_id": "u-3", "model": "no/such-model", "prompt": "x"}]

    load_file(engine, _as_csv(tmp_path / "march.csv", rows), batch, progress=False)

    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT kind, source, rows_loaded, rows_refused FROM batches WHERE id = :id"), {"id": batch}
        ).one()
    assert tuple(row) == ("bulk", "march.csv", 1, 1)


def test_rejects_go_next_to_the_file_unless_a_path_is_given(
    engine: Engine, tmp_path: Path, model: str, unique: str
) -> None:
    path = write_csv(tmp_path / "requests.csv", [{"user_id": "u-1", "model": "no/such-model", "prompt": "x"}])

    default = load_file(engine, path, f"a-{unique}", progress=False)
    chosen = load_file(engine, path, f"b-{unique}", rejects_path=tmp_path / "bad.csv", progress=False)

    assert default.rejects_path == tmp_path / "requests.csv.rejects.csv"
    assert chosen.rejects_path == tmp_path / "bad.csv"
    assert rejects(tmp_path / "bad.csv")[0]["reason_code"] == "unknown_model"


def test_unknown_columns_are_ignored_with_a_warning(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    columns = ("user_id", "model", "prompt", "notes")
    path = write_csv(tmp_path / "requests.csv", [["u-1", model, "a fox", "from marketing"]], columns=columns)

    summary = load_file(engine, path, batch, progress=False)

    assert summary.rows_inserted == 1
    assert summary.ignored_columns == ("notes",)
    assert any("notes" in warning for warning in summary.warnings)


def test_a_bad_batch_name_is_refused_before_the_file_is_read(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=re.escape("invalid batch name '../march'")):
        load_file(engine, tmp_path / "does-not-exist.csv", "../march", progress=False)


def test_missing_columns_are_refused_before_anything_is_inserted(
    engine: Engine, tmp_path: Path, model: str, batch: str
) -> None:
    path = write_csv(tmp_path / "requests.csv", [["u-1", "a fox"]], columns=("user", "prompt"))

    with pytest.raises(
        LoadError, match=r"missing required column\(s\): user_id, model \(found: user, prompt\)"
    ):
        load_file(engine, path, batch, progress=False)

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM batches WHERE id = :id"), {"id": batch}).scalar() == 0


def test_a_file_without_prompt_or_input_column_is_refused(engine: Engine, tmp_path: Path, batch: str) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", [{"user_id": "u-1", "model": "m"}])

    with pytest.raises(LoadError, match=r"missing required column.*prompt or input"):
        load_file(engine, path, batch, progress=False)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("requests.xlsx", b"", "unsupported file type"),
        ("missing.csv", None, "no such file"),
        ("empty.csv", b"", "the file is empty"),
        ("broken.parquet", b"not parquet at all", "cannot read the file as parquet"),
        ("broken.csv.gz", b"not gzip", "cannot read the file as csv"),
        ("garbage.jsonl", b"user_id,model,prompt\n", "line 1 is not a JSON object"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_a_clear_error(
    engine: Engine, tmp_path: Path, batch: str, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(LoadError, match=message):
        load_file(engine, path, batch, progress=False)
