"""The HTTP API as a process of its own (`ai-pipeline serve`), started, killed and restarted by tests,
and a webhook receiver that records every delivery it gets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from ai_pipeline.dev.local_stack import free_port
from ai_pipeline_tests.support.databases import REPO_ROOT
from ai_pipeline_tests.support.pipeline import PipelineHarness


def service_environment(harness: PipelineHarness, **settings: str) -> dict[str, str]:
    """What a deployment of the API next to the harness's pipeline would have in its environment."""
    return {
        "AI_PIPELINE_DATABASE_URL": harness.database_url,
        "AWS_ENDPOINT_URL": harness.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AI_PIPELINE_S3_BUCKET": harness.bucket,
        "AI_PIPELINE_S3_PREFIX": "test",
        "AI_PIPELINE_API_RATE_PER_SECOND": "10000",
        "AI_PIPELINE_API_RATE_BURST": "10000",
        "AI_PIPELINE_WEBHOOK_POLL_SECONDS": "0.2",
        # a delivery cut off by a kill is made again once its lease (2 x timeout + 5 s) runs out
        "AI_PIPELINE_WEBHOOK_TIMEOUT_SECONDS": "2",
        **settings,
    }


@dataclass
class ApiProcess:
    """`ai-pipeline serve` on a free port of 127.0.0.1."""

    environment: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        env = {**os.environ, **self.environment}
        env.pop("AI_PIPELINE_API_HOST", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ai_pipeline.cli", "serve", "--port", str(self.port)],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the API exited with {self.process.returncode}: {self.log_path.read_text()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/openapi.json", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"the API did not answer within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as a crashed machine would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@contextlib.contextmanager
def api_process(environment: dict[str, str], log_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(environment, log_path).start()
    try:
        yield api
    finally:
        api.stop()


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class WebhookReceiver:
    """An HTTP server that records every POST; `answers` (a list of status codes) are used up first,
    then it answers 204. `hold` makes it wait (never answering) until released."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answers: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.deliveries.append(
                        Delivery({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.answers.pop(0) if receiver.answers else 204
                receiver.hold.wait(timeout=60)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.05)
        raise AssertionError(
            f"{len(self.deliveries)} webhook deliveries after {timeout:.0f} s, expected {count}"
        )

    def clear(self) -> None:
        with self._lock:
            self.deliveries.clear()
            self.answers.clear()
