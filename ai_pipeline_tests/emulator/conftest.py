"""Fixtures: a fresh emulator per test (fast timings), an official client pointed at it, and a
small local webhook receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import replicate

from ai_pipeline.dev.emulator import run_emulator
from ai_pipeline.dev.emulator.server import InProcessEmulator

# Short, exact timings keep the folder fast and the assertions tight.
FAST = {"predict_seconds": 0.2, "predict_jitter_seconds": 0.0, "start_seconds": 0.02, "seed": 7}
TOKEN = "r8_test-token"


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[InProcessEmulator]:
    """One emulator (background thread) for the whole folder."""
    with run_emulator(**FAST) as emulator:
        yield emulator


@pytest.fixture
def emu(shared_emulator: InProcessEmulator) -> InProcessEmulator:
    """The emulator, reset to a clean slate and the ``FAST`` configuration; change knobs with
    ``emu.configure(...)``."""
    shared_emulator.reset(restore_config=True)
    return shared_emulator


@pytest.fixture
def client(emu: InProcessEmulator) -> replicate.Client:
    """The official client, polling fast."""
    replicate_client = replicate.Client(api_token=TOKEN, base_url=emu.base_url)
    replicate_client.poll_interval = 0.02
    return replicate_client


@pytest.fixture
def http(emu: InProcessEmulator) -> Iterator[httpx.Client]:
    """A raw HTTP client (no retries) for checking bytes, headers and status codes."""
    with httpx.Client(
        base_url=emu.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False
    ) as raw:
        yield raw


@dataclass
class Delivery:
    """One webhook request as the receiver saw it."""

    headers: dict[str, str]
    body: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Records webhook deliveries; answers 500 to the first ``fail_first`` of them."""

    url: str = ""
    fail_first: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until ``count`` deliveries were accepted (2xx); returns the accepted ones."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                accepted = [
                    d for d, status in zip(self.deliveries, self.answered, strict=True) if status == 200
                ]
            if len(accepted) >= count:
                return accepted
            time.sleep(0.01)
        raise AssertionError(f"expected {count} accepted webhooks, got {len(accepted)}")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A local HTTP server recording webhook POSTs."""
    state = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"])).decode()
            with state.lock:
                status = 500 if len(state.deliveries) < state.fail_first else 200
                state.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                state.answered.append(status)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/replicate"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
