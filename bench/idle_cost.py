"""CPU the Dagster side of the pipeline uses per second while there is nothing to do.

Starts the local stack and the daemon (with its code server), waits for the sensors to tick, then
measures CPU per process over `--seconds`. The fixed cost every request pays a share of.

    .venv/bin/python bench/idle_cost.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_pipeline.local_stack import dagster_processes, local_stack
from ai_pipeline.settings import Settings
from bench.bench_pipeline import CpuSampler, fresh_databases, wait_for_sensor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with fresh_databases(args.server) as (database_url, dagster_db):
        os.environ["AI_PIPELINE_DATABASE_URL"] = database_url
        with local_stack(
            Settings.from_env(), emulator_in_process=False, dagster_database=dagster_db
        ) as stack:
            stack.apply_environment()
            with dagster_processes(stack) as processes:
                wait_for_sensor(stack)
                time.sleep(10)  # let start-up work settle
                sampler = CpuSampler([psutil.Process(p.pid) for p in processes]).start()
                time.sleep(args.seconds)
                total = sampler.stop()
                per_process = sampler.by_process()
    print(f"idle: {total / args.seconds * 1000:.1f} ms CPU per second")
    for name, seconds in sorted(per_process.items(), key=lambda item: -item[1]):
        if seconds > 0.01:
            print(f"  {name}: {seconds / args.seconds * 1000:.1f} ms/s")


if __name__ == "__main__":
    main()
