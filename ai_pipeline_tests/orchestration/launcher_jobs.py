"""Jobs for the run launcher's tests: report where they ran, or wait to be stopped."""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at run time.
import json
import os
import sys
import time
from pathlib import Path

from dagster import Config, OpExecutionContext, in_process_executor, job, op


class ReportConfig(Config):
    path: str
    seconds: float = 0.0


@op
def report_where_it_ran(context: OpExecutionContext, config: ReportConfig) -> None:
    """Write this process's pid, its parent's, and what it had imported before the job module; then
    wait `seconds` (long enough for a test to kill or cancel it)."""
    Path(config.path).write_text(
        json.dumps(
            {"pid": os.getpid(), "ppid": os.getppid(), "preloaded_colorsys": "colorsys" in sys.modules}
        )
    )
    deadline = time.monotonic() + config.seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@job(executor_def=in_process_executor)  # the op runs in the run worker itself, as ours do
def report_job() -> None:
    report_where_it_ran()
