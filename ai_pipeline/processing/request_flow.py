"""One request, start to end, under the run's lease:

1. charge it (once) and note the intent to create a prediction — insufficient credits: `rejected`;
2. create the prediction (shared rate limit; `Prefer: wait` so most answers arrive finished) and store
   its id at once — or, when resuming, fetch the prediction it already has, or find the one a crash
   left unrecorded;
3. poll until it ends; store every output in S3 under a deterministic key;
4. settle: `succeeded` with the S3 URIs, `failed` + refund, or back to `pending` to retry later.

Calls are retried in the run while their trouble is transient (`failures.CALLS`); trouble with the
Replicate account waits for the shared circuit breaker (`replicate.breaker`) and carries on; what is left
ends the request as `failures` says.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from replicate.client import Client
from replicate.prediction import Prediction

from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.credits.ledger import Charge, InsufficientCredits
from ai_pipeline.db.claims import ClaimedRequest
from ai_pipeline.db.settling import NotHeld
from ai_pipeline.processing.failures import (
    CALLS,
    PREDICTION_DEADLINE_SECONDS,
    REQUEUE_DELAY_SECONDS,
    LeaseLost,
    Permanent,
    Transient,
    replicate_call_failed,
    retry_after,
    waits_for_breaker,
    worth_retrying,
)
from ai_pipeline.processing.in_flight import SharedSlots
from ai_pipeline.processing.store import RunStore
from ai_pipeline.replicate.breaker import SharedBreaker
from ai_pipeline.replicate.errors import classify_failure, model_error_is_retryable
from ai_pipeline.replicate.predictions import (
    TERMINAL_PREDICTION_STATUSES,
    cancel_prediction,
    create_prediction,
    get_prediction,
)
from ai_pipeline.replicate.rate_limit import SharedCreateLimiter
from ai_pipeline.replicate.reconcile import Lookup, UnrecordedPredictions
from ai_pipeline.retry import retry_async
from ai_pipeline.settings import Settings
from ai_pipeline.storage.allowlist import FetchPolicy
from ai_pipeline.storage.errors import OutputFetchError
from ai_pipeline.storage.fetch import FetchedFile, fetch_output
from ai_pipeline.storage.keys import extension_for_content_type, output_key
from ai_pipeline.storage.output_parts import InlineContent, output_parts
from ai_pipeline.storage.uploads import put_object

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every request of a run shares: its store, clients, limits and the catalogue."""

    settings: Settings
    store: RunStore
    replicate: Client
    s3: Any
    uploads: Executor
    limiter: SharedCreateLimiter
    breaker: SharedBreaker
    unrecorded: UnrecordedPredictions
    catalogue: dict[str, ModelSpec]
    # Predictions this run keeps in flight at most; the caps every run shares (processing/in_flight.py).
    run_slots: asyncio.Semaphore
    slots: SharedSlots
    fetch_policy: FetchPolicy
    http: httpx.AsyncBaseTransport | None = None


