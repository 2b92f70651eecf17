"""Starting the emulator: blocking (the CLI), in a background thread (tests) or as a child process
(benchmarks). All three bind the socket first, so ``port=0`` picks a free port and the real one is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from ai_pipeline.dev.emulator.app import create_app
from ai_pipeline.dev.emulator.config import EmulatorConfig
from ai_pipeline.dev.emulator.service import EmulatorService

READY_LINE = "ai_pipeline emulator ready at {url}"
_READY_PATTERN = re.compile(r"ai_pipeline emulator ready at (\S+)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def build_server(
    service: EmulatorService, *, log_level: str = "warning", access_log: bool = False
) -> uvicorn.Server:
    """A uvicorn server for the emulator (uvloop and httptools when installed, one worker)."""
    config = uvicorn.Config(
        create_app(service=service),
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=3,
        backlog=2048,
    )
    return uvicorn.Server(config)


def serve(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Run the emulator until interrupted, printing a ready line with its URL once it accepts requests."""
    sock = bind_socket(host, port)
    server = build_server(EmulatorService(config), log_level=log_level, access_log=access_log)

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(READY_LINE.format(url=url_of(sock)), flush=True)
        await serving

    loop_factory = server.config.get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


@dataclass
class EmulatorHandle:
    """A running emulator: its root URL (give it to ``replicate.Client(base_url=...)``) and controls."""

    base_url: str
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)

    def stats(self, per_input: bool = False) -> dict[str, Any]:
        """``GET /_emulator/stats``."""
        response = self._http.get("/_emulator/stats", params={"per_input": "1"} if per_input else None)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def configure(self, **patch: Any) -> dict[str, Any]:
        """``POST /_emulator/config`` with these knobs; returns the live configuration."""
        response = self._http.post("/_emulator/config", json=patch)
        response.raise_for_status()
        live: dict[str, Any] = response.json()
        return live

    def reset(self, restore_config: bool = False) -> None:
        """``POST /_emulator/reset``: forget predictions and counters."""
        response = self._http.post("/_emulator/reset", params={"config": "1"} if restore_config else None)
        response.raise_for_status()

    def close(self) -> None:
        """Close the control connection."""
        self._http.close()


@dataclass
class InProcessEmulator(EmulatorHandle):
    """An emulator served from a background thread of this process; ``service`` is its live state
    (read it only, and only while no request is in flight: it belongs to the server's event loop)."""

    service: EmulatorService | None = None


@contextlib.contextmanager
def run_emulator(
    host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning", **config: Any
) -> Iterator[InProcessEmulator]:
    """Serve an emulator from a background thread for the duration of the ``with`` block.

    ``config`` takes any ``EmulatorConfig`` knob, e.g. ``run_emulator(predict_seconds=0.1, seed=1)``.
    """
    service = EmulatorService(EmulatorConfig.from_dict(config))
    server = build_server(service, log_level=log_level)
    sock = bind_socket(host, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="replicate-emulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.005)
        handle = InProcessEmulator(base_url=url_of(sock), service=service)
        try:
            yield handle
        finally:
            handle.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class EmulatorProcess(EmulatorHandle):
    """An emulator running as a child process (``python -m ai_pipeline.dev.emulator``)."""

    process: subprocess.Popen[str] | None = None


@contextlib.contextmanager
def emulator_process(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    extra_args: list[str] | None = None,
    log_level: str = "warning",
    **config: Any,
) -> Iterator[EmulatorProcess]:
    """Run the emulator in a child process (own interpreter, own CPU) for the ``with`` block.

    ``config`` knobs are handed over as a JSON profile; the child is stopped with SIGTERM afterwards.
    """
    EmulatorConfig.from_dict(config)  # fail here, not in the child, on a bad knob
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as profile:
        json.dump(config, profile)
    command = [
        sys.executable, "-m", "ai_pipeline.dev.emulator",
        "--host", host, "--port", str(port), "--profile", profile.name, "--log-level", log_level,
        *(extra_args or []),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        url = _read_ready_url(process)
        handle = EmulatorProcess(base_url=url, process=process)
        try:
            yield handle
        finally:
            handle.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.unlink(profile.name)


def _read_ready_url(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Wait for the child's ready line; afterwards keep forwarding its stdout so the pipe never fills."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="emulator-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"the emulator process was not ready within {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"the emulator process exited (code {process.wait()}) before it was ready")
        match = _READY_PATTERN.search(line)
        if match:
            threading.Thread(
                target=_forward, args=(lines,), name="emulator-stdout-forward", daemon=True
            ).start()
            return match.group(1)


def _forward(lines: queue.Queue[str | None]) -> None:
    while (line := lines.get()) is not None:
        sys.stdout.write(line)
