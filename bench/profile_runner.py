"""CPU of the batch runner alone, per request, and where it goes: no Dagster, one process.

Runs `BatchRunner` in this process over N requests against the emulator (own process, latency 1 s,
rate limits off), the S3 endpoint (own process) and a fresh database on the given Postgres server, and
prints CPU ms per request of this process; with `--profile`, the top functions and the share per
package. Not part of `make bench` (the end-to-end figure is bench_pipeline.py's); a tool for finding
where the run worker's CPU goes.

    .venv/bin/python bench/profile_runner.py --requests 2000 [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.dev.local_stack import LOCAL_BUCKET, free_port, local_stack
from ai_pipeline.loading import load_file
from ai_pipeline.processing import BatchRunner
from ai_pipeline.replicate.predictions import make_client
from ai_pipeline.settings import Settings
from ai_pipeline.storage.client import create_s3_client
from bench.bench_pipeline import fresh_databases, seed_catalogue_and_credits, write_requests


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if "/ai_pipeline/" in filename:
        return "ai_pipeline"
    if filename.startswith("<") or filename == "~":
        return "builtins"
    return "stdlib:" + Path(filename).stem


@contextlib.contextmanager
def _s3_server() -> Iterator[str]:
    """A moto S3 server in its own process (the stack's in-process one would count as the runner's CPU)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        client = create_s3_client(endpoint_url=url, aws_access_key_id="local", aws_secret_access_key="local")
        for _ in range(100):
            try:
                client.create_bucket(Bucket=LOCAL_BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait()


class ThreadCpu:
    """CPU per thread-name prefix (db, s3, main...), sampled every half second while the runner works."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for t in psutil.Process().threads():
            name = names.get(t.id, self._seen.get(t.id, ("other", 0.0))[0])
            self._seen[t.id] = (name, t.user_time + t.system_time)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __enter__(self) -> ThreadCpu:
        self._sample()
        self._start = dict(self._seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_prefix(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for tid, (name, cpu) in self._seen.items():
            prefix = name.split("_")[0]  # db_0 -> db, s3_1 -> s3
            totals[prefix] += cpu - self._start.get(tid, (name, 0.0))[1]
        return totals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stats-file", help="with --profile: also save the pstats there (for callers)")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")

    parser.add_argument("--creates-per-minute", default="100000", help="the shared create limit")
    args = parser.parse_args()
    os.environ.update(
        {
            "AI_PIPELINE_MAX_IN_FLIGHT": "50",
            "AI_PIPELINE_SYNC_WAIT_SECONDS": "60",
            "AI_PIPELINE_CREATES_PER_MINUTE": args.creates_per_minute,
        }
    )
    with fresh_databases(args.server) as (database_url, dagster_db), _s3_server() as s3_url:
        os.environ["AI_PIPELINE_DATABASE_URL"] = database_url
        settings = Settings.from_env()
        emulator = {"predict_seconds": 1.0, "predict_jitter_seconds": 0.2, "rate_limits_enabled": False}
        with local_stack(
            settings, emulator_options=emulator, emulator_in_process=False, dagster_database=dagster_db
        ) as stack:
            stack.apply_environment()
            engine = engine_for_url(database_url, pre_ping=False)  # as the asset does
            seed_catalogue_and_credits(engine)
            batch = f"profile-{uuid.uuid4().hex[:6]}"
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "requests.csv"
                write_requests(path, args.requests, batch)
                load_file(engine, path, batch, progress=False)
            settings = Settings.from_env()
            runner = BatchRunner(
                engine,
                make_client(
                    settings.token,
                    settings.replicate_base_url,
                    max_connections=settings.run_in_flight + 10,  # as the asset does
                ),
                create_s3_client(
                    endpoint_url=s3_url, aws_access_key_id="local", aws_secret_access_key="local"
                ),
                settings,
                owner=f"profile-{uuid.uuid4().hex[:6]}",
            )
            profiler = cProfile.Profile(time.thread_time) if args.profile else None
            cpu, wall = _cpu(), time.monotonic()
            if profiler:
                profiler.enable()
            sampler = ThreadCpu().__enter__()
            report = asyncio.run(runner.run_async(batch)) if args.no_uvloop else runner.run(batch)
            sampler.__exit__()
            if profiler:
                profiler.disable()
            cpu, wall = _cpu() - cpu, time.monotonic() - wall
            calls = stack.emulator.stats()["requests_by_kind"]
            engine.dispose()
    handled = report.handled
    print(f"{handled} requests {dict(report.outcomes)} in {wall:.1f} s ({handled / wall:.1f}/s)")
    print(f"calls to the emulator: {calls}")
    threads = ", ".join(
        f"{name} {seconds * 1000 / handled:.2f}" for name, seconds in sampler.by_prefix().most_common(4)
    )
    print(f"CPU ms/request by thread: {threads}")
    print(f"runner CPU {cpu:.2f} s = {cpu * 1000 / handled:.2f} ms/request (this process, all threads)")
    if profiler:
        stats = pstats.Stats(profiler)
        if args.stats_file:
            stats.dump_stats(args.stats_file)
        by_package: Counter[str] = Counter()
        for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            by_package[_package(filename)] += tottime
        total = sum(by_package.values())
        print("\nself time by package (profiled thread only):")
        for package, seconds in by_package.most_common(20):
            print(f"  {package:30s} {seconds:7.2f} s  {seconds / total:5.1%}")
        stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
