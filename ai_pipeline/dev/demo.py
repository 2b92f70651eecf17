"""`ai-pipeline demo` and `ai-pipeline dev`: the whole pipeline on one machine, nothing to configure.

The demo starts the local stack (embedded Postgres, a local S3 endpoint, the Replicate emulator), grants
credits, loads a sample batch, lets the Dagster daemon's sensor and runs process it, then prints what
happened and copies the outputs into a local folder.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy import Engine, text

from ai_pipeline.catalogue import read_catalogue_file, upsert_models
from ai_pipeline.credits import grant
from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.db.summaries import batch_summaries
from ai_pipeline.dev.api_demo import show_api_generation
from ai_pipeline.dev.local_stack import LocalStack, dagster_processes, local_stack
from ai_pipeline.loading import load_file
from ai_pipeline.reporting import format_summaries
from ai_pipeline.settings import Settings
from ai_pipeline.storage.client import create_s3_client
from ai_pipeline.storage.keys import parse_s3_uri
from ai_pipeline.storage.uploads import object_check

CATALOGUE = Path(__file__).with_name("demo_data") / "emulator_models.yaml"
DEMO_USERS = {"alice": 100, "bob": 100, "carol": 100, "poor-pete": 1}
TEXT_USERS = {"alice": 20, "bob": 20}


def sample_rows() -> list[dict[str, str]]:
    """≈50 requests: every output shape, some the emulator fails, one user without enough credits."""
    rows = []
    subjects = ["a red fox", "a lighthouse at dusk", "a bowl of ramen", "a paper crane", "a glacier"]
    for i in range(30):
        user = ["alice", "bob", "carol"][i % 3]
        model = ["emulator/image", "emulator/images", "emulator/image-deployment"][i % 3]
        rows.append({"user_id": user, "model": model, "prompt": f"{subjects[i % 5]}, study {i}"})
    for i in range(8):
        rows.append({"user_id": ["alice", "bob"][i % 2], "model": "emulator/text", "prompt": f"haiku {i}"})
    for i in range(5):
        rows.append({"user_id": "carol", "model": "emulator/caption", "prompt": f"{subjects[i]}, captioned"})
    rows.append({"user_id": "alice", "model": "emulator/image", "prompt": "fail:nsfw something"})
    rows.append({"user_id": "bob", "model": "emulator/image", "prompt": "fail:oom a huge mural"})
    rows.append({"user_id": "carol", "model": "emulator/images", "prompt": "fail:nsfw again"})
    for i in range(4):  # poor-pete has 1 credit: the first image runs, the rest are rejected uncharged
        rows.append({"user_id": "poor-pete", "model": "emulator/image", "prompt": f"a tiny cat {i}"})
    return rows


def _write_sample(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["user_id", "model", "prompt"])
        writer.writeheader()
        writer.writerows(sample_rows())


def _counts(engine: Engine, batch: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM generation_requests WHERE batch_id = :b GROUP BY status"),
            {"b": batch},
        )
        return {status: int(n) for status, n in rows}


def wait_until_terminal(engine: Engine, batch: str, timeout: float) -> dict[str, int]:
    """Show progress until every request of the batch is terminal (or the timeout passes).

    On a terminal the line is redrawn in place; in a log, a line is written whenever the counts change.
    """
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    interactive = sys.stdout.isatty()
    last = None
    while True:
        counts = _counts(engine, batch)
        total = sum(counts.values())
        open_ = counts.get("pending", 0) + counts.get("processing", 0)
        line = "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        text_line = f"[{time.monotonic() - started:5.1f}s] {total - open_}/{total} done  {line}"
        if interactive:
            click.echo(f"\r{text_line}   ", nl=False)
        elif counts != last:
            click.echo(text_line)
        last = counts
        if open_ == 0 or time.monotonic() > deadline:
            if interactive:
                click.echo()
            return counts
        time.sleep(1.0)


def copy_outputs(stack: LocalStack, engine: Engine, batch: str, folder: Path) -> int:
    """Copy the batch's stored outputs from S3 into `folder`; returns how many files."""
    s3 = create_s3_client(
        endpoint_url=stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    folder.mkdir(parents=True, exist_ok=True)
    copied = 0
    with engine.connect() as conn:
        uris = conn.execute(
            text(
                "SELECT jsonb_array_elements_text(output_uris) FROM generation_requests WHERE batch_id = :b"
            ),
            {"b": batch},
        ).scalars()
        for uri in uris:
            bucket, key = parse_s3_uri(uri)
            target = folder / key.split(f"batches/{batch}/", 1)[-1].replace("/", "_")
            target.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            copied += 1
    return copied


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM (a `kill`, a closing terminal) unwinds like Ctrl+C, so the daemon and servers stop too.

    Python's default SIGTERM handling skips `finally` blocks, and the Dagster processes run in their
    own session, so without this they would outlive the command.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_demo(timeout: float = 600.0) -> bool:
    """The whole demo; returns True when every request ended and every invariant holds."""
    _stop_cleanly_on_sigterm()
    settings = Settings.from_env()
    batch = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with local_stack(settings) as stack:
        stack.apply_environment()
        engine = engine_for_url(stack.database_url)
        click.echo(f"Postgres   {engine.url.render_as_string(hide_password=True)}")
        click.echo(f"S3         {stack.s3_endpoint_url} (bucket {stack.bucket})")
        click.echo(f"Replicate  {stack.replicate_base_url} (local emulator)")
        with engine.begin() as conn:
            upsert_models(conn, read_catalogue_file(CATALOGUE))
            for user, amount in DEMO_USERS.items():
                grant(conn, user, amount, "image_generation", idempotency_key=f"{batch}:{user}:image")
            for user, amount in TEXT_USERS.items():
                grant(conn, user, amount, "text_generation", idempotency_key=f"{batch}:{user}:text")
        sample = settings.home / "demo" / f"{batch}.csv"
        _write_sample(sample)
        summary = load_file(engine, sample, batch, progress=False)
        click.echo(f"loaded batch {batch}: {summary.rows_inserted} requests from {sample}")
        click.echo("starting the Dagster daemon; its sensor picks the batch up within seconds ...")
        with dagster_processes(stack):
            counts = wait_until_terminal(engine, batch, timeout)
            show_api_generation(engine)
        with engine.connect() as conn:
            click.echo()
            click.echo(format_summaries(batch_summaries(conn, batch)))
            s3 = create_s3_client(
                endpoint_url=stack.s3_endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="local",
                aws_secret_access_key="local",
            )
            report = check_invariants(conn, batch_id=batch, verify_object=object_check(s3))
            reasons = conn.execute(
                text(
                    "SELECT status, error, count(*) FROM generation_requests WHERE batch_id = :b"
                    " AND status IN ('failed', 'rejected') GROUP BY status, error ORDER BY status"
                ),
                {"b": batch},
            ).all()
        for status, error, n in reasons:
            click.echo(f"  {n} x {status}: {error}")
        folder = Path.cwd() / "demo_outputs" / batch
        copied = copy_outputs(stack, engine, batch, folder)
        click.echo(f"\n{copied} output files copied to {folder}")
        click.echo(f"invariants: {report.summary()}")
        click.echo(json.dumps(counts))
        return report.ok and not (counts.get("pending") or counts.get("processing"))


def run_dev(port: int = 3000) -> None:
    """The local stack plus the Dagster UI and daemon, until interrupted."""
    _stop_cleanly_on_sigterm()
    settings = Settings.from_env()
    with local_stack(settings) as stack:
        stack.apply_environment()
        engine = engine_for_url(stack.database_url)
        with engine.begin() as conn:
            upsert_models(conn, read_catalogue_file(CATALOGUE))
        env_file = settings.home / "dev.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in stack.environment().items()))
        click.echo(f"Dagster UI  http://127.0.0.1:{port}")
        click.echo(f"Emulator    {stack.replicate_base_url}   S3 {stack.s3_endpoint_url}")
        click.echo(f"To use the CLI against this stack in another shell: set -a; . {env_file}; set +a")
        click.echo("Press Ctrl+C to stop.")
        with dagster_processes(stack, webserver_port=port) as processes:
            try:
                while all(p.poll() is None for p in processes):
                    time.sleep(1)
            except KeyboardInterrupt:
                click.echo("stopping ...")
