"""The demo's HTTP API part: one generation submitted through `ai-pipeline serve`'s API, processed by
the running daemon, and its presigned output URL printed (open it in a browser while the demo runs)."""

from __future__ import annotations

import threading
import time

import click
import httpx
import uvicorn
from sqlalchemy import Engine

from ai_pipeline.dev.local_stack import free_port
from ai_pipeline.service.app import build_app
from ai_pipeline.service.keys import create_key
from ai_pipeline.settings import Settings


def show_api_generation(engine: Engine, user: str = "alice", timeout: float = 120.0) -> None:
    """Serve the API in this process, submit one generation for `user`, wait for it, print its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(Settings.from_env(), engine=engine), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with engine.begin() as conn:
            key = create_key(conn, "demo-app", "make demo").key
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"})
        body = {"user_id": user, "model": "emulator/image", "input": {"prompt": "a red fox, through the API"}}
        answer = api.post("/v1/generations", json=body).json()
        click.echo(
            f"\nAPI: POST /v1/generations -> {answer['id']} {answer['status']},"
            f" {answer['credits_charged']} credit(s) debited"
        )
        deadline = time.monotonic() + timeout
        generation = answer
        while generation["status"] in ("pending", "processing") and time.monotonic() < deadline:
            time.sleep(1.0)
            generation = api.get(f"/v1/generations/{answer['id']}").json()
        click.echo(f"API: GET /v1/generations/{answer['id']} -> {generation['status']}")
        for output in generation["outputs"]:
            click.echo(f"  {output['uri']}\n  {output['url']}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
