"""CPU per request of the batch runner, this tree against a baseline commit, side by side.

    .venv/bin/python bench/bench_runner_cost.py --baseline REF [--rounds 3] [--requests 2000] [--no-write]

The baseline (a git ref, exported with `git archive` into a temporary folder) and this working tree take
turns running their own bench/profile_runner.py (the runner alone, no Dagster: 2,000 requests, 50 in
flight, predictions of about a second, its own emulator and S3 processes, a fresh database each), the
order swapped every round, so a noisy machine slows both alike. Reported per round: CPU ms per request
of the runner's process and requests per second, and the ratio of this tree to the baseline within the
round (then the median). Writes the ``## Batch runner CPU against a baseline`` section of
bench/RESULTS.md unless `--no-write`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import write_section  # noqa: E402

HEADING = "## Batch runner CPU against a baseline"
_CPU = re.compile(r"runner CPU [\d.]+ s = ([\d.]+) ms/request")
_RATE = re.compile(r"\(([\d.]+)/s\)")


def export(ref: str, folder: Path) -> str:
    """Write the tree of `ref` into `folder`; returns its short commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return commit


def profile(tree: Path, requests: int, server: str) -> tuple[float, float]:
    """(CPU ms per request, requests per second) of one bench/profile_runner.py run in `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for name in [name for name in env if name.startswith("AI_PIPELINE_")]:
        del env[name]
    done = subprocess.run(
        [sys.executable, "bench/profile_runner.py", "--requests", str(requests), "--server", server],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    cpu, rate = _CPU.search(done.stdout), _RATE.search(done.stdout)
    if done.returncode or cpu is None or rate is None:
        raise SystemExit(f"profile_runner failed in {tree}:\n{done.stdout}\n{done.stderr[-3000:]}")
    return float(cpu.group(1)), float(rate.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="git ref to compare with, e.g. main or a commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"baseline": [], "this tree": []}
    with tempfile.TemporaryDirectory(prefix="runner-baseline-") as folder:
        commit = export(args.baseline, Path(folder))
        trees = {"baseline": Path(folder), "this tree": REPO}
        for round_number in range(args.rounds):
            order = ["baseline", "this tree"] if round_number % 2 == 0 else ["this tree", "baseline"]
            for name in order:
                results[name].append(profile(trees[name], args.requests, args.server))
                cpu, rate = results[name][-1]
                print(f"round {round_number + 1}: {name}: {cpu:.2f} ms CPU/request, {rate:.1f} requests/s")
    ratios = [ours[0] / base[0] for ours, base in zip(results["this tree"], results["baseline"], strict=True)]
    rows = [
        "| tree | ms CPU per request, each round | median | requests/s, each round |",
        "| --- | --- | ---: | --- |",
    ]
    for name, label in [("baseline", f"baseline `{commit}`"), ("this tree", "this tree")]:
        cpus = [cpu for cpu, _ in results[name]]
        each = ", ".join(f"{cpu:.2f}" for cpu in cpus)
        rates = ", ".join(f"{rate:.1f}" for _, rate in results[name])
        rows.append(f"| {label} | {each} | {statistics.median(cpus):.2f} | {rates} |")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            HEADING,
            "",
            f"_{when}, {platform.python_version()}, {os.cpu_count()} CPUs shared with other work;"
            f" `.venv/bin/python bench/bench_runner_cost.py --baseline {args.baseline}"
            f" --rounds {args.rounds} --requests {args.requests}`_",
            "",
            f"bench/profile_runner.py of each tree ({args.requests} requests, 50 in flight, predictions of"
            " about 1 s, rate limits off), taking turns, the order swapped every round. CPU of the runner's"
            " process, all threads.",
            "",
            *rows,
            "",
            f"This tree costs {statistics.median(ratios):.2f}x the baseline's CPU per request (rounds"
            f" {', '.join(f'{ratio:.2f}' for ratio in ratios)}).",
        ]
    )
    print("\n" + section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
