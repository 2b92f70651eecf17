"""The emulator's state and operations, independent of HTTP: create, wait, cancel, render, reset, stats.

One ``EmulatorService`` lives in the server's event loop; every method is called from that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections import Counter
from typing import Any

from ai_pipeline.dev.emulator.config import EmulatorConfig, merge_config
from ai_pipeline.dev.emulator.faults import FaultInjector
from ai_pipeline.dev.emulator.models import BuiltinModel
from ai_pipeline.dev.emulator.predictions import (
    DEFAULT_WEBHOOK_EVENTS,
    STATUSES,
    SUCCEEDED,
    Prediction,
    PredictionStore,
    new_prediction_id,
)
from ai_pipeline.dev.emulator.ratelimit import RateLimiter
from ai_pipeline.dev.emulator.stats import Stats
from ai_pipeline.dev.emulator.webhooks import WebhookDispatcher, generate_secret

_RATE_LIMIT_KNOBS = ("create_rate_per_minute", "create_burst", "other_rate_per_minute", "other_burst")


def _rng(seed: int | None, stream: str) -> random.Random:
    """An independent generator per purpose, so e.g. webhook ids never shift the fault sequence."""
    return random.Random(f"{seed}:{stream}") if seed is not None else random.Random()


class EmulatorService:
    """Predictions, counters, fault decisions and webhooks of one emulator instance."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.initial_config = config or EmulatorConfig()
        self.config = merge_config(self.initial_config, {})  # a private copy: scripts get consumed
        seed = self.config.seed
        self._ids = _rng(seed, "ids")
        self.injector = FaultInjector(_rng(seed, "faults"))
        self.webhook_secret = self.config.webhook_secret or generate_secret(_rng(seed, "secret"))
        self.webhooks = WebhookDispatcher(self, _rng(seed, "webhooks"))
        self.limiter = RateLimiter(self.config)
        self.store = PredictionStore()
        self.stats = Stats()

    # --- configuration and lifecycle -----------------------------------------------------------

    def update_config(self, patch: dict[str, Any]) -> EmulatorConfig:
        """Merge a JSON patch into the live configuration (raises ``ConfigError`` if invalid)."""
        new = merge_config(self.config, patch)
        if any(getattr(new, knob) != getattr(self.config, knob) for knob in _RATE_LIMIT_KNOBS):
            self.limiter.configure(new)
        if new.webhook_secret:
            self.webhook_secret = new.webhook_secret
        self.config = new
        return new

    async def reset(self, restore_config: bool = False) -> None:
        """Forget every prediction and counter and replay fault decisions from the seed; optionally go
        back to the start-up configuration. Prediction ids keep advancing, so an id stored before a
        reset never names a different prediction after it."""
        await self.webhooks.cancel_all()
        if restore_config:
            self.config = merge_config(self.initial_config, {})
        self.injector = FaultInjector(_rng(self.config.seed, "faults"))
        self.limiter.configure(self.config)
        self.store = PredictionStore()
        self.stats = Stats()

    async def aclose(self) -> None:
        """Stop webhook deliveries and release the HTTP client (server shutdown)."""
        await self.webhooks.aclose()

    def accepts_token(self, token: str | None) -> bool:
        """Whether a bearer token is accepted: any non-empty one, or exactly ``config.token`` if set."""
        if not token:
            return False
        required = self.config.token
        return required is None or hmac.compare_digest(token.encode(), required.encode())

    def base_url(self, request_base_url: str) -> str:
        """The root URL links are built from: ``public_url`` if configured, else the request's."""
        return (self.config.public_url or request_base_url).rstrip("/")

    # --- predictions -----------------------------------------------------------------------------

    def create_prediction(
        self,
        model: BuiltinModel,
        given_input: dict[str, Any],
        *,
        base_url: str,
        deployment: str | None = None,
        version: str | None = None,
        webhook: str | None = None,
        webhook_events: frozenset[str] = DEFAULT_WEBHOOK_EVENTS,
        webhook_completed: str | None = None,
    ) -> Prediction:
        """Create a prediction with validated input and plan its whole life; it reports `version`
        (default: the model's version id)."""
        now = time.time()
        plan = self.injector.plan_run(self.config, str(given_input.get("prompt", "")))
        if plan.failure is not None and plan.failure.phase == "starting":
            start_at, end_at, full_run = None, now + plan.start_delay, 0.0
        else:
            start_at = now + plan.start_delay
            end_at = start_at + plan.predict_time
            fraction = plan.failure.fraction_run if plan.failure else 1.0
            full_run = plan.predict_time / fraction if fraction > 0 else plan.predict_time
        prediction = Prediction(
            id=new_prediction_id(self._ids),
            seq=self.store.next_seq,
            model=model,
            input=given_input,
            seed=model.seed_for(given_input),
            deployment=deployment,
            base_url=base_url,
            created_at=now,
            start_at=start_at,
            end_at=end_at,
            full_run_seconds=full_run,
            failure=plan.failure,
            webhook=webhook,
            webhook_events=webhook_events,
            webhook_completed=webhook_completed,
            version=version,
        )
        self.store.add(prediction)
        self.stats.record_create(model.ref, given_input)
        if plan.cold_start and plan.failure is None:
            self.stats.cold_starts += 1
            self.stats.record_fault("prediction", "cold_start")
        if plan.failure is not None:
            self.stats.model_failures[plan.failure.kind] += 1
            if plan.failure_injected:
                self.stats.record_fault("prediction", f"model_failure_{plan.failure.kind}")
        if webhook or webhook_completed:
            self.webhooks.follow(prediction)
        return prediction

    def get(self, prediction_id: str) -> Prediction | None:
        """The prediction with this id, if any."""
        return self.store.get(prediction_id)

    def cancel(self, prediction: Prediction) -> None:
        """Cancel a prediction that has not finished (a finished one is left as it is)."""
        if prediction.cancel(time.time()):
            self.stats.cancels += 1

    def render(self, prediction: Prediction, base_url: str, status: str | None = None) -> dict[str, Any]:
        """The prediction's JSON as of now."""
        return prediction.to_json(time.time(), base_url, self.config.output_ttl, status)

    async def wait(self, prediction: Prediction, seconds: float) -> bool:
        """Hold until the prediction finishes or ``seconds`` pass; returns whether it finished."""
        deadline = time.time() + seconds
        while True:
            now = time.time()
            if prediction.is_terminal(now):
                return True
            if now >= deadline:
                return False
            await self.wait_for_change(prediction, min(prediction.next_change_after(now), deadline) - now)

    async def wait_for_change(self, prediction: Prediction, delay: float) -> None:
        """Sleep ``delay`` seconds, waking early if the prediction is canceled."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        if prediction.changed is None:
            prediction.changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(prediction.changed.wait(), delay)

    def file_content(self, prediction_id: str, filename: str) -> bytes | None:
        """Bytes of an output file, or None if unknown, not (or no longer) available."""
        prediction = self.store.get(prediction_id)
        if prediction is None:
            return None
        now = time.time()
        if prediction.status_at(now) != SUCCEEDED or prediction.is_data_removed(now, self.config.output_ttl):
            return None
        recipe = prediction.model.files(prediction.input, prediction.seed).get(filename)
        return recipe() if recipe is not None else None

    # --- introspection ---------------------------------------------------------------------------

    def predictions_by_status(self) -> dict[str, int]:
        """How many predictions are in each status right now."""
        now = time.time()
        counts = Counter(prediction.status_at(now) for prediction in self.store)
        return {status: counts.get(status, 0) for status in STATUSES}

    def stats_snapshot(self, per_input: bool = False) -> dict[str, Any]:
        """All counters (see ``Stats.snapshot``)."""
        return self.stats.snapshot(self.predictions_by_status(), per_input=per_input)
