"""CPU the Dagster side of the pipeline uses per second while there is nothing to do.

Starts the local stack and the daemon, waits for the sensors to tick, then measures CPU per process
over `--seconds`: once with the code server the daemon starts itself (`workspace.yaml`), once with the
long-lived code server `make demo`/`make dev` start. The fixed cost every request pays a share of.

    .venv/bin/python bench/idle_cost.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_pipeline.db.engine import resolve_database_url
from ai_pipeline.dev.local_stack import dagster_processes, local_stack
from ai_pipeline.settings import Settings
from bench.bench_pipeline import CpuSampler, fresh_databases, wait_for_sensor
from bench.results import write_section


def measure(args: argparse.Namespace, own_code_server: bool) -> tuple[float, dict[str, float]]:
    """CPU per second of the Dagster processes, idle, and per kind of process."""
    with fresh_databases(args.server) as (database_url, dagster_db):
        os.environ["AI_PIPELINE_DATABASE_URL"] = database_url
        with local_stack(
            Settings.from_env(), emulator_in_process=False, dagster_database=dagster_db
        ) as stack:
            stack.apply_environment()
            with dagster_processes(stack, own_code_server=own_code_server) as processes:
                wait_for_sensor(stack)
                time.sleep(10)  # let start-up work settle
                sampler = CpuSampler([psutil.Process(p.pid) for p in processes]).start()
                time.sleep(args.seconds)
                total = sampler.stop()
                per_process = sampler.by_process()
    return total / args.seconds * 1000, {
        name: seconds / args.seconds * 1000 for name, seconds in per_process.items() if seconds > 0.01
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--server", default=None, help="Postgres server URL (default: the configured one)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    args.server = args.server or resolve_database_url(Settings.from_env())
    rows = []
    for label, own in [
        ("code server started by the daemon (`workspace.yaml`)", False),
        ("own code server", True),
    ]:
        total, per_process = measure(args, own)
        parts = ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(per_process.items(), key=lambda i: -i[1]))
        print(f"{label}: {total:.1f} ms CPU per second ({parts})", flush=True)
        rows.append((label, total, parts))
    ratio = rows[0][1] / rows[1][1] if rows[1][1] else float("inf")
    section = "\n".join(
        [
            "## Idle cost of the Dagster processes",
            "",
            f"_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()},"
            f" {os.cpu_count()} CPUs; `python bench/idle_cost.py --seconds {args.seconds:g}`_",
            "",
            "The daemon (sensors every 5-30 s, queued-run checks, monitoring) and the code server with"
            f" nothing to do, measured one after the other over {args.seconds:g} s each. This is the fixed"
            " cost every request of a slow batch pays a share of (at 10 requests/s, 10 ms of CPU per second"
            " is 1 ms per request).",
            "",
            "| setup | CPU ms per second | by process (ms/s) |",
            "| --- | ---: | --- |",
            *(f"| {label} | {total:.1f} | {parts} |" for label, total, parts in rows),
            "",
            f"With its own code server the idle pipeline uses {ratio:.1f}x less CPU: left to itself the"
            " daemon replaces its code server every 60 s, and each new one imports and loads the code again.",
        ]
    )
    if not args.no_write:
        write_section(section)
    print(section)


if __name__ == "__main__":
    main()
