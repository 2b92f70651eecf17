"""The pipeline under load: real Dagster daemon, sensor and runs against the emulator.

Two scenarios, each on a fresh database (and fresh Dagster storage) with the daemon already running and
a warm-up batch of 10 requests processed before the measured one:

- throughput: 5,000 requests, predictions take ≈1 s, 50 in flight, rate limits off
  (ideal: 50 requests/s, 100 s);
- rate-limited: 1,200 requests with Replicate's 600 creates/minute on, in the emulator and in the
  pipeline's shared limiter (ideal: 120 s).

Measured from the load to the last terminal row: requests/s against the ideal, and the share of creates
answered 429; CPU per request of the pipeline's processes (the daemon and everything it starts: code
server, run workers; sampled with psutil) is counted on until the batch's runs have ended, so the
manifest and materialization a run writes after its last request count too. The emulator runs in its
own process; its CPU, and the Postgres server's, are reported beside but not counted as the pipeline's.

    .venv/bin/python bench/bench_pipeline.py [--requests 5000] [--limited-requests 1200] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_pipeline.catalogue import read_catalogue_file, upsert_models  # noqa: E402
from ai_pipeline.credits import grant  # noqa: E402
from ai_pipeline.db.engine import engine_for_url, resolve_database_url  # noqa: E402
from ai_pipeline.db.invariants import check_invariants  # noqa: E402
from ai_pipeline.dev.demo import CATALOGUE  # noqa: E402
from ai_pipeline.dev.local_stack import dagster_processes, local_stack  # noqa: E402
from ai_pipeline.loading import load_file  # noqa: E402
from ai_pipeline.settings import Settings  # noqa: E402
from ai_pipeline.storage.client import create_s3_client  # noqa: E402
from ai_pipeline.storage.uploads import object_check  # noqa: E402
from bench.results import write_section  # noqa: E402

SECTION = "## Pipeline end to end (real Dagster daemon)"


@dataclass
class Scenario:
    name: str
    requests: int
    ideal_seconds: float
    emulator: dict[str, Any]
    env: dict[str, str]


@dataclass
class Outcome:
    scenario: Scenario
    seconds: float
    statuses: dict[str, int]
    pipeline_cpu_seconds: float
    emulator_cpu_seconds: float
    postgres_cpu_seconds: float
    creates: int
    creates_429: int
    runs: int
    invariants: str
    per_process: dict[str, float]

    @property
    def rate(self) -> float:
        return self.scenario.requests / self.seconds

    @property
    def share_of_ideal(self) -> float:
        return self.scenario.ideal_seconds / self.seconds


class CpuSampler:
    """Sums the CPU time of process trees, sampling every `interval` seconds (max seen per pid).

    `roots` is a list of processes, or a function returning them (asked again at every sample).
    """

    def __init__(
        self, roots: list[psutil.Process] | Callable[[], list[psutil.Process]], interval: float = 0.25
    ) -> None:
        self._roots = roots
        self.interval = interval
        self.cpu: dict[tuple[int, float], float] = {}
        self.names: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        roots = self._roots() if callable(self._roots) else self._roots
        for root in roots:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    if key not in self.names:
                        self.names[key] = describe_process(proc)
                except psutil.Error:
                    continue
                self.cpu[key] = max(self.cpu.get(key, 0.0), times.user + times.system)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> CpuSampler:
        self._sample()
        self.baseline = dict(self.cpu)
        self._thread.start()
        return self

    def by_process(self) -> dict[str, float]:
        """CPU seconds since `start`, per kind of process."""
        totals: dict[str, float] = {}
        for key, cpu in self.cpu.items():
            name = self.names.get(key, "?")
            totals[name] = totals.get(name, 0.0) + cpu - self.baseline.get(key, 0.0)
        return totals

    def stop(self) -> float:
        """CPU seconds used since `start`."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(cpu - self.baseline.get(key, 0.0) for key, cpu in self.cpu.items())


