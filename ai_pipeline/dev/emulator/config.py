"""Every emulator knob in one place: its default, its meaning, and how profiles and patches merge into it.

A knob is set, in increasing precedence, by its default here, a JSON profile file (``--profile``),
a command-line flag (generated from the field, see ``cli.py``), and at run time by
``POST /_emulator/config`` (a JSON merge patch: objects merge key by key, ``null`` restores the default).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Endpoint kinds that get their own fault rates. "create" is any prediction create, "get" is
# GET /v1/predictions/{id}, "other" is every other /v1 call (cancel, list, models, versions, secret...).
API_KINDS: tuple[str, ...] = ("create", "get", "other")
# Scripted faults also apply to output downloads under /_delivery/.
SCRIPTED_KINDS: tuple[str, ...] = (*API_KINDS, "download")
MODEL_FAILURE_KINDS: tuple[str, ...] = ("nsfw", "oom", "cold_timeout")
HTTP_FAULT_STATUSES: tuple[int, ...] = (500, 502, 503, 504)
DOWNLOAD_FAULT_STATUSES: tuple[int, ...] = (500, 502, 503, 504, 403, 404)
PREDICT_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "lognormal", "fixed")
# Values a scripted fault list may hold besides an HTTP status code.
SCRIPTED_ACTIONS: tuple[str, ...] = ("drop", "slow")


class ConfigError(ValueError):
    """A profile, flag or patch names an unknown knob or gives it a value it cannot take."""


def _knob(default: Any, help: str, kind: str, **extra: Any) -> Any:
    """Declare a scalar config field; ``kind`` drives validation and the generated CLI flag."""
    return field(default=default, metadata=_meta(help, kind, **extra))


def _meta(help: str, kind: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: ``help`` text and the ``kind`` that drives validation and the CLI flag."""
    return {"help": help, "kind": kind, **extra}


@dataclass
class EmulatorConfig:
    """All behaviour knobs of the emulator. Field docs live in each field's ``help``."""

    # --- access ---------------------------------------------------------------------------------
    token: str | None = _knob(
        None, "Require this exact bearer token (default: any non-empty token is accepted).", "str?"
    )
    billing_required: bool = _knob(
        False,
        "Answer every prediction create 402 'billing required', as Replicate does for an account whose"
        " billing stopped (other calls still work).",
        "bool",
    )
    public_url: str | None = _knob(
        None,
        "Root URL used in returned links and output file URLs (default: the request's own base URL).",
        "str?",
    )
    seed: int | None = _knob(None, "Seed for every random decision (IDs, latencies, faults).", "int?")

    # --- prediction life ------------------------------------------------------------------------
    start_seconds: float = _knob(0.05, "Seconds a warm prediction sits in 'starting'.", "seconds")
    predict_seconds: float = _knob(1.0, "Mean seconds a prediction spends 'processing'.", "seconds")
    predict_jitter_seconds: float = _knob(
        0.2, "Spread of the processing time (uniform: +/- this; lognormal: ~standard deviation).", "seconds"
    )
    predict_distribution: str = _knob(
        "uniform", "Processing-time distribution.", "choice", choices=PREDICT_DISTRIBUTIONS
    )
    cold_start_probability: float = _knob(
        0.0,
        "Chance a prediction hits a cold boot and sits in 'starting' for cold_start_seconds.",
        "probability",
    )
    cold_start_seconds: float = _knob(
        20.0, "Seconds a cold boot keeps a prediction in 'starting'.", "seconds"
    )
    cold_timeout_seconds: float = _knob(
        5.0, "Seconds a prediction sits in 'starting' before failing with E6716.", "seconds"
    )
    output_ttl: float = _knob(
        3600.0, "Seconds after completion before input, output, logs and files are removed.", "seconds"
    )
    max_wait_seconds: float = _knob(
        60.0, "How long a bare 'Prefer: wait' holds the create request.", "seconds"
    )
    list_page_size: int = _knob(100, "Predictions per page of GET /v1/predictions.", "count")

    # --- rate limits (token buckets per token and bucket) ---------------------------------------
    rate_limits_enabled: bool = _knob(
        True, "Answer 429 when a token bucket is empty.", "bool", cli="rate-limits"
    )
    create_rate_per_minute: float = _knob(600.0, "Prediction creates allowed per minute.", "positive")
    create_burst: float = _knob(100.0, "Creates allowed back to back before throttling.", "positive")
    other_rate_per_minute: float = _knob(3000.0, "Other API calls allowed per minute.", "positive")
    other_burst: float = _knob(500.0, "Other API calls allowed back to back before throttling.", "positive")

    # --- injected faults ------------------------------------------------------------------------
    http_error_rates: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(API_KINDS, 0.0),
        metadata=_meta(
            "Chance per endpoint kind (create/get/other) of answering an HTTP error instead.",
            "rates",
            keys=API_KINDS,
            cli="http-error-rate",
        ),
    )
    http_error_statuses: list[int] = field(
        default_factory=lambda: list(HTTP_FAULT_STATUSES),
        metadata=_meta(
            "Statuses an injected HTTP error picks from.", "statuses", allowed=HTTP_FAULT_STATUSES
        ),
    )
    drop_rates: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(API_KINDS, 0.0),
        metadata=_meta(
            "Chance per endpoint kind of closing the connection without an answer.",
            "rates",
            keys=API_KINDS,
            cli="drop-rate",
        ),
    )
    dropped_create_still_creates: bool = _knob(
        True,
        "A dropped create still creates the prediction (only the answer is lost).",
        "bool",
    )
    model_failure_rates: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(MODEL_FAILURE_KINDS, 0.0),
        metadata=_meta(
            "Chance per failure kind (nsfw/oom/cold_timeout) that a prediction fails.",
            "rates",
            keys=MODEL_FAILURE_KINDS,
            cli="model-failure-rate",
        ),
    )
    download_error_rate: float = _knob(0.0, "Chance an output download answers an error.", "probability")
    download_error_statuses: list[int] = field(
        default_factory=lambda: [500, 404],
        metadata=_meta("Statuses a failed download picks from.", "statuses", allowed=DOWNLOAD_FAULT_STATUSES),
    )
    download_slow_rate: float = _knob(0.0, "Chance an output download is delayed.", "probability")
    download_delay_seconds: float = _knob(5.0, "Delay of a slow download.", "seconds")
    scripted_faults: dict[str, list[int | str]] = field(
        default_factory=lambda: {kind: [] for kind in SCRIPTED_KINDS},
        metadata=_meta(
            "Faults served to the next requests of a kind, in order, before any random decision: an HTTP "
            "status, 'drop' (close the connection) or, for downloads, 'slow'. Consumed as used.",
            "script",
            keys=SCRIPTED_KINDS,
            cli=None,
        ),
    )

    # --- webhooks -------------------------------------------------------------------------------
    webhook_secret: str | None = _knob(
        None, "Signing secret 'whsec_<base64>' (default: generated at start, from --seed if given).", "str?"
    )
    webhook_timeout_seconds: float = _knob(10.0, "Timeout of one webhook POST.", "seconds")
    webhook_retry_initial_seconds: float = _knob(
        1.0, "First back-off before re-sending a failed terminal webhook (doubles each time).", "seconds"
    )
    webhook_retry_window_seconds: float = _knob(
        60.0, "How long a failed terminal webhook keeps being retried.", "seconds"
    )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-compatible data."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorConfig:
        """Build a validated configuration from defaults overlaid with ``data`` (a merge patch)."""
        return merge_config(cls(), data)


