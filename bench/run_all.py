"""`make bench`: every benchmark in turn, each replacing its own section of bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = [
    "bench_emulator.py",
    "bench_load.py",
    "bench_queries.py",
    "idle_cost.py",
    "bench_transport.py",
    "bench_api.py",
    "bench_pipeline.py",
]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(BENCH / name)], cwd=BENCH.parent).returncode != 0:
            failed.append(name)
    print(f"\nresults: {BENCH / 'RESULTS.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