def describe_process(proc: psutil.Process) -> str:
    """A short name for a pipeline process: daemon, webserver, code server, run worker, ..."""
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    if "multiprocessing.forkserver" in command:
        # The run launcher's forkserver and the run workers it forks share one command line.
        with suppress(psutil.Error):
            parent = proc.parent()
            if parent is not None and "multiprocessing.forkserver" in " ".join(parent.cmdline()):
                return "run worker"
        return "run-worker forkserver"
    for marker, name in [
        ("dagster-daemon", "dagster daemon"),
        ("api grpc", "code server"),
        ("code-server start", "code server (proxy)"),
        ("execute_run", "run worker"),
        ("api execute", "run worker"),
        # Dagster's default launcher: the code server spawns run workers (multiprocessing spawn).
        ("multiprocessing.spawn", "run worker"),
        ("multiprocessing.resource_tracker", "resource tracker"),
        ("watch_orphans", "orphan watcher"),
    ]:
        if marker in command:
            return name
    return command[:60]


def postgres_backends(server_url: str, databases: list[str]) -> Callable[[], list[psutil.Process]]:
    """A function listing the Postgres backends serving `databases` (other users of the server excluded)."""
    engine = create_engine(make_url(server_url).set(database="postgres"), pool_size=1)

    def backends() -> list[psutil.Process]:
        with engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = ANY(:names)"), {"names": databases}
            ).scalars()
            found = []
            for pid in pids:
                with suppress(psutil.Error):
                    found.append(psutil.Process(pid))
            return found

    return backends


@contextmanager
def fresh_databases(server_url: str):  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    names = [f"aip_bench_{tag}", f"aip_bench_dagster_{tag}"]
    admin = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=names[0]).render_as_string(hide_password=False), names[1]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_catalogue_and_credits(engine: Any, users: int = 50) -> None:
    """The demo catalogue, and `users` bench users with credits for any batch size here."""
    with engine.begin() as conn:
        upsert_models(conn, read_catalogue_file(CATALOGUE))
        for i in range(users):
            grant(conn, f"bench-user-{i}", 10_000)


def write_requests(path: Path, count: int, tag: str) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "model", "prompt"])
        for i in range(count):
            writer.writerow([f"bench-user-{i % 50}", "emulator/image", f"bench {tag} request {i}"])


def count_statuses(engine: Any, batch: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM generation_requests WHERE batch_id = :b GROUP BY status"),
            {"b": batch},
        )
        return {status: int(n) for status, n in rows}