CONFIG_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(EmulatorConfig)}


def merge_config(config: EmulatorConfig, patch: dict[str, Any]) -> EmulatorConfig:
    """Apply a JSON merge patch (RFC 7396) to ``config`` and return a new validated configuration.

    Raises ``ConfigError`` for unknown knobs, unknown sub-keys and values out of range.
    """
    if not isinstance(patch, dict):
        raise ConfigError("a configuration patch must be a JSON object")
    merged = config.to_dict()
    defaults = EmulatorConfig().to_dict()
    for name, value in patch.items():
        if name not in CONFIG_FIELDS:
            raise ConfigError(f"unknown emulator setting {name!r}")
        if value is None:
            merged[name] = defaults[name]
        elif isinstance(value, dict) and isinstance(merged[name], dict):
            for key, sub_value in value.items():
                if sub_value is None:
                    merged[name][key] = copy.deepcopy(defaults[name].get(key))
                else:
                    merged[name][key] = sub_value
        else:
            merged[name] = value
    return EmulatorConfig(**{name: _validated(name, value) for name, value in merged.items()})


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read a JSON fault profile (an object of knob names to values) and check its knob names."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid JSON: {exc}") from exc
    merge_config(EmulatorConfig(), data)  # raises ConfigError on any bad knob
    return data


def _validated(name: str, value: Any) -> Any:
    meta = CONFIG_FIELDS[name].metadata
    kind = meta["kind"]
    if kind in ("seconds", "positive", "probability"):
        number = _number(name, value)
        if kind == "positive" and number <= 0:
            raise ConfigError(f"{name} must be > 0")
        if number < 0:
            raise ConfigError(f"{name} must be >= 0")
        if kind == "probability" and number > 1:
            raise ConfigError(f"{name} must be between 0 and 1")
        return number
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if kind == "str?":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return value or None
    if kind == "int?":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{name} must be an integer")
        return value
    if kind == "choice":
        if value not in meta["choices"]:
            raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}")
        return value
    if kind == "rates":
        return _rates(name, value, meta["keys"])
    if kind == "statuses":
        if not isinstance(value, list) or not value or any(v not in meta["allowed"] for v in value):
            raise ConfigError(f"{name} must be a non-empty list drawn from {list(meta['allowed'])}")
        return list(value)
    if kind == "script":
        return _script(name, value, meta["keys"])
    raise AssertionError(f"unhandled knob kind {kind}")  # pragma: no cover


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number")
    return float(value)


def _rates(name: str, value: Any, keys: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object keyed by {', '.join(keys)}")
    rates = dict.fromkeys(keys, 0.0)
    for key, rate in value.items():
        if key not in keys:
            raise ConfigError(f"{name}: unknown key {key!r} (expected {', '.join(keys)})")
        number = _number(f"{name}.{key}", rate)
        if not 0 <= number <= 1:
            raise ConfigError(f"{name}.{key} must be between 0 and 1")
        rates[key] = number
    return rates


def _script(name: str, value: Any, keys: tuple[str, ...]) -> dict[str, list[int | str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object keyed by {', '.join(keys)}")
    script: dict[str, list[int | str]] = {key: [] for key in keys}
    for key, items in value.items():
        if key not in keys:
            raise ConfigError(f"{name}: unknown key {key!r} (expected {', '.join(keys)})")
        if not isinstance(items, list):
            raise ConfigError(f"{name}.{key} must be a list")
        for item in items:
            is_status = isinstance(item, int) and not isinstance(item, bool) and 400 <= item <= 599
            if not is_status and item not in SCRIPTED_ACTIONS:
                raise ConfigError(f"{name}.{key}: {item!r} is neither a 4xx/5xx status nor 'drop'/'slow'")
        script[key] = list(items)
    return script
