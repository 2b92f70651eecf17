"""A local Replicate-compatible API with built-in models and fault injection.

The official ``replicate`` client (1.0.x) cannot tell it from api.replicate.com: same paths, JSON,
status codes, headers, error bodies, rate limits and signed webhooks. Use it for the demo, for tests
and for benchmarks, or to rehearse a batch without spending money.

Start it
--------
- ``ai-pipeline emulate --port 8787`` (or ``python -m ai_pipeline.dev.emulator``); then
  ``REPLICATE_BASE_URL=http://127.0.0.1:8787 REPLICATE_API_TOKEN=anything``. ``--help`` lists every knob.
- In tests: ``with run_emulator(predict_seconds=0.1, seed=1) as emu:`` then
  ``replicate.Client("any-token", base_url=emu.base_url)`` (background thread, ``port=0`` = a free
  port); ``emu.stats()``, ``emu.configure(...)``, ``emu.reset()`` drive the controls below.
- For benchmarks: ``with emulator_process(rate_limits_enabled=False) as emu: ...`` (a child process).

Built-in models (``BUILTIN_MODELS``, ``model_versions()``; version constants exported here)
-----------------------------------------------------------------------------------------------
- ``emulator/image`` (``IMAGE_MODEL_VERSION``, by version): ``prompt`` (required), ``seed`` -> one PNG URL.
- ``emulator/images`` (``IMAGES_MODEL_VERSION``, by version or as an official model without one):
  ``prompt``, ``num_outputs`` 1-4 (default 2), ``seed`` -> a list of PNG URLs; metrics ``image_count``.
- ``emulator/text`` (``TEXT_MODEL_VERSION``, by version or official): ``prompt``, ``max_tokens``
  (default 16) -> a list of tokens that grows while processing; ``urls.stream`` serves them as SSE;
  metrics ``input_token_count`` / ``output_token_count``.
- ``emulator/caption`` (``CAPTION_MODEL_VERSION``, by version): ``prompt`` ->
  ``{"caption": str, "image": PNG URL, "score": float}``.
- ``emulator/image-deployment`` (``IMAGE_DEPLOYMENT``): a deployment running ``emulator/image``.

PNGs are real 64x64 images, deterministic from (prompt, seed); without a seed one is derived from the
prompt, so equal inputs give equal bytes. Files are served at ``{public_url}/_delivery/{id}/out-N.png``
and vanish ``output_ttl`` seconds (default 3600) after completion: the file answers 404 and the
prediction shows ``input: {}``, ``output: null``, ``data_removed: true``.

Magic prompts (a prompt *containing* the marker)
------------------------------------------------
- ``fail:nsfw`` -> failed, "NSFW content detected. Try running it again, or try a different prompt."
- ``fail:oom`` -> failed part-way with "CUDA out of memory. ... (E1001)"
- ``fail:cold-timeout`` -> sits in ``starting`` for ``cold_timeout_seconds`` (default 5), then failed with
  "Timeout Starting Prediction (E6716)" (never started: no ``started_at``, no ``predict_time``).

Behaviour worth knowing
-----------------------
- Status: starting -> processing -> succeeded | failed | canceled; ``metrics.predict_time`` is billed
  processing time (also for cancels), ``total_time`` includes the queue/cold boot.
- ``Prefer: wait[=N]`` holds the create until terminal or N s (bare ``wait``: ``max_wait_seconds``, 60);
  answers ``Preference-Applied: wait``. If time runs out it reports ``status: "starting"``, as Replicate
  does, which is what makes the official client fall back to polling.
- Tokens: any non-empty bearer token, or only ``--token X``. 401/404/422 are problem+json with
  Replicate's titles and details.
- Rate limits: token buckets per token: creates 600/min (burst 100), everything else 3000/min
  (burst 500); 429 body ``{"detail": "Request was throttled. Your rate limit resets in ~Ns.", "status":
  429, "retry_after": N}`` with ``Retry-After``; every API answer carries ``ratelimit-remaining`` and
  ``ratelimit-reset``.
- Webhooks: signed like Replicate's; verify with ``replicate.webhooks.validate`` and the secret from
  ``GET /v1/webhooks/default/secret``. Only the terminal webhook is retried (doubling back-off, ~1 min).

Faults (flags, ``--profile FILE`` JSON, or live via ``POST /_emulator/config`` JSON merge patch)
-----------------------------------------------------------------------------------------------
``predict_seconds``/``predict_jitter_seconds``/``predict_distribution``, ``start_seconds``,
``cold_start_probability``/``cold_start_seconds``, ``rate_limits_enabled`` and bucket sizes,
``http_error_rates`` per kind (create/get/other) with ``http_error_statuses`` (500/502/503/504),
``drop_rates`` per kind (connection closed without an answer; a dropped create still creates unless
``dropped_create_still_creates`` is false), ``model_failure_rates`` (nsfw/oom/cold_timeout),
``download_error_rate``/``download_error_statuses``, ``download_slow_rate``/``download_delay_seconds``,
and ``scripted_faults`` - e.g. ``{"scripted_faults": {"get": [503, 503], "create": ["drop"]}}`` serves
exactly those to the next requests of that kind. Random decisions come from ``--seed``.

Introspection
-------------
``GET /_emulator/stats[?per_input=1]`` (requests, predictions_created, creates_by_input with
distinct_inputs / duplicate_creates / per_input, predictions_by_status, responses_429, faults_sent,
faults_by_endpoint, webhooks_delivered, webhook_attempts, downloads, ...), ``GET|POST /_emulator/config``,
``POST /_emulator/reset[?config=1]``, ``GET /_emulator/health``, ``GET /_emulator/models``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ai_pipeline.dev.emulator.config import EmulatorConfig
from ai_pipeline.dev.emulator.models import (
    BUILTIN_DEPLOYMENTS,
    BUILTIN_MODELS,
    CAPTION_MODEL,
    CAPTION_MODEL_VERSION,
    IMAGE_DEPLOYMENT,
    IMAGE_MODEL,
    IMAGE_MODEL_VERSION,
    IMAGES_MODEL,
    IMAGES_MODEL_VERSION,
    TEXT_MODEL,
    TEXT_MODEL_VERSION,
    model_versions,
)

if TYPE_CHECKING:
    from ai_pipeline.dev.emulator.app import create_app
    from ai_pipeline.dev.emulator.server import emulator_process, run_emulator
    from ai_pipeline.dev.emulator.service import EmulatorService

# The server side (Starlette, uvicorn) loads only when asked for, so the pipeline's catalogue can read
# the model registry without importing a web server.
_LAZY = {
    "create_app": "ai_pipeline.dev.emulator.app",
    "run_emulator": "ai_pipeline.dev.emulator.server",
    "emulator_process": "ai_pipeline.dev.emulator.server",
    "EmulatorService": "ai_pipeline.dev.emulator.service",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_DEPLOYMENTS",
    "BUILTIN_MODELS",
    "CAPTION_MODEL",
    "CAPTION_MODEL_VERSION",
    "IMAGES_MODEL",
    "IMAGES_MODEL_VERSION",
    "IMAGE_DEPLOYMENT",
    "IMAGE_MODEL",
    "IMAGE_MODEL_VERSION",
    "TEXT_MODEL",
    "TEXT_MODEL_VERSION",
    "EmulatorConfig",
    "EmulatorService",
    "create_app",
    "emulator_process",
    "model_versions",
    "run_emulator",
]