def wait_for_sensor(stack: Any, timeout: float = 120.0) -> None:
    """Block until the daemon's sensor has ticked once (so start-up is not counted)."""
    engine = create_engine(stack.dagster_database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                try:
                    ticks = conn.execute(text("SELECT count(*) FROM job_ticks")).scalar_one()
                except Exception:  # tables not created yet
                    ticks = 0
            if ticks:
                return
            time.sleep(0.5)
        raise RuntimeError("the Dagster daemon's sensor never ticked")
    finally:
        engine.dispose()


def warm_up(engine: Any, stack: Any, folder: Path, requests: int = 10) -> None:
    """One small batch through the pipeline before the measured one, as a running pipeline has had.

    A daemon that has been up for a while has launched runs before: its run launcher's forkserver has
    imported the run worker's libraries already (ai_pipeline/orchestration/run_launcher.py). Waits
    until the batch is terminal and its run has ended, so none of it falls into the measurement.
    """
    batch = f"warm-up-{uuid.uuid4().hex[:6]}"
    path = folder / "warm-up.csv"
    write_requests(path, requests, batch)
    load_file(engine, path, batch, progress=False)
    deadline = time.monotonic() + 180
    while (statuses := count_statuses(engine, batch)).get("succeeded") != requests:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm-up batch did not finish: {statuses}")
        time.sleep(0.5)
    wait_for_runs_to_end(stack.dagster_database_url, batch, deadline - time.monotonic())


def wait_for_runs_to_end(dagster_database_url: str, batch: str, timeout: float) -> None:
    """Wait until no run of `batch` (its partition) is queued, starting or running any more."""
    runs = create_engine(dagster_database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with runs.connect() as conn:
                still_open = conn.execute(
                    text(
                        "SELECT count(*) FROM runs JOIN run_tags ON run_tags.run_id = runs.run_id"
                        " WHERE run_tags.key = 'dagster/partition' AND run_tags.value = :batch"
                        " AND runs.status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED')"
                    ),
                    {"batch": batch},
                ).scalar_one()
            if not still_open:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{still_open} run(s) of {batch} still open after {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        runs.dispose()


def run_scenario(scenario: Scenario, server_url: str) -> Outcome:
    with fresh_databases(server_url) as (database_url, dagster_db):
        os.environ["AI_PIPELINE_DATABASE_URL"] = database_url
        os.environ.update(scenario.env)
        settings = Settings.from_env()
        with local_stack(
            settings,
            emulator_options=scenario.emulator,
            emulator_in_process=False,
            dagster_database=dagster_db,
        ) as stack:
            stack.apply_environment()
            engine = engine_for_url(database_url)
            seed_catalogue_and_credits(engine)
            batch = f"bench-{scenario.name}-{uuid.uuid4().hex[:6]}"
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "requests.csv"
                write_requests(path, scenario.requests, batch)
                with dagster_processes(stack) as processes:
                    wait_for_sensor(stack)
                    warm_up(engine, stack, Path(folder))
                    before = stack.emulator.stats()
                    pipeline = CpuSampler([psutil.Process(p.pid) for p in processes]).start()
                    others = CpuSampler([psutil.Process(stack.emulator.process.pid)], interval=1.0).start()
                    database = CpuSampler(
                        postgres_backends(server_url, [make_url(database_url).database, dagster_db]),
                        interval=0.5,
                    ).start()
                    started = time.monotonic()
                    load_file(engine, path, batch, progress=False)
                    last = None
                    while True:
                        statuses = count_statuses(engine, batch)
                        done = sum(n for s, n in statuses.items() if s not in ("pending", "processing"))
                        if statuses != last:
                            elapsed = time.monotonic() - started
                            print(f"  [{elapsed:6.1f}s] {done}/{scenario.requests} {statuses}")
                            last = statuses
                        if done >= scenario.requests:
                            break
                        if time.monotonic() - started > scenario.ideal_seconds * 5 + 120:
                            raise RuntimeError(f"{scenario.name}: not finished in time: {statuses}")
                        time.sleep(0.2)
                    seconds = time.monotonic() - started
                    # The run still writes its manifest and materialization: its CPU counts too.
                    wait_for_runs_to_end(stack.dagster_database_url, batch, timeout=300)
                    pipeline_cpu = pipeline.stop()
                    per_process = pipeline.by_process()
                    emulator_cpu = others.stop()
                    postgres_cpu = database.stop()
                    runs = count_runs(stack.dagster_database_url, batch)
            after = stack.emulator.stats()
            s3 = create_s3_client(
                endpoint_url=stack.s3_endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="local",
                aws_secret_access_key="local",
            )
            with engine.connect() as conn:
                report = check_invariants(conn, batch_id=batch, verify_object=object_check(s3))
            engine.dispose()
    creates = after["requests_by_kind"].get("create", 0) - before["requests_by_kind"].get("create", 0)
    creates_429 = after["responses_429"].get("create", 0) - before["responses_429"].get("create", 0)
    return Outcome(
        scenario=scenario,
        seconds=seconds,
        statuses=statuses,
        pipeline_cpu_seconds=pipeline_cpu,
        emulator_cpu_seconds=emulator_cpu,
        postgres_cpu_seconds=postgres_cpu,
        creates=creates,
        creates_429=creates_429,
        runs=runs,
        invariants=report.summary(),
        per_process=per_process,
    )


def count_runs(dagster_database_url: str, batch: str) -> int:
    """Runs launched for `batch` (its partition)."""
    engine = create_engine(dagster_database_url)
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM run_tags WHERE key = 'dagster/partition' AND value = :batch"),
            {"batch": batch},
        ).scalar_one()
    engine.dispose()
    return int(count)


def format_section(outcomes: list[Outcome], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{psutil.cpu_count()} CPUs; `{command}`_",
        "",
        "From the load of the batch to its last terminal row, with the daemon already running and a "
        "warm-up batch of 10 requests through it first, as a running pipeline has had (sensor every 5 s, "
        "queued run coordinator, in-process executor). CPU is counted on until the batch's runs have "
        "ended (their manifest and materialization included), summed over the daemon "
        "and every process it starts (code server, run workers); the emulator (own process) and the "
        "Postgres backends serving the pipeline's and Dagster's databases are shown beside it, not counted.",
        "",
        "| scenario | requests | seconds | requests/s | ideal | of ideal | pipeline CPU ms/request "
        "| emulator CPU ms/req | Postgres CPU ms/req | creates answered 429 | runs | outcome |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for o in outcomes:
        n = o.scenario.requests
        lines.append(
            f"| {o.scenario.name} | {n:,} | {o.seconds:.1f} | {o.rate:.1f} "
            f"| {o.scenario.ideal_seconds:.0f} s "
            f"| {o.share_of_ideal:.0%} | {1000 * o.pipeline_cpu_seconds / n:.2f} "
            f"| {1000 * o.emulator_cpu_seconds / n:.2f} | {1000 * o.postgres_cpu_seconds / n:.2f} "
            f"| {o.creates_429}/{o.creates} ({o.creates_429 / max(1, o.creates):.2%}) | {o.runs} "
            f"| {o.statuses}; {o.invariants} |"
        )
    lines += ["", "Pipeline CPU by process (seconds over the whole scenario):", ""]
    for o in outcomes:
        parts = ", ".join(
            f"{name} {cpu:.1f} s" for name, cpu in sorted(o.per_process.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"- {o.scenario.name}: {parts}")
    lines += [
        "",
        "Targets: ≥ 80 % of the ideal, ≤ 10 ms pipeline CPU per request, < 1 % of creates answered 429.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--limited-requests", type=int, default=1200)
    parser.add_argument("--only", choices=["throughput", "rate-limited"])
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    server_url = resolve_database_url(Settings.from_env())
    base_env = {
        "AI_PIPELINE_MAX_IN_FLIGHT": "50",
        "AI_PIPELINE_SENSOR_INTERVAL_SECONDS": "5",
        "AI_PIPELINE_SYNC_WAIT_SECONDS": "60",
    }
    scenarios = [
        Scenario(
            "throughput",
            args.requests,
            args.requests / 50.0,
            {"predict_seconds": 1.0, "predict_jitter_seconds": 0.1, "rate_limits_enabled": False, "seed": 1},
            {**base_env, "AI_PIPELINE_CREATES_PER_MINUTE": "100000"},
        ),
        Scenario(
            "rate-limited",
            args.limited_requests,
            args.limited_requests / 10.0,
            {"predict_seconds": 1.0, "predict_jitter_seconds": 0.1, "rate_limits_enabled": True, "seed": 2},
            {**base_env, "AI_PIPELINE_CREATES_PER_MINUTE": "600"},
        ),
    ]
    outcomes = []
    for scenario in scenarios:
        if args.only and scenario.name != args.only:
            continue
        print(f"{scenario.name}: {scenario.requests} requests (ideal {scenario.ideal_seconds:.0f} s)")
        outcomes.append(run_scenario(scenario, server_url))
    section = format_section(outcomes, "python bench/bench_pipeline.py " + " ".join(sys.argv[1:]))
    print(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
