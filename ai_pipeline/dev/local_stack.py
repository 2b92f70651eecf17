"""The local stand-ins a demo, a developer or a benchmark runs against, started together.

- Postgres: the configured one, or the embedded `pgserver` one under `.ai_pipeline/`;
- S3: moto's S3-compatible server on 127.0.0.1 (state lives in memory while it runs);
- Replicate: the project's emulator on 127.0.0.1;
- Dagster: a `DAGSTER_HOME` under `.ai_pipeline/` with `dagster.yaml`, storage in the `dagster` database.

`LocalStack.environment()` is what child processes (the Dagster daemon, its code server and runs)
need to reach all of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ai_pipeline.db.engine import engine_for_url, resolve_database_url
from ai_pipeline.db.migrate import upgrade_database
from ai_pipeline.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCAL_TOKEN = "r8_local_emulator_token"
LOCAL_BUCKET = "ai-pipeline-local"


@dataclass
class LocalStack:
    """Addresses of the running local services."""

    database_url: str
    dagster_database_url: str
    s3_endpoint_url: str
    replicate_base_url: str
    dagster_home: Path
    bucket: str = LOCAL_BUCKET
    # The emulator's handle: stats/configure/reset; `.process` when it runs in its own process.
    emulator: Any = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """Environment variables pointing the pipeline (and Dagster) at these services."""
        emulator = urlsplit(self.replicate_base_url)
        return {
            "AI_PIPELINE_DATABASE_URL": self.database_url,
            "DAGSTER_POSTGRES_URL": self.dagster_database_url,
            "DAGSTER_HOME": str(self.dagster_home),
            "REPLICATE_BASE_URL": self.replicate_base_url,
            "REPLICATE_API_TOKEN": os.environ.get("REPLICATE_API_TOKEN") or LOCAL_TOKEN,
            "AWS_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AI_PIPELINE_S3_BUCKET": self.bucket,
            "AI_PIPELINE_OUTPUT_HOSTS": f"{emulator.hostname}:{emulator.port}",
            **self.extra_env,
        }

    def apply_environment(self) -> None:
        os.environ.update(self.environment())


def _ensure_database(server_url: str, name: str) -> str:
    admin = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def prepare_dagster_home(home: Path) -> Path:
    """A DAGSTER_HOME holding the project's dagster.yaml."""
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    return dagster_home


@contextlib.contextmanager
def local_stack(
    settings: Settings | None = None,
    *,
    emulator_options: dict[str, Any] | None = None,
    emulator_in_process: bool = True,
    dagster_database: str = "dagster",
) -> Iterator[LocalStack]:
    """Start the local services (the database is migrated), yield their addresses, stop them after.

    `emulator_in_process=False` runs the emulator in its own process (benchmarks: its CPU is its own).
    """
    from moto.server import ThreadedMotoServer

    from ai_pipeline.dev.emulator.server import emulator_process, run_emulator
    from ai_pipeline.storage.client import create_s3_client

    settings = settings or Settings.from_env()
    database_url = resolve_database_url(settings)
    upgrade_database(engine_for_url(database_url))
    dagster_database_url = _ensure_database(database_url, dagster_database)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        s3_url = f"http://{host}:{port}"
        s3 = create_s3_client(
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        s3.create_bucket(Bucket=LOCAL_BUCKET)
        start_emulator = run_emulator if emulator_in_process else emulator_process
        with start_emulator(port=0, **(emulator_options or {})) as emulator:
            yield LocalStack(
                database_url=database_url,
                dagster_database_url=dagster_database_url,
                s3_endpoint_url=s3_url,
                replicate_base_url=emulator.base_url,
                dagster_home=prepare_dagster_home(settings.home),
                emulator=emulator,
            )
    finally:
        moto.stop()


CODE_LOCATION = "ai_pipeline"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Dagster code server exited with {process.returncode}; see its log")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Dagster code server did not listen on port {port} within {timeout:.0f} s")


def code_server_workspace(home: Path, port: int) -> Path:
    """A workspace file pointing Dagster at the code server on `port` (instead of `workspace.yaml`'s
    module, which makes the daemon start a code server of its own)."""
    path = home / "workspace.yaml"
    path.write_text(
        "# Written by ai_pipeline.dev.local_stack: the code server it started.\n"
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {port}\n"
        f"      location_name: {CODE_LOCATION}\n"
    )
    return path


@contextlib.contextmanager
def dagster_processes(
    stack: LocalStack, *, webserver_port: int | None = None, own_code_server: bool = True
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run the code server, the Dagster daemon (and the webserver when a port is given) against the stack.

    The code server is a process of its own that lives as long as the others. Left to itself (a
    `python_module` workspace), the daemon replaces its code server every 60 seconds to pick up code
    changes, and a fresh one costs seconds of CPU to import and load: about 60 ms of CPU per second
    of an idle pipeline, measured, most of what it cost. `own_code_server=False` leaves it to the daemon
    (`workspace.yaml`), for comparing the two (bench/idle_cost.py).
    """
    env = {**os.environ, **stack.environment()}
    bin_dir = Path(sys.executable).parent
    logs = stack.dagster_home / "logs"
    logs.mkdir(exist_ok=True)
    port = free_port()
    # With the UI, `code-server start`: its "Reload" then reloads the code in place (a proxy in front
    # of the server, about 12 ms of CPU per second more, measured); without, the server itself.
    code_server = [
        str(bin_dir / "dagster"),
        *(["code-server", "start"] if webserver_port is not None else ["api", "grpc"]),
        "-m",
        "ai_pipeline.definitions",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--location-name",
        CODE_LOCATION,
    ]
    workspace = str(
        code_server_workspace(stack.dagster_home, port)
        if own_code_server
        else PROJECT_ROOT / "workspace.yaml"
    )
    commands = [
        *([code_server] if own_code_server else []),
        [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
    ]
    if webserver_port is not None:
        commands.append(
            [
                str(bin_dir / "dagster-webserver"),
                "-w",
                workspace,
                "-h",
                "127.0.0.1",
                "-p",
                str(webserver_port),
            ]
        )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            name = "code-server" if command is code_server else Path(command[0]).name
            log_file = open(logs / f"{name}.log", "ab")  # noqa: SIM115
            processes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=PROJECT_ROOT,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if command is code_server:
                _wait_for_port(port, processes[0])
        yield processes
    finally:
        # The daemon and the webserver first, so nothing launches runs on a code server going away.
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in reversed(processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
