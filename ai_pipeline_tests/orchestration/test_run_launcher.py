"""The run launcher of `dagster.yaml`: runs execute in children of a forkserver that has imported the
libraries once; their pid lets run monitoring notice a dead worker and lets `terminate` cancel a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, reconstructable
from dagster._core.launcher.base import WorkerStatus
from dagster._core.test_utils import instance_for_test

from ai_pipeline.orchestration.run_launcher import (
    DEFAULT_PRELOAD_MODULES,
    HOST_TAG,
    PID_TAG,
    PreloadedRunLauncher,
)
from ai_pipeline_tests.orchestration.launcher_jobs import report_job

LAUNCHER = {
    "module": "ai_pipeline.orchestration.run_launcher",
    "class": "PreloadedRunLauncher",
    # colorsys: a module nothing else imports, to see the preload reach the worker.
    "config": {"preload_modules": ["dagster", "dagster._cli.api", "colorsys"]},
}


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        yield instance
        launcher = instance.run_launcher
        assert isinstance(launcher, PreloadedRunLauncher)
        launcher.join(timeout=30)


def launch(instance: DagsterInstance, report: Path, seconds: float = 0.0) -> DagsterRun:
    run = instance.create_run_for_job(
        job_def=report_job,
        run_config={"ops": {"report_where_it_ran": {"config": {"path": str(report), "seconds": seconds}}}},
        job_code_origin=reconstructable(report_job).get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]  # not used by this launcher
    return run


def wait_for(instance: DagsterInstance, run_id: str, statuses: set[DagsterRunStatus]) -> DagsterRun:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.status in statuses:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {run.status} after 90 s")


def wait_for_report(report: Path) -> dict[str, object]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if report.exists() and report.read_text():
            return json.loads(report.read_text())
        time.sleep(0.05)
    raise AssertionError("the op never ran")


def test_a_run_executes_in_a_child_of_the_forkserver_with_the_preloaded_modules(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    run = launch(instance, report)

    finished = wait_for(instance, run.run_id, {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE})
    assert finished.status == DagsterRunStatus.SUCCESS
    where = wait_for_report(report)
    assert where["preloaded_colorsys"] is True
    assert finished.tags[PID_TAG] == str(where["pid"])
    assert finished.tags[HOST_TAG]
    forkserver = psutil.Process(int(where["ppid"]))  # type: ignore[call-overload]
    assert forkserver.pid != os.getpid()
    assert "multiprocessing.forkserver" in " ".join(forkserver.cmdline())
    assert forkserver.ppid() == os.getpid()  # the launching process started the forkserver

    # A second run is forked from the same server.
    second = tmp_path / "second.json"
    run = launch(instance, second)
    assert wait_for(instance, run.run_id, {DagsterRunStatus.SUCCESS}).status == DagsterRunStatus.SUCCESS
    assert wait_for_report(second)["ppid"] == where["ppid"]


def test_a_killed_worker_fails_its_run_at_once_and_reads_failed_to_any_launcher(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    run = launch(instance, report, seconds=60)
    started = wait_for(instance, run.run_id, {DagsterRunStatus.STARTED})
    wait_for_report(report)
    launcher = instance.run_launcher
    # Another process (the webserver, a restarted daemon) only has the run's tags to go by.
    other = PreloadedRunLauncher()
    for checker in (launcher, other):
        assert checker.check_run_worker_health(started).status == WorkerStatus.RUNNING

    os.kill(int(started.tags[PID_TAG]), signal.SIGKILL)
    # No failure event comes from a SIGKILLed worker: its launcher notices, as the code server would.
    failed = wait_for(instance, run.run_id, {DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS})
    assert failed.status == DagsterRunStatus.FAILURE
    messages = [entry.message for entry in instance.all_logs(run.run_id)]
    assert any("was terminated by signal 9" in message for message in messages), messages
    for checker in (launcher, other):
        health = checker.check_run_worker_health(started)
        assert health.status == WorkerStatus.FAILED, health
        assert started.tags[PID_TAG] in (health.msg or "")


def test_terminate_cancels_a_running_run_from_another_process(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    run = launch(instance, report, seconds=60)
    wait_for(instance, run.run_id, {DagsterRunStatus.STARTED})
    wait_for_report(report)

    other = PreloadedRunLauncher()
    other.register_instance(instance)
    assert other.terminate(run.run_id) is True

    ended = wait_for(instance, run.run_id, {DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE})
    assert ended.status == DagsterRunStatus.CANCELED
    assert other.terminate(run.run_id) is False  # nothing left to stop


def test_the_preload_list_holds_every_library_a_run_worker_imports() -> None:
    """Kept honest: whatever third-party package the run worker's code imports that the list misses
    is imported afresh by every run."""
    script = f"""
import sys
for name in {list(DEFAULT_PRELOAD_MODULES)!r}:
    __import__(name)
before = set(sys.modules)
import ai_pipeline.definitions, ai_pipeline.processing.batch_runner, ai_pipeline.storage.manifest
from ai_pipeline.orchestration.run_launcher import execute_run
new = {{name.split(".")[0] for name in set(sys.modules) - before}}
print(sorted(new - set(sys.stdlib_module_names) - {{"ai_pipeline", "_cffi_backend"}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"imported by run workers but not preloaded: {result.stdout}"
