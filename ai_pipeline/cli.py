"""The `ai-pipeline` command line."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import OperationalError

from ai_pipeline.catalogue import CatalogueError, load_catalogue, read_catalogue_file, upsert_models
from ai_pipeline.credits import DEFAULT_CREDIT_TYPE, balance, grant
from ai_pipeline.db import api_keys
from ai_pipeline.db.breakers import read_breaker
from ai_pipeline.db.cancels import cancel_requests
from ai_pipeline.db.engine import get_engine
from ai_pipeline.db.migrate import upgrade_database
from ai_pipeline.db.summaries import batch_summaries
from ai_pipeline.db.urls import DatabaseUrlError
from ai_pipeline.replicate.breaker import REPLICATE_BREAKER
from ai_pipeline.reporting import format_summaries
from ai_pipeline.settings import Settings

# Mistakes a user can make: reported in one line with exit code 1, never as a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUrlError,
    CatalogueError,
    FileNotFoundError,
    ValueError,
)


# The development tools' commands live in `ai_pipeline.dev`, which the runtime never imports: they are
# loaded by name when asked for, and need the `dev` extra (`pip install 'ai_pipeline[dev]'`).
DEV_COMMANDS = {
    "demo": "ai_pipeline.dev.commands:demo",
    "dev": "ai_pipeline.dev.commands:dev",
    "emulate": "ai_pipeline.dev.emulator.cli:emulate",
}


class PipelineGroup(click.Group):
    """Turns user mistakes and an unreachable database into a clear message and exit code 1; finds the
    development tools' commands by name."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *DEV_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in DEV_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = DEV_COMMANDS[cmd_name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise click.ClickException(
                f"`ai-pipeline {cmd_name}` is a development tool and needs the dev extra"
                f" (pip install 'ai_pipeline[dev]'): {exc}"
            ) from exc
        command: click.Command = getattr(module, attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OperationalError as exc:
            message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise click.ClickException(f"cannot reach the database: {message}") from exc
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=PipelineGroup)
@click.version_option(package_name="ai_pipeline")
def main() -> None:
    """Run paid AI generations on Replicate from rows in Postgres, orchestrated by Dagster."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the newest revision."""
    revision = upgrade_database(get_engine(Settings.from_env()))
    click.echo(f"database at revision {revision}")


@main.group()
def credits() -> None:
    """Grant credits and read balances."""


@credits.command("grant")
@click.argument("user")
@click.argument("amount", type=click.IntRange(min=1))
@click.option("--type", "credit_type", default=DEFAULT_CREDIT_TYPE, show_default=True)
@click.option("--key", "idempotency_key", help="Idempotency key: a repeated grant with it is applied once.")
@click.option("--note", help="Free text kept with the ledger entry.")
def credits_grant(
    user: str, amount: int, credit_type: str, idempotency_key: str | None, note: str | None
) -> None:
    """Give USER AMOUNT credits."""
    with get_engine(Settings.from_env()).begin() as conn:
        entry = grant(conn, user, amount, credit_type, idempotency_key=idempotency_key, note=note)
        current = balance(conn, user, credit_type)
    click.echo(f"granted {entry.delta} {credit_type} to {user} (ledger entry {entry.id}); balance {current}")


@credits.command("balance")
@click.argument("user")
@click.option("--type", "credit_type", default=DEFAULT_CREDIT_TYPE, show_default=True)
def credits_balance(user: str, credit_type: str) -> None:
    """Show USER's balance."""
    with get_engine(Settings.from_env()).connect() as conn:
        click.echo(f"{user} {credit_type} {balance(conn, user, credit_type)}")


@main.group()
def models() -> None:
    """The model catalogue."""


