"""One chaos run, start to finish: fresh databases, the local stack with a faulty Replicate, the Dagster
daemon, the agents of chaos, the drain, and the figures and invariants at the end."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from ai_pipeline.catalogue import read_catalogue_file, upsert_models
from ai_pipeline.credits import grant
from ai_pipeline.db.engine import resolve_database_url
from ai_pipeline.db.invariants import InvariantReport, check_invariants
from ai_pipeline.dev.chaos.agents import (
    Agent,
    BackendTerminator,
    EmulatorWindow,
    RequestCanceler,
    WorkerKiller,
)
from ai_pipeline.dev.chaos.figures import ChaosFigures, count_outcomes, duplicate_predictions, failed_calls
from ai_pipeline.dev.chaos.scenario import EMULATOR_LIMITS, MODELS, NO_FAULTS, STORM_LIMITS, ChaosScenario
from ai_pipeline.dev.demo import CATALOGUE
from ai_pipeline.dev.local_stack import LocalStack, dagster_processes, local_stack
from ai_pipeline.loading import load_file
from ai_pipeline.settings import Settings, temporary_environment
from ai_pipeline.storage.client import create_s3_client
from ai_pipeline.storage.uploads import object_check

log = logging.getLogger(__name__)
RICH_USERS = ("chaos-ada", "chaos-bo", "chaos-cy")
POOR_USER = "chaos-poor"
# Duplicate billed predictions allowed per request when run workers are SIGKILLed mid-create.
DUPLICATE_BUDGET = 0.001
# The drain is over once nothing was open for this long (sweeps and sensor ticks come every few seconds).
DRAIN_QUIET_SECONDS = 15.0


@dataclass
class ChaosResult:
    """What a chaos run found: its figures, the invariant report, and every reason it failed."""

    scenario: ChaosScenario
    figures: ChaosFigures
    invariants: InvariantReport
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def run_chaos(
    scenario: ChaosScenario, *, echo: Callable[[str], None] = print, keep: bool = False
) -> ChaosResult:
    """Run the scenario on fresh databases and a fresh local stack; nothing is left running after.

    The databases are dropped afterwards unless `keep` (to look into a failed run).
    """
    home = Path(tempfile.mkdtemp(prefix="ai_pipeline_chaos_"))
    with _fresh_databases(keep) as (database_url, dagster_database), contextlib.ExitStack() as stack_exit:
        settings = Settings(home=home, database_url=database_url)
        stack = stack_exit.enter_context(
            local_stack(
                settings,
                emulator_options=scenario.emulator_options(),
                emulator_in_process=False,
                dagster_database=dagster_database,
            )
        )
        stack.extra_env.update(scenario.pipeline_env)
        stack_exit.enter_context(temporary_environment(stack.environment()))
        # Our own connections carry another application_name, so the terminator spares them.
        engine = create_engine(
            database_url, pool_pre_ping=True, connect_args={"application_name": "ai_pipeline_chaos"}
        )
        stack_exit.callback(engine.dispose)
        batches, cancel_ids = _load(engine, scenario, home)
        echo(
            f"chaos: {scenario.requests:,} requests in {len(batches)} batches; faults: {scenario.describe()}"
        )
        result = _run(scenario, stack, engine, batches, cancel_ids, echo, home)
    echo(f"chaos: {result.figures.line()}")
    echo(f"invariants: {result.invariants.summary()}")
    for problem in result.problems:
        echo(f"FAILED: {problem}")
    if result.ok:
        shutil.rmtree(home, ignore_errors=True)
    else:
        echo(f"chaos: logs kept in {home}")
    return result


def _run(
    scenario: ChaosScenario,
    stack: LocalStack,
    engine: Engine,
    batches: list[str],
    cancel_ids: list[int],
    echo: Callable[[str], None],
    home: Path,
) -> ChaosResult:
    rng = random.Random(scenario.seed)
    emulator = stack.emulator
    with dagster_processes(stack):
        started = time.monotonic()
        storm = EmulatorWindow(
            "429-storm",
            emulator,
            scenario.storm_start,
            scenario.storm_seconds,
            STORM_LIMITS,
            {k: EMULATOR_LIMITS[k] for k in STORM_LIMITS},
        )
        agents: list[Agent] = [
            RequestCanceler(engine, cancel_ids, every=max(0.2, 20.0 / max(1, len(cancel_ids))))
        ]
        if scenario.kill_interval:
            agents.append(WorkerKiller(scenario.kill_interval, rng))
        if scenario.backend_kill_interval:
            agents.append(BackendTerminator(engine, scenario.backend_kill_interval))
        for agent in [storm, *agents]:
            agent.start()
        try:
            _wait(
                engine,
                batches,
                scenario,
                started,
                echo,
                done=lambda ended, _: ended >= scenario.faults_until_done * scenario.requests,
                timeout=scenario.max_fault_seconds,
                agents=agents,
            )
        finally:
            storm.stop()
            for agent in agents:
                agent.stop()
        fault_phase_stats = emulator.stats()
        emulator.configure(**NO_FAULTS, **EMULATOR_LIMITS)
        echo(f"[{time.monotonic() - started:6.0f} s] faults stopped; draining")
        _wait(
            engine,
            batches,
            scenario,
            started,
            echo,
            done=lambda _, still_open: still_open == 0,
            timeout=scenario.drain_timeout,
            agents=agents,
            # Nothing open for a while: a retry the sweeper or a run may still add has had time to appear.
            quiet_seconds=DRAIN_QUIET_SECONDS,
        )
        wall = time.monotonic() - started
    return _judge(scenario, stack, engine, batches, agents, wall, home, fault_phase_stats)


def _wait(
    engine: Engine,
    batches: list[str],
    scenario: ChaosScenario,
    started: float,
    echo: Callable[[str], None],
    *,
    done: Callable[[int, int], bool],
    timeout: float,
    agents: list[Any],
    quiet_seconds: float = 0.0,
) -> None:
    """Poll progress until `done(ended originals, open work)` has held for `quiet_seconds`, or the
    timeout; a progress line every 15 s."""
    deadline = time.monotonic() + timeout
    last_line = 0.0
    done_since: float | None = None
    while True:
        ended, still_open, counts = _progress(engine, batches)
        now = time.monotonic()
        if now - last_line >= 15:
            last_line = now
            actions = ", ".join(f"{a.name} {a.count}" for a in agents)
            echo(
                f"[{now - started:6.0f} s] {ended:,}/{scenario.requests:,} ended, {still_open:,} open"
                f" {dict(sorted(counts.items()))}; {actions}"
            )
        if not done(ended, still_open):
            done_since = None
        elif done_since is None:
            done_since = now
        if (done_since is not None and now - done_since >= quiet_seconds) or now > deadline:
            return
        time.sleep(2.0)


_PROGRESS = text(
    """
    SELECT status, count(*) AS n,
           count(*) FILTER (WHERE retry_of IS NULL) AS originals
    FROM generation_requests WHERE batch_id = ANY(:batches) GROUP BY status
    """
)
# Retryable failures the sweeper will still retry once their backoff passes: work that is not over.
_RETRIES_DUE = text(
    """
    SELECT count(*) FROM generation_requests f
    WHERE f.batch_id = ANY(:batches) AND f.status = 'failed' AND f.retryable AND f.retry_of IS NULL
      AND f.cancel_requested_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM generation_requests c WHERE c.retry_of = f.id)
    """
)


def _progress(engine: Engine, batches: list[str]) -> tuple[int, int, dict[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(_PROGRESS, {"batches": batches}).all()
        retries_due = conn.execute(_RETRIES_DUE, {"batches": batches}).scalar_one()
    counts = {row.status: row.n for row in rows}
    ended = sum(row.originals for row in rows if row.status not in ("pending", "processing"))
    still_open = counts.get("pending", 0) + counts.get("processing", 0) + retries_due
    return ended, still_open, counts


def _judge(
    scenario: ChaosScenario,
    stack: LocalStack,
    engine: Engine,
    batches: list[str],
    agents: list[Any],
    wall: float,
    home: Path,
    fault_phase_stats: dict[str, Any],
) -> ChaosResult:
    stats = stack.emulator.stats(per_input=True)
    (home / "emulator_stats.json").write_text(json.dumps(stats, indent=1))  # kept when the run fails
    s3 = create_s3_client(
        endpoint_url=stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    with engine.connect() as conn:
        outcomes = count_outcomes(conn, batches, scenario.requests)
        duplicates = duplicate_predictions(conn, batches, stats["creates_by_input"]["per_input"])
        invariants = check_invariants(conn, verify_object=object_check(s3))
    calls, failed = failed_calls(fault_phase_stats)  # the share while faults were on
    by_name = {agent.name: agent for agent in agents}
    figures = ChaosFigures(
        requests=scenario.requests,
        duplicate_predictions=duplicates,
        worker_kills=by_name["worker-killer"].count if "worker-killer" in by_name else 0,
        backend_terminations=by_name["backend-terminator"].count if "backend-terminator" in by_name else 0,
        calls=calls,
        failed_calls=failed,
        wall_seconds=wall,
        **outcomes,
    )
    problems = [] if invariants.ok else [invariants.summary()]
    for name in ("lost", "double_debits", "missing_refunds", "orphaned_leases"):
        if getattr(figures, name):
            problems.append(f"{name.replace('_', ' ')}: {getattr(figures, name)}")
    budget = DUPLICATE_BUDGET if figures.worker_kills else 0.0
    if figures.duplicate_share > budget:
        problems.append(f"duplicate billed predictions {figures.duplicate_predictions} over {budget:.1%}")
    return ChaosResult(scenario, figures, invariants, problems)


def _load(engine: Engine, scenario: ChaosScenario, home: Path) -> tuple[list[str], list[int]]:
    """Grant credits and load the requests (every input unique) as the batches; pick the ones to cancel."""
    rng = random.Random(scenario.seed)
    run_tag = uuid.uuid4().hex[:8]
    poor = int(scenario.requests * scenario.poor_share)
    with engine.begin() as conn:
        upsert_models(conn, read_catalogue_file(CATALOGUE))
        for user in RICH_USERS:
            for credit_type in ("image_generation", "text_generation"):
                grant(conn, user, 10 * scenario.requests, credit_type)
        if poor:
            grant(conn, POOR_USER, max(1, poor // 2), "image_generation")
    batches = [f"chaos-{run_tag}-{n}" for n in range(scenario.batch_count)]
    files = {batch: (home / f"{batch}.csv").open("w", newline="") for batch in batches}
    writers = {batch: csv.writer(handle) for batch, handle in files.items()}
    for writer in writers.values():
        writer.writerow(["user_id", "model", "prompt"])
    for i in range(scenario.requests):
        if i < poor:
            user, model = POOR_USER, "emulator/image"
        else:
            user, model = rng.choice(RICH_USERS), rng.choice(MODELS)
        writers[batches[i % len(batches)]].writerow([user, model, f"chaos {run_tag} request {i}"])
    for handle in files.values():
        handle.close()
    loaded = sum(
        load_file(engine, home / f"{batch}.csv", batch, progress=False).rows_inserted for batch in batches
    )
    if loaded != scenario.requests:
        raise RuntimeError(f"loaded {loaded} of {scenario.requests} requests")
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                text("SELECT id FROM generation_requests WHERE batch_id = ANY(:b) ORDER BY id"),
                {"b": batches},
            ).scalars()
        )
    # Cancel among the later half: they are still pending, or in flight, when the cancels come.
    return batches, rng.sample(ids[len(ids) // 2 :], int(scenario.requests * scenario.cancel_share))


@contextlib.contextmanager
def _fresh_databases(keep: bool) -> Iterator[tuple[str, str]]:
    """A fresh pipeline database and the name of a fresh Dagster one, on the configured server; dropped
    afterwards unless `keep`."""
    server = make_url(resolve_database_url(Settings.from_env()))
    name = f"aip_chaos_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url, f"{name}_dagster"
    finally:
        if keep:
            print(f"chaos: databases kept: {url} (and {name}_dagster)")
        else:
            with admin.connect() as conn:
                for database in (name, f"{name}_dagster"):
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def record_results(result: ChaosResult, path: Path, command: str) -> None:
    """Write the figure line and the fault mix under `## Chaos` in `path` (replacing only that section)."""
    figures = result.figures
    section = "\n".join(
        [
            "## Chaos",
            "",
            f"_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{command}`, 2 CPUs shared with other work;"
            f" {'passed' if result.ok else 'FAILED'}_",
            "",
            f"**{figures.line()}**",
            "",
            f"Fault mix: {result.scenario.describe()}",
            "",
            f"Invariants: {result.invariants.summary()}."
            + (f" Problems: {'; '.join(result.problems)}." if result.problems else ""),
            "",
        ]
    )
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    start = existing.find("\n## Chaos\n")
    if start == -1:
        updated = existing.rstrip("\n") + "\n\n" + section
    else:
        end = existing.find("\n## ", start + 1)
        updated = existing[: start + 1] + section + (existing[end:] if end != -1 else "")
    path.write_text(updated)
