"""The agents of chaos, each a background thread until stopped: killing run workers, terminating the
pipeline's Postgres backends, throttling Replicate into a 429 storm, canceling requests mid-run."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from collections.abc import Callable
from typing import Any

import psutil
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import Engine, text

from ai_pipeline.db.cancels import cancel_requests

log = logging.getLogger(__name__)


class Agent(threading.Thread):
    """Calls `act()` after every wait of `interval()` seconds until stopped; counts what it did."""

    def __init__(self, name: str, interval: Callable[[], float]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.count = 0
        self.errors = 0
        self._stop_event = threading.Event()

    def act(self) -> int:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.wait(self.interval()):
            try:
                self.count += self.act()
            except Exception:  # chaos must not stop because one blow missed
                self.errors += 1
                log.exception("%s failed", self.name)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def run_worker_pids(instance: DagsterInstance) -> dict[str, int]:
    """The processes of the runs that are executing now, by run id.

    The project's run launcher forks one process per run from its forkserver (command line
    `... from multiprocessing.forkserver import main ...`); Dagster's default one has the code server
    spawn it (`... spawn_main(...) --multiprocessing-fork`). Either way the run records the pid in its
    "Started process for run (pid: N)" event. Only live processes that look like run workers count.
    """
    found = {}
    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        run_id = record.dagster_run.run_id
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            data = entry.dagster_event.engine_event_data if entry.dagster_event else None
            pid_value = (data.metadata or {}).get("pid") if data else None
            if pid_value is None:
                continue
            pid = int(str(pid_value.value))  # dagster records the pid as text
            with contextlib.suppress(psutil.Error):
                command = " ".join(psutil.Process(pid).cmdline())
                if "--multiprocessing-fork" in command or "multiprocessing.forkserver" in command:
                    found[run_id] = pid
    return found


class WorkerKiller(Agent):
    """SIGKILLs one executing run worker at random moments: no hook, no cleanup, leases left behind."""

    def __init__(self, interval: tuple[float, float], rng: random.Random) -> None:
        super().__init__("worker-killer", lambda: rng.uniform(*interval))
        self.rng = rng
        self.instance = DagsterInstance.get()
        self.killed_runs: list[str] = []

    def act(self) -> int:
        workers = run_worker_pids(self.instance)
        if not workers:
            return 0
        run_id = self.rng.choice(sorted(workers))
        os.kill(workers[run_id], signal.SIGKILL)
        self.killed_runs.append(run_id)
        log.info("SIGKILLed the worker of run %s (pid %s)", run_id, workers[run_id])
        return 1


class BackendTerminator(Agent):
    """Terminates every Postgres backend the pipeline holds on its database (`application_name`)."""

    def __init__(self, engine: Engine, every: float) -> None:
        super().__init__("backend-terminator", lambda: every)
        self.engine = engine

    def act(self) -> int:
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = 'ai_pipeline' AND datname = current_database()"
                    )
                ).scalar_one()
            )


class RequestCanceler(Agent):
    """Cancels chosen requests one at a time (`ai-pipeline cancel --request`) while the rest goes on."""

    def __init__(self, engine: Engine, request_ids: list[int], every: float) -> None:
        super().__init__("request-canceler", lambda: every)
        self.engine = engine
        self.request_ids = list(request_ids)

    def act(self) -> int:
        if not self.request_ids:
            return 0
        with self.engine.begin() as conn:
            cancel_requests(conn, request_id=self.request_ids.pop())
        return 1


class EmulatorWindow(threading.Thread):
    """Changes Replicate's behaviour (an emulator config patch) from `start` for `seconds`, then restores it:
    a 429 storm, a stretch where outputs are deleted right after predictions end."""

    def __init__(
        self,
        name: str,
        emulator: Any,
        start: float,
        seconds: float,
        patch: dict[str, Any],
        restore: dict[str, Any],
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.emulator, self.start_after, self.seconds = emulator, start, seconds
        self.patch, self.restore = patch, restore
        self.opened = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        if self._stop_event.wait(self.start_after):
            return
        self.emulator.configure(**self.patch)
        self.opened = True
        self._stop_event.wait(self.seconds)
        self.emulator.configure(**self.restore)
        log.info("%s over", self.name)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
