"""Benchmark: `ai-pipeline load` of a 100,000-row CSV with 1 % bad rows, next to a plain COPY.

    .venv/bin/python bench/bench_load.py [--rows 100000] [--no-append]

Generates the CSV in a temp dir (every 100th row bad, cycling through the refusal classes), loads it
in a subprocess (the `load` command, so peak RSS is that process's own) into a fresh migrated
database, checks 99 % inserted and 1 % refused, loads it again and checks nothing is inserted, loads a
file three times as long to show memory does not grow with the file, then times a plain
`COPY ... FROM STDIN` of the same good rows into an unindexed table and into `generation_requests`
itself (a second fresh database). Prints a table and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_pipeline.catalogue import ModelSpec, upsert_models  # noqa: E402
from ai_pipeline.db.engine import engine_for_url  # noqa: E402
from ai_pipeline.db.migrate import upgrade_database  # noqa: E402
from ai_pipeline.loading.validation import MAX_INPUT_BYTES, MAX_PROMPT_CHARS  # noqa: E402
from ai_pipeline_tests.support.databases import fresh_database  # noqa: E402
from bench.results import write_section  # noqa: E402

MODEL = "bench/image"
DISABLED_MODEL = "bench/retired"
HEADER = ["user_id", "model", "prompt", "input", "external_id", "priority"]
SUBJECTS = ["a red fox", "a lighthouse", "an old tram", "a koi pond", "a paper crane", "a desert road"]
STYLES = ["in watercolour", "as a woodcut", "at golden hour", "in the rain", "isometric", "on film"]


def bad_row(i: int, prefix: str, kind: int) -> list[bytes]:
    """Row `i`, broken in the way number `kind` (cycling) says."""
    user, ok_prompt = f"user-{i % 5000}".encode(), b"a fox"
    rows: list[list[bytes]] = [
        [user, b"bench/no-such-model", ok_prompt, b"", b"", b""],
        [user, DISABLED_MODEL.encode(), ok_prompt, b"", b"", b""],
        [user, MODEL.encode(), b"", b'{"prompt": "a fox",', b"", b""],
        [user, MODEL.encode(), b"", b'["a fox"]', b"", b""],
        [user, MODEL.encode(), ok_prompt, b'{"prompt": "a fox"}', b"", b""],
        [user, MODEL.encode(), b"", b"", b"", b""],
        [user, MODEL.encode(), b"a f\x00x", b"", b"", b""],
        [user, MODEL.encode(), b"caf\xe9 au lait", b"", b"", b""],
        [user, MODEL.encode(), b"   ", b"", b"", b""],
        [user, MODEL.encode(), b"x" * (MAX_PROMPT_CHARS + 1), b"", b"", b""],
        [user, MODEL.encode(), b"", json.dumps({"prompt": "y" * MAX_INPUT_BYTES}).encode(), b"", b""],
        [b"user 42", MODEL.encode(), ok_prompt, b"", b"", b""],
        [user, MODEL.encode(), ok_prompt, b"", b"", b"high"],
        # the row before every bad row is a good one with this external_id
        [user, MODEL.encode(), ok_prompt, b"", f"{prefix}-{i - 1}".encode(), b""],
        [user, MODEL.encode(), ok_prompt, b"", b"e" * 201, b""],
        [user, MODEL.encode(), ok_prompt],  # too few fields
    ]
    return rows[kind % len(rows)]


def good_row(i: int, prefix: str) -> list[bytes]:
    prompt = f"{SUBJECTS[i % 6]} {STYLES[(i // 6) % 6]}, study {i}"
    external_id = f"{prefix}-{i}" if i % 2 == 0 else ""
    if i % 4 == 1:
        request = json.dumps({"prompt": prompt, "seed": i, "width": 768, "height": 768})
        fields = ["", request]
    else:
        fields = [prompt, ""]
    return [s.encode() for s in [f"user-{i % 5000}", MODEL, *fields, external_id, str(i % 5)]]


def write_csv(path: Path, rows: int, prefix: str) -> int:
    """Write the benchmark CSV; return how many rows are bad."""
    bad = 0
    with path.open("wb") as f:
        f.write(b",".join(h.encode() for h in HEADER) + b"\n")
        for i in range(1, rows + 1):
            if i % 100 == 51:
                fields, bad = bad_row(i, prefix, bad), bad + 1
            else:
                fields = good_row(i, prefix)
            f.write(b",".join(_csv_field(x) for x in fields) + b"\n")
    return bad


def _csv_field(value: bytes) -> bytes:
    if any(c in value for c in b',"\n\r'):
        return b'"' + value.replace(b'"', b'""') + b'"'
    return value


@dataclass
class LoadRun:
    summary: dict
    wall_seconds: float
    peak_rss_mb: float


def run_load(url: str, path: Path, batch: str) -> LoadRun:
    """`ai-pipeline load` in a child process; its own peak RSS from wait4()."""
    command = [sys.executable, "-m", "ai_pipeline.loading.command", str(path), "--batch", batch]
    env = {**os.environ, "AI_PIPELINE_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen([*command, "--json", "--no-progress"], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"load failed ({proc.returncode}): {err.read().decode()}")
        summary = json.loads(out.read())
    return LoadRun(summary, wall, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def prepare_database(url: str) -> Engine:
    engine = engine_for_url(url)
    upgrade_database(engine)
    with engine.begin() as conn:
        upsert_models(
            conn,
            [
                ModelSpec(name=MODEL, credits_per_run=1, replicate_version="0" * 64),
                ModelSpec(name=DISABLED_MODEL, credits_per_run=1, replicate_version="1" * 64, enabled=False),
            ],
        )
    return engine


def good_rows_payload(engine: Engine, batch: str) -> tuple[str, int]:
    """The loaded good rows as COPY CSV text (what a plain COPY would be given)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with engine.connect() as conn:
        result = conn.execute(
            text(
                "SELECT external_id, batch_id, user_id, model, input::text, priority, source_row, status"
                " FROM generation_requests WHERE batch_id = :batch ORDER BY id"
            ),
            {"batch": batch},
        )
        count = 0
        for row in result:
            writer.writerow(row)
            count += 1
    return buffer.getvalue(), count


