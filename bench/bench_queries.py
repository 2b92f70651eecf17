"""Finding and claiming due work at a million rows: the sensor's and the run's hot queries stay indexed.

Fills a fresh database with 1,000,000 requests (20 batches; 90 % already finished, as in a table that
has been in use for a while), then times the sensor's due-batch query and a run's claim, and prints
their plans. Results go to bench/RESULTS.md.

    .venv/bin/python bench/bench_queries.py [--rows 1000000] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_pipeline.db import batches, claims  # noqa: E402
from ai_pipeline.db.engine import engine_for_url  # noqa: E402
from ai_pipeline.db.migrate import upgrade_database  # noqa: E402
from ai_pipeline_tests.support.databases import fresh_database  # noqa: E402
from bench.results import write_section  # noqa: E402

SECTION = "## Finding due work at scale"

FILL = text(
    """
    INSERT INTO generation_requests (batch_id, user_id, model, input, status, completed_at)
    SELECT 'batch-' || (g % 20), 'user-' || (g % 1000), 'emulator/image',
           jsonb_build_object('prompt', 'request ' || g),
           CASE WHEN (g / 20) % 10 = 0 THEN 'pending' ELSE 'succeeded' END,
           CASE WHEN (g / 20) % 10 = 0 THEN NULL ELSE now() END
    FROM generate_series(1, :rows) g
    """
)


def timed(fn, repeat: int = 20) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with fresh_database("aip_bench") as url:
        engine = engine_for_url(url)
        upgrade_database(engine)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(FILL, {"rows": args.rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE generation_requests"))
        fill_seconds = time.perf_counter() - started

        def due() -> None:
            with engine.connect() as conn:
                found = batches.due_batches(conn)
                assert len(found) == 20, found

        def claim_and_release() -> None:
            with engine.connect() as conn, conn.begin() as tx:
                claimed = claims.claim_requests(conn, "batch-7", "bench", 100, 60)
                assert len(claimed) == 100
                tx.rollback()  # leave the table as it was for the next sample

        due_ms = timed(due)
        claim_ms = timed(claim_and_release)
        with engine.connect() as conn:
            plan_due = conn.execute(
                text(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT EXISTS ("
                    "SELECT 1 FROM generation_requests WHERE status = 'pending' AND batch_id = 'batch-7'"
                    " AND available_at <= now())"
                )
            ).scalars()
            plan_claim = conn.execute(
                text(
                    "EXPLAIN (COSTS OFF) SELECT id FROM generation_requests WHERE batch_id = 'batch-7'"
                    " AND status = 'pending' AND available_at <= now()"
                    " ORDER BY priority DESC, available_at, id LIMIT 100 FOR UPDATE SKIP LOCKED"
                )
            ).scalars()
            plans = "\n".join(["-- due check", *plan_due, "-- claim", *plan_claim])
        engine.dispose()
    pending = args.rows // 10
    section = "\n".join(
        [
            SECTION,
            "",
            f"_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
            f"`python bench/bench_queries.py {' '.join(sys.argv[1:])}`_",
            "",
            f"{args.rows:,} requests in 20 batches, {pending:,} of them pending "
            f"(filled in {fill_seconds:.1f} s).",
            "",
            "| query | median of 20 |",
            "| --- | ---: |",
            f"| sensor: which batches have due work (skip scan of the pending index) | {due_ms:.2f} ms |",
            f"| run: claim 100 due requests of one batch (`FOR UPDATE SKIP LOCKED`) | {claim_ms:.2f} ms |",
            "",
            "```",
            plans,
            "```",
            "",
        ]
    )
    print(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