@models.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def models_load(file: Path) -> None:
    """Insert or update catalogue entries from a YAML FILE."""
    specs = read_catalogue_file(file)
    with get_engine(Settings.from_env()).begin() as conn:
        upsert_models(conn, specs)
    click.echo(f"catalogue: {len(specs)} model(s) written from {file}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_list(as_json: bool) -> None:
    """List the catalogue."""
    with get_engine(Settings.from_env()).connect() as conn:
        catalogue = load_catalogue(conn, enabled_only=False)
    if as_json:
        click.echo(json.dumps([vars(spec) for spec in catalogue.values()], indent=2))
        return
    for spec in catalogue.values():
        target = spec.replicate_deployment or spec.replicate_version or spec.replicate_model
        click.echo(f"{spec.name}\t{spec.credits_per_run} {spec.credit_type}\t{target}")


@main.command()
@click.option("--batch", "batch_id", help="Only this batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(batch_id: str | None, as_json: bool) -> None:
    """Show per-batch counts per status, credits, Replicate time and latency, and whether work at
    Replicate is paused (the circuit breaker: on stderr with --json)."""
    with get_engine(Settings.from_env()).connect() as conn:
        summaries = batch_summaries(conn, batch_id)
        replicate = read_breaker(conn, REPLICATE_BREAKER)
    if batch_id and not summaries:
        raise click.ClickException(f"no batch named {batch_id!r}")
    if not replicate.closed:
        click.echo(f"Replicate {replicate.describe()}", err=as_json)
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in summaries], indent=2))
    elif summaries:
        click.echo(format_summaries(summaries))
    else:
        click.echo("no batches yet")


@main.command()
@click.option("--batch", "batch_id", help="Cancel every open request of this batch.")
@click.option("--request", "request_id", type=int, help="Cancel this one request.")
def cancel(batch_id: str | None, request_id: int | None) -> None:
    """Cancel a batch or one request: pending work ends uncharged, work in flight is stopped and refunded."""
    if (batch_id is None) == (request_id is None):
        raise click.UsageError("name exactly one of --batch NAME and --request ID")
    with get_engine(Settings.from_env()).begin() as conn:
        summary = cancel_requests(conn, batch_id=batch_id, request_id=request_id)
    what = f"batch {batch_id!r}" if batch_id is not None else f"request {request_id}"
    if not summary.matched:
        raise click.ClickException(f"no {what}: nothing canceled")
    click.echo(
        f"{what}: {summary.canceled} canceled now ({summary.refunded} of them refunded),"
        f" {summary.in_flight} in flight being stopped at Replicate (refunded when they end),"
        f" {summary.finished} already finished"
    )


@main.command()
@click.option("--host", help="Address to listen on (default AI_PIPELINE_API_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default AI_PIPELINE_API_PORT, 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API (and its webhook delivery) until interrupted."""
    from ai_pipeline.service.app import serve as serve_api  # the web stack only for this command

    serve_api(Settings.from_env(), host=host, port=port)


@main.group()
def keys() -> None:
    """API keys of the applications that call the HTTP API."""


@keys.command("create")
@click.argument("application")
@click.option("--label", help="A note to tell the key apart in `keys list`.")
def keys_create(application: str, label: str | None) -> None:
    """Make a key for APPLICATION (made on first use); the key is shown this once."""
    from ai_pipeline.service.keys import create_key

    with get_engine(Settings.from_env()).begin() as conn:
        new = create_key(conn, application, label)
    click.echo(f"key id          {new.id}")
    click.echo(f"application     {new.application_id}")
    click.echo(f"key             {new.key}")
    click.echo(f"webhook secret  {new.webhook_secret}")
    click.echo("The key is not stored and cannot be shown again: keep it now.", err=True)


@keys.command("list")
@click.option("--application", help="Only this application's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(application: str | None, as_json: bool) -> None:
    """List keys (never the keys themselves)."""
    with get_engine(Settings.from_env()).connect() as conn:
        records = api_keys.list_keys(conn, application)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        **vars(r),
                        "created_at": str(r.created_at),
                        "revoked_at": r.revoked_at and str(r.revoked_at),
                    }
                    for r in records
                ],
                indent=2,
            )
        )
        return
    for record in records:
        state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
        click.echo(f"{record.id}\t{record.application_id}\t{state}\t{record.label or ''}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID: its next request gets 401."""
    with get_engine(Settings.from_env()).begin() as conn:
        if not api_keys.revoke_key(conn, key_id):
            raise click.ClickException(f"no key {key_id!r}")
    click.echo(f"revoked {key_id}")


def _register_commands() -> None:
    """Commands that live beside the code they drive."""
    from ai_pipeline.loading.command import load_command

    main.add_command(load_command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