COPY_COLUMNS = "external_id, batch_id, user_id, model, input, priority, source_row, status"


def time_copy(engine: Engine, table: str, payload: str) -> float:
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        started = time.monotonic()
        cursor.copy_expert(
            f"COPY {table} ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT csv)", io.StringIO(payload)
        )
        connection.commit()
        return time.monotonic() - started
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-append", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    rows, big_rows = args.rows, 3 * args.rows

    with tempfile.TemporaryDirectory() as tmp:
        path, big_path = Path(tmp) / "requests.csv", Path(tmp) / "requests_x3.csv"
        bad = write_csv(path, rows, "bench")
        big_bad = write_csv(big_path, big_rows, "bench3")
        good = rows - bad
        print(f"generated {rows:,} rows ({bad:,} bad) and {big_rows:,} rows in {tmp}", file=sys.stderr)

        with fresh_database("aip_bench") as url:
            engine = prepare_database(url)
            with engine.connect() as conn:
                server = conn.execute(text("SHOW server_version")).scalar_one()
            first = run_load(url, path, "bench")
            s = first.summary
            assert (s["rows_inserted"], s["rows_refused"]) == (good, bad), s
            again = run_load(url, path, "bench")
            s2 = again.summary
            assert (s2["rows_inserted"], s2["rows_already_present"], s2["rows_refused"]) == (0, good, bad), s2
            big = run_load(url, big_path, "bench-x3")
            assert big.summary["rows_inserted"] == big_rows - big_bad, big.summary
            payload, payload_rows = good_rows_payload(engine, "bench")
            assert payload_rows == good
            engine.dispose()

        with fresh_database("aip_bench") as url:
            engine = prepare_database(url)
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "CREATE TABLE copy_target (external_id text, batch_id text, user_id text, model text,"
                        " input jsonb, priority integer, source_row bigint, status text)"
                    )
                )
            copy_plain = time_copy(engine, "copy_target", payload)
            copy_requests = time_copy(engine, "generation_requests", payload)
            engine.dispose()

    load_seconds = first.summary["seconds"]
    table = [
        "| step | rows | seconds | rows/s | peak RSS | result |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        _line(
            "`load` CSV, first time (in-process time)",
            rows,
            load_seconds,
            first.peak_rss_mb,
            f"{good:,} inserted, {bad:,} refused ({len(first.summary['refused_by_reason'])} reasons)",
        ),
        _line("`load` CSV, first time (whole process, incl. start-up)", rows, first.wall_seconds, None, ""),
        _line(
            "`load` same file again",
            rows,
            again.summary["seconds"],
            again.peak_rss_mb,
            f"0 inserted, {good:,} already present",
        ),
        _line(
            f"`load` {big_rows:,}-row CSV (memory check)",
            big_rows,
            big.summary["seconds"],
            big.peak_rss_mb,
            f"{big.summary['rows_inserted']:,} inserted",
        ),
        _line(
            "plain `COPY` of the good rows → unindexed table", good, copy_plain, None, "no checks, no keys"
        ),
        _line(
            "plain `COPY` of the good rows → generation_requests", good, copy_requests, None, "its indexes"
        ),
    ]
    ratio = (good / copy_requests) / (rows / load_seconds)
    database = (
        "AI_PIPELINE_TEST_DATABASE_URL" if os.environ.get("AI_PIPELINE_TEST_DATABASE_URL") else "embedded"
    )
    command = "`.venv/bin/python bench/bench_load.py`" + (f" --rows {rows}" if rows != 100_000 else "")
    notes = [
        f"Run {dt.date.today().isoformat()} with {command} ({os.cpu_count()} cores shared with other work, "
        f"Python {platform.python_version()}, PostgreSQL {server} ({database}), chunks of 20,000 rows).",
        "",
        *table,
        "",
        f"A plain COPY into generation_requests is {ratio:.1f}x the loader's speed; the loader also parses"
        " and validates every row, makes idempotency keys, stages the rows and resolves conflicts.",
        "Peak RSS is the loading process's own (wait4; about 48 MB of it is imports): "
        f"{first.peak_rss_mb:.0f} MB"
        f" at {rows:,} rows, {big.peak_rss_mb:.0f} MB at {big_rows:,}; memory is bounded by the chunk size.",
        "Refused by reason: "
        + ", ".join(f"{k} {v}" for k, v in first.summary["refused_by_reason"].items())
        + ".",
    ]
    report = "\n".join(["## Bulk load (100,000 rows)", "", *notes, ""])
    print(report)
    if not args.no_append:
        write_section(report)
        print("written to bench/RESULTS.md", file=sys.stderr)


def _line(step: str, rows: int, seconds: float, rss_mb: float | None, result: str) -> str:
    rss = f"{rss_mb:,.0f} MB" if rss_mb is not None else ""
    return f"| {step} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} | {rss} | {result} |"


if __name__ == "__main__":
    main()