class RequestFlow:
    """Takes requests of one run as far as they go (`process`); never raises for a request's trouble."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.store = run.store

    async def process(self, request: ClaimedRequest) -> str:
        """Take one request as far as it goes; returns the outcome's name."""
        try:
            return await self._settle(request)
        except LeaseLost:
            return "lease_lost"
        except Permanent as exc:
            done = await self.store.fail(
                request, str(exc), retryable=exc.retryable, predict_time=exc.predict_time
            )
            return "failed" if done else "lease_lost"
        except Transient as exc:
            return await self._hand_back(request, str(exc), exc.retry_after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the request: hand it back and say why
            log.exception("request %s: unexpected error", request.id)
            return await self._hand_back(request, f"internal error: {type(exc).__name__}: {exc}", None)

    async def _hand_back(self, request: ClaimedRequest, reason: str, wait: float | None) -> str:
        if request.attempts >= self.run.settings.max_attempts:
            reason = f"gave up after {request.attempts} attempts: {reason}"
            done = await self.store.fail(request, reason, retryable=True)
            return "failed" if done else "lease_lost"
        delay = max(wait or 0.0, REQUEUE_DELAY_SECONDS * random.uniform(0.5, 1.5))
        done = await self.store.hand_back(request, reason, delay)
        return "requeued" if done else "lease_lost"

    async def _settle(self, request: ClaimedRequest) -> str:
        run = self.run
        spec = run.catalogue.get(request.model)
        if request.cancel_requested_at is not None:
            return await self._cancel(request)
        if request.attempts > run.settings.max_attempts:
            raise Permanent(f"gave up after {request.attempts - 1} attempts", retryable=True)
        if spec is None:
            if request.credits_charged:
                raise Permanent(f"model {request.model!r} is no longer in the catalogue")
            return await self._reject(request, f"unknown model {request.model!r}")

        prediction = await self._existing_prediction(request, spec)
        if prediction is None:
            await run.breaker.wait_closed()  # no creates while Replicate refuses the account
        # The caps bound predictions at Replicate (this run's, all runs', the model's own); charging sits
        # inside the bound so nobody is charged long before their turn, downloads do not.
        async with run.run_slots, run.slots.slot(spec.name):
            if prediction is None:
                # Wait for the create token first: the charge extends the lease, and the create must
                # follow it at once, before anyone could take the request over and create one too.
                await run.limiter.acquire()
                charge = Charge(request.id, request.user_id, spec.credit_type, spec.credits_per_run)
                try:
                    result = await self.store.charge(request, charge)
                except NotHeld:
                    raise LeaseLost from None
                if isinstance(result, InsufficientCredits):
                    return await self._reject(request, result.reason)
                prediction = await self._create(request, spec, intent_at=datetime.now(UTC))
            prediction = await self._wait(prediction)
        return await self._finish(request, prediction)

    async def _reject(self, request: ClaimedRequest, reason: str) -> str:
        return "rejected" if await self.store.reject(request, reason) else "lease_lost"

    async def _cancel(self, request: ClaimedRequest) -> str:
        if request.prediction_id:
            await self._call(cancel_prediction, self.run.replicate, request.prediction_id)
        done = await self.store.cancel(request, "canceled on request")
        return "canceled" if done else "lease_lost"

    # ------------------------------------------------------------------------------ predictions
    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One idempotent call to Replicate (get, list, cancel), retried on transient trouble."""
        return await self._replicate(lambda: fn(*args))

    async def _replicate(
        self,
        call: Callable[[], Awaitable[T]],
        before_retry: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> T:
        """`call`, retried while its trouble is transient, and after the circuit breaker closes again
        while the trouble is the account's (`failures.waits_for_breaker`); every answer and failure is
        told to the breaker."""
        breaker = self.run.breaker

        async def attempt() -> T:
            return await breaker.watched(call)

        async def before_next(exc: Exception) -> None:
            await breaker.wait_closed()
            if before_retry is not None:
                await before_retry(exc)

        while True:
            try:
                return await retry_async(
                    attempt, CALLS, retry_if=worth_retrying, retry_after=retry_after, before_retry=before_next
                )
            except Exception as exc:
                if not waits_for_breaker(exc, breaker_open=breaker.is_open):
                    raise replicate_call_failed(exc) from exc
                await before_next(exc)

    async def _existing_prediction(self, request: ClaimedRequest, spec: ModelSpec) -> Prediction | None:
        """When resuming: the prediction this request already has, or one a crash left unrecorded."""
        if request.prediction_id:
            return await self._call(get_prediction, self.run.replicate, request.prediction_id)
        if request.prediction_intent_at is None:
            return None
        return await self._find_unrecorded(request, spec, request.prediction_intent_at)

    async def _find_unrecorded(
        self, request: ClaimedRequest, spec: ModelSpec, intent_at: datetime
    ) -> Prediction | None:
        """A prediction created for this request after `intent_at` whose id never got stored."""
        twins = await self.store.predictions_of_twins(request)
        lookup = Lookup(spec, request.input, created_after=intent_at, exclude_ids=twins)
        found = await self._call(self.run.unrecorded.find, lookup)
        if found is not None:
            await self._record(request, found)
            log.info("request %s: resumed unrecorded prediction %s", request.id, found.id)
        return found

    async def _record(self, request: ClaimedRequest, prediction: Prediction) -> None:
        if not await self.store.record_prediction(request, prediction.id):
            raise LeaseLost

    async def _create(self, request: ClaimedRequest, spec: ModelSpec, *, intent_at: datetime) -> Prediction:
        run = self.run

        async def create() -> tuple[Prediction, bool]:
            try:
                prediction = await create_prediction(
                    run.replicate, spec, request.input, wait_seconds=run.settings.sync_wait_seconds
                )
            except Exception as exc:
                failure = classify_failure(exc)
                if failure.throttled:
                    await run.limiter.throttled(failure.retry_after)
                if failure.ambiguous:
                    # The create may have happened although its answer was lost: look before retrying.
                    found = await self._find_unrecorded(request, spec, intent_at)
                    if found is not None:
                        return found, True
                raise
            return prediction, False

        async def before_retry(exc: Exception) -> None:
            # The first create's token was taken before the charge; a retry takes its own, and goes
            # out only while this run still holds the request.
            await run.limiter.acquire()
            if not await self.store.still_held(request):
                raise LeaseLost

        prediction, recorded = await self._replicate(create, before_retry)
        if not recorded:
            await self._record(request, prediction)
        return prediction

    async def _wait(self, prediction: Prediction) -> Prediction:
        """Poll until the prediction ends: 0.5 s, growing by half each time, at most 10 s apart."""
        deadline = time.monotonic() + PREDICTION_DEADLINE_SECONDS
        delay = 0.5
        while prediction.status not in TERMINAL_PREDICTION_STATUSES:
            if time.monotonic() > deadline:
                await self._call(cancel_prediction, self.run.replicate, prediction.id)
                raise Permanent("prediction ran past its deadline and was canceled", retryable=True)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(10.0, delay * 1.5)
            prediction = await self._call(get_prediction, self.run.replicate, prediction.id)
        return prediction

    # ---------------------------------------------------------------------------------- settling
    async def _finish(self, request: ClaimedRequest, prediction: Prediction) -> str:
        predict_time = (prediction.metrics or {}).get("predict_time")
        if prediction.status == "failed":
            error = prediction.error or "prediction failed"
            raise Permanent(
                f"model failed: {error}",
                retryable=model_error_is_retryable(str(error)),
                predict_time=predict_time,
            )
        if prediction.status == "canceled":
            done = await self.store.cancel(request, "prediction was canceled at Replicate")
            return "canceled" if done else "lease_lost"
        outputs = await self._store_outputs(request, prediction)
        done = await self.store.succeed(request, outputs, predict_time)
        return "succeeded" if done else "lease_lost"

    async def _store_outputs(self, request: ClaimedRequest, prediction: Prediction) -> list[dict[str, Any]]:
        if prediction.output is None:
            # The client drops Replicate's `data_removed` flag: a succeeded prediction without output had
            # it deleted (an hour after it ended) or produced none; either way there is nothing to deliver.
            raise Permanent("output deleted before download (Replicate removes outputs after an hour)")
        run, stored = self.run, []
        for index, part in enumerate(output_parts(prediction.output)):
            if isinstance(part, InlineContent):
                content, content_type, source = part.content, part.content_type, None
            else:
                fetched = await self._fetch(part.url)
                content, content_type, source = fetched.content, fetched.content_type, part.url
            extension = extension_for_content_type(content_type, source)
            key = output_key(run.settings.s3_prefix, request.batch_id, request.id, index, extension)
            obj = await asyncio.get_running_loop().run_in_executor(
                run.uploads, put_object, run.s3, run.settings.s3_bucket, key, content, content_type
            )
            stored.append(
                {"uri": obj.uri, "sha256": obj.sha256, "size": obj.size, "content_type": obj.content_type}
            )
        return stored

    async def _fetch(self, url: str) -> FetchedFile:
        http = self.run.http
        assert http is not None
        try:
            return await retry_async(
                lambda: fetch_output(http, url, self.run.fetch_policy),
                CALLS,
                retry_if=lambda exc: isinstance(exc, OutputFetchError) and exc.transient,
            )
        except OutputFetchError as exc:
            if exc.transient:
                raise Transient(f"output download failed: {exc}") from exc
            raise Permanent(f"output could not be stored: {exc}") from exc
