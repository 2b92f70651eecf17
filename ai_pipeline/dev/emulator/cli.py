"""``ai-pipeline emulate``: run the local Replicate emulator.

Every ``EmulatorConfig`` knob gets a flag generated from its field (``predict_seconds`` ->
``--predict-seconds``; per-kind rates as ``--http-error-rate get=0.1``, repeatable; lists as
``--http-error-statuses 503,504``). Precedence: defaults < ``--profile FILE`` < flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import click

from ai_pipeline.dev.emulator.config import CONFIG_FIELDS, ConfigError, EmulatorConfig, load_profile
from ai_pipeline.dev.emulator.server import serve


def _flag_name(field: dataclasses.Field[Any]) -> str | None:
    name = field.metadata.get("cli", field.name.replace("_", "-"))
    return None if name is None else str(name)


def _default_text(field: dataclasses.Field[Any]) -> str:
    default = field.default
    if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    if isinstance(default, dict):
        return ", ".join(f"{key}={value}" for key, value in default.items())
    if isinstance(default, list):
        return ",".join(str(item) for item in default)
    return "unset" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def _parse_rates(values: tuple[str, ...], name: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for value in values:
        kind, sep, rate = value.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KIND=RATE, got {value!r}", param_hint=f"--{name}")
        try:
            rates[kind.strip()] = float(rate)
        except ValueError as exc:
            raise click.BadParameter(f"{rate!r} is not a number", param_hint=f"--{name}") from exc
    return rates


def _parse_statuses(value: str, name: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(
            f"expected comma-separated status codes, got {value!r}", param_hint=f"--{name}"
        ) from exc


_CLICK_TYPES: dict[str, Any] = {
    "seconds": click.FloatRange(min=0),
    "positive": click.FloatRange(min=0, min_open=True),
    "probability": click.FloatRange(0, 1),
    "count": click.IntRange(min=1),
    "str?": str,
    "int?": int,
}


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with one option per ``EmulatorConfig`` knob (all default to unset)."""
    for field in reversed(list(CONFIG_FIELDS.values())):
        flag = _flag_name(field)
        if flag is None:
            continue
        kind = field.metadata["kind"]
        help_text = field.metadata["help"]
        if "(default" not in help_text:
            help_text = f"{help_text} [default: {_default_text(field)}]"
        if kind == "bool":
            option = click.option(f"--{flag}/--no-{flag}", field.name, default=None, help=help_text)
        elif kind == "rates":
            keys = "/".join(field.metadata["keys"])
            option = click.option(
                f"--{flag}",
                field.name,
                multiple=True,
                metavar=f"{{{keys}}}=RATE",
                help=f"{help_text} Repeatable.",
            )
        elif kind == "statuses":
            option = click.option(f"--{flag}", field.name, default=None, metavar="CODE,CODE", help=help_text)
        elif kind == "choice":
            option = click.option(
                f"--{flag}", field.name, type=click.Choice(field.metadata["choices"]), help=help_text
            )
        else:
            option = click.option(
                f"--{flag}", field.name, type=_CLICK_TYPES[kind], default=None, help=help_text
            )
        command = option(command)
    return command


def config_from_options(profile: str | None, options: dict[str, Any]) -> EmulatorConfig:
    """Overlay a profile file and the given flags onto the defaults."""
    patch: dict[str, Any] = load_profile(profile) if profile else {}
    for name, value in options.items():
        field = CONFIG_FIELDS[name]
        kind = field.metadata["kind"]
        flag = _flag_name(field) or name
        if value is None or value == ():
            continue
        if kind == "rates":
            patch[name] = {**patch.get(name, {}), **_parse_rates(value, flag)}
        elif kind == "statuses":
            patch[name] = _parse_statuses(value, flag)
        else:
            patch[name] = value
    return EmulatorConfig.from_dict(patch)


@click.command("emulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=8787, show_default=True, type=int, help="Port to listen on (0: any free port)."
)
@click.option(
    "--profile",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON fault profile: an object of knob names (as below, with underscores) to values.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@config_options
def emulate(
    host: str, port: int, profile: str | None, log_level: str, access_log: bool, **options: Any
) -> None:
    """Serve a local Replicate-compatible API with built-in models and fault injection.

    Point the official client at it: REPLICATE_BASE_URL=http://127.0.0.1:8787 (any token is accepted
    unless --token is given). Change faults at run time with POST /_emulator/config; read counters at
    GET /_emulator/stats.
    """
    try:
        config = config_from_options(profile, options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    with contextlib.suppress(KeyboardInterrupt):
        serve(config, host=host, port=port, log_level=log_level, access_log=access_log)


def main() -> None:
    """Entry point of ``python -m ai_pipeline.dev.emulator``."""
    emulate()
