"""Start each run worker as a fork of a process that has already imported the libraries it needs.

Dagster's default launcher has the code server *spawn* every run worker: a fresh interpreter that
imports Dagster, dagster-aws, pandas, pyarrow, boto3, SQLAlchemy, aiohttp, the Replicate client …
before it handles its first request — about 3 s of CPU, and as long before the run starts. This
launcher keeps a `multiprocessing` *forkserver* in the launching process (the daemon): started on the
first launch, it imports those libraries once (`preload_modules`), then forks one child per run. A
child has them already; it imports only our own code (`ai_pipeline`, ~0.15 s), so a code change is
picked up by the next run exactly as with the default launcher. A library upgrade needs a restart of
the daemon, as it does anyway.

The child runs what `dagster api execute_run` runs, the entry point of every out-of-process launcher
(Docker, ECS, Kubernetes). Its pid and host are recorded as run tags, so that
- `terminate` can send it SIGINT from any process on the host (the UI's terminate comes from the
  webserver); the worker turns that into a canceled run, and the cancel sensor releases its requests;
- a worker that dies without a word (SIGKILL, the OOM killer) gets its run marked failed: within a
  second by the launcher that started it (as the code server does for the workers it spawns), or by
  run monitoring through `check_run_worker_health` after a restart of the daemon. The run-failure
  sensor then refunds or releases its requests, instead of waiting for their leases to run out.

Where `forkserver` does not exist (Windows), workers are spawned: correct, only without the head start.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil
from dagster import Field, Noneable
from dagster import _check as check
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value
from dagster._utils import get_run_crash_explanation

log = logging.getLogger(__name__)

PID_TAG = "ai_pipeline/run_worker_pid"
HOST_TAG = "ai_pipeline/run_worker_host"
# The process's start time (psutil's create_time, seconds): a pid reused by another process is not ours.
STARTED_TAG = "ai_pipeline/run_worker_started"
# How often the launcher looks for workers that have exited (the code server: every half second).
WATCH_SECONDS = 0.5

# Third-party modules a run worker imports (checked by a test against what it really imports); never
# our own package, so that runs always execute the code as it is on disk.
DEFAULT_PRELOAD_MODULES = (
    "dagster",
    "dagster._cli.api",
    "dagster._core.execution.api",
    "dagster._daemon.cli",  # the daemon's __main__, which multiprocessing re-imports in each child
    "dagster_aws.s3",
    "dagster_postgres",
    "aiohttp",
    "boto3",
    "botocore.client",
    "httpx",
    "pandas",
    "psutil",
    "psycopg2",
    "pyarrow",
    "pyarrow.parquet",
    "pydantic",
    "pydantic_settings",
    "dotenv",
    "replicate",
    "sqlalchemy",
    "uvloop",
    "yaml",
)


def execute_run(serialized_args: str) -> None:
    """The run worker's body: `dagster api execute_run <args>`, in this (forked) process."""
    from dagster._cli.api import execute_run_command

    check.not_none(execute_run_command.callback)(input_json=serialized_args, compressed_input_json=None)


class PreloadedRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a child of a forkserver that has imported `preload_modules`."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        preload_modules: Sequence[str] | None = None,
    ) -> None:
        self._inst_data = inst_data
        self.preload_modules = tuple(preload_modules or DEFAULT_PRELOAD_MODULES)
        self._lock = threading.Lock()
        self._mp: ForkServerContext | SpawnContext | None = None
        # Workers this process started and that have not been seen to exit, by run id.
        self._workers: dict[str, BaseProcess] = {}
        self._watcher: threading.Thread | None = None
        super().__init__()  # type: ignore[no-untyped-call]  # dagster left this __init__ unannotated

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "preload_modules": Field(
                Noneable([str]),
                is_required=False,
                description="Modules the forkserver imports once for every run worker it forks.",
            )
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> PreloadedRunLauncher:
        return cls(inst_data=inst_data, preload_modules=config_value.get("preload_modules"))

    # ------------------------------------------------------------------------------------ launch
    def _context(self) -> ForkServerContext | SpawnContext:
        if self._mp is None:
            context: ForkServerContext | SpawnContext
            if "forkserver" in multiprocessing.get_all_start_methods():
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(list(self.preload_modules))
            else:
                context = multiprocessing.get_context("spawn")
            self._mp = context
        return self._mp

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = check.not_none(run.job_code_origin, "PreloadedRunLauncher needs the run's code origin")
        args = ExecuteRunArgs(
            job_origin=origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        with self._lock:
            worker = self._context().Process(
                target=execute_run, args=(serialize_value(args),), name=f"run-{run.run_id[:8]}"
            )
            worker.start()
            self._workers[run.run_id] = worker
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(
                    target=self._watch_workers, name="run-worker-watcher", daemon=True
                )
                self._watcher.start()
        pid = check.not_none(worker.pid)
        tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
        with contextlib.suppress(psutil.Error):  # a worker that is gone already has no start time
            tags[STARTED_TAG] = repr(psutil.Process(pid).create_time())
        self._instance.add_run_tags(run.run_id, tags)

    def _watch_workers(self) -> None:
        """Until no worker is left: mark the run of a worker that exited before it ended as failed."""
        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                ended = {run_id: w for run_id, w in self._workers.items() if w.exitcode is not None}
                for run_id in ended:
                    del self._workers[run_id]
                if not self._workers and not ended:
                    self._watcher = None
                    return
            for run_id, worker in ended.items():
                try:
                    self._fail_if_unfinished(run_id, check.not_none(worker.exitcode))
                except Exception:  # the next look, or run monitoring, catches it
                    log.exception("could not mark run %s failed after its worker exited", run_id)

    def _fail_if_unfinished(self, run_id: str, exit_code: int) -> None:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        message = get_run_crash_explanation(f"Run worker of {run_id}", exit_code)
        self._instance.report_engine_event(message, run, cls=self.__class__)
        self._instance.report_run_failed(run, message)

    # --------------------------------------------------------------------------- health, cancel
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = self._workers.get(run.run_id)
        if worker is not None and worker.exitcode is not None:
            return _ended(worker.pid, f"exit code {worker.exitcode}")
        if worker is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker.pid))
        pid = _local_worker_pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run worker of this host is recorded")
        if _is_alive(pid, run.tags.get(STARTED_TAG)):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return _ended(pid, "no longer running")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        pid = _local_worker_pid(run)
        if pid is None or not _is_alive(pid, run.tags.get(STARTED_TAG)):
            return False
        self._instance.report_run_canceling(run)
        # What the code server does for its workers: the worker's own handler makes it a cancellation.
        os.kill(pid, signal.SIGINT)
        return True

    def join(self, timeout: float = 30) -> None:
        """Wait for the workers this process started (tests and orderly shutdowns)."""
        for worker in list(self._workers.values()):
            worker.join(timeout)


def _ended(pid: int | None, how: str) -> CheckRunHealthResult:
    # Run monitoring re-reads the run before acting, so a worker that exited after finishing its run
    # cleanly is not held against it.
    return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker {pid} {how}", run_worker_id=str(pid))


def _local_worker_pid(run: DagsterRun) -> int | None:
    pid = run.tags.get(PID_TAG)
    if pid is None or run.tags.get(HOST_TAG) != socket.gethostname():
        return None
    return int(pid)


def _is_alive(pid: int, started: str | None) -> bool:
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - float(started)) > 0.01:
            return False  # the pid belongs to another process now
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
