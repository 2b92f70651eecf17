"""Work through one batch: many requests in flight at once, each settled by compare-and-set.

For every request the runner holds:

1. charge it (once) and note the intent to create a prediction — insufficient credits: `rejected`;
2. create the prediction (shared rate limit; `Prefer: wait` so most answers arrive finished) and store
   its id at once — or, when resuming, fetch the prediction it already has, or find the one a crash
   left unrecorded;
3. poll with backoff until it ends; store every output in S3 under a deterministic key;
4. settle: `succeeded` with the S3 URIs, or `failed` + refund, or back to `pending` to retry later.

Transient trouble (429, 5xx, timeouts, dropped connections) is retried here with exponential backoff
and jitter; a request that keeps failing goes back to `pending` with a delay, and after
`max_attempts` claims it fails and is refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import replicate
from replicate.prediction import Prediction
from sqlalchemy import Connection, Engine, text

from ai_pipeline.catalogue import ModelSpec, load_catalogue
from ai_pipeline.credits.ledger import Charge, InsufficientCredits
from ai_pipeline.db import requests as transitions
from ai_pipeline.db.requests import ClaimedRequest
from ai_pipeline.http_transport import pooled_async_transport
from ai_pipeline.processing.database import TransactionRunner
from ai_pipeline.replicate.errors import classify_failure, model_error_is_retryable
from ai_pipeline.replicate.predictions import (
    TERMINAL_PREDICTION_STATUSES,
    cancel_prediction,
    close_client,
    create_prediction,
    get_prediction,
)
from ai_pipeline.replicate.rate_limit import SharedCreateLimiter, creates_bucket, ensure_bucket
from ai_pipeline.replicate.reconcile import ListingIncomplete, Lookup, UnrecordedPredictions, client_pages
from ai_pipeline.settings import Settings
from ai_pipeline.storage.errors import OutputFetchError
from ai_pipeline.storage.fetch import FetchPolicy, fetch_output
from ai_pipeline.storage.keys import extension_for_content_type, output_key
from ai_pipeline.storage.output_parts import InlineContent, output_parts
from ai_pipeline.storage.uploads import put_object

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallPolicy:
    """How a run treats one call that fails for a while (not configurable from the environment)."""

    # In-run retries of one call before the request is handed back to the queue.
    call_retries: int = 4
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # Longest a prediction may run (Replicate stops them at 30 minutes) before we cancel it.
    prediction_deadline_seconds: float = 35 * 60
    # Delay before a request handed back after transient trouble is due again.
    requeue_delay_seconds: float = 10.0


@dataclass
class RunReport:
    """What one run did."""

    batch_id: str
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def handled(self) -> int:
        return sum(self.outcomes.values())


class Transient(Exception):
    """Trouble that may pass: hand the request back to the queue."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(Exception):
    """Trouble that will not pass: fail the request and refund it."""

    def __init__(self, message: str, *, retryable: bool = False, predict_time: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.predict_time = predict_time


class LeaseLost(Exception):
    """Another run holds the request now; leave it alone."""


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than what the server asked for."""
    delay = random.uniform(0, min(cap, base * 2**attempt))
    return max(delay, retry_after or 0.0)


class BatchRunner:
    """Processes the due requests of one batch under one owner (the Dagster run id)."""

    def __init__(
        self,
        engine: Engine,
        replicate_client: replicate.Client,
        s3_client: Any,
        settings: Settings,
        *,
        owner: str,
        policy: CallPolicy = CallPolicy(),
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.fetch_policy = FetchPolicy.from_settings(settings)
        self.owner = owner
        self.replicate = replicate_client
        self.s3 = s3_client
        self.db = TransactionRunner(engine, threads=2)
        self._uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3")
        self._held: set[int] = set()
        self._catalogue: dict[str, ModelSpec] = {}
        self._model_slots: dict[str, asyncio.Semaphore] = {}
        self._prediction_slots = asyncio.Semaphore(settings.max_in_flight)
        self._http: httpx.AsyncBaseTransport | None = None
        self._create_bucket = creates_bucket(settings.creates_per_minute)
        self._limiter = SharedCreateLimiter(self.db.statement, self._create_bucket)
        self._unrecorded = UnrecordedPredictions(client_pages(replicate_client))

    # ----------------------------------------------------------------------------------- the run
    def run(self, batch_id: str) -> RunReport:
        """Process the batch until nothing in it is due; blocking.

        On uvloop where it is installed: the event loop's own work is a large share of a run's CPU.
        """
        try:
            import uvloop
        except ImportError:  # e.g. on Windows
            return asyncio.run(self.run_async(batch_id))
        return uvloop.run(self.run_async(batch_id))

    async def run_async(self, batch_id: str) -> RunReport:
        report = RunReport(batch_id)
        started = time.monotonic()
        self._catalogue = await self.db(load_catalogue)
        self._model_slots = {
            name: asyncio.Semaphore(spec.max_in_flight)
            for name, spec in self._catalogue.items()
            if spec.max_in_flight
        }
        await self.db(ensure_bucket, self._create_bucket)
        await self.db(transitions.release_expired_leases, batch_id)
        # Downloads are short: a small pool suffices.
        async with pooled_async_transport(max(8, self.settings.max_in_flight // 2)) as http:
            self._http = http
            renewer = asyncio.create_task(self._renew_leases())
            try:
                await self._drain(batch_id, report)
            finally:
                renewer.cancel()
                self._unrecorded.close()
                self._http = None
                await close_client(self.replicate)  # its connections belong to this event loop
        self._uploads.shutdown(wait=True)
        self.db.close()
        report.seconds = time.monotonic() - started
        return report

    async def _drain(self, batch_id: str, report: RunReport) -> None:
        """Keep `max_in_flight` predictions going, refilling each freed slot from a queue of claimed requests.

        The queue is topped up by one claim of up to `claim_chunk` rows when it runs low, so a slot never
        waits for the database and the database sees one claim per many requests.
        """
        settings = self.settings
        in_flight: set[asyncio.Task[str]] = set()
        # Finished tasks arrive here (asyncio.wait would walk every task in flight on each call).
        finished: asyncio.Queue[asyncio.Task[str]] = asyncio.Queue()
        ready: deque[ClaimedRequest] = deque()
        # Tasks beyond the prediction bound are downloading, storing or settling finished work.
        max_tasks = settings.max_in_flight + max(4, settings.max_in_flight // 2)
        refill_below = max(1, settings.max_in_flight // 2)
        batch_empty = False
        try:
            while True:
                if not batch_empty and len(ready) < refill_below:
                    wanted = min(settings.claim_chunk, settings.max_in_flight)
                    claimed = await self.db(
                        transitions.claim_requests, batch_id, self.owner, wanted, settings.lease_seconds
                    )
                    batch_empty = len(claimed) < wanted
                    self._held.update(request.id for request in claimed)
                    ready.extend(claimed)
                while ready and len(in_flight) < max_tasks:
                    task = asyncio.create_task(self._process(ready.popleft()))
                    task.add_done_callback(finished.put_nowait)
                    in_flight.add(task)
                if not in_flight:
                    return
                done = await _finished_within(finished, 1.0)
                for task in done:
                    in_flight.discard(task)
                    report.outcomes[task.result()] += 1
                if batch_empty and done and not ready:
                    # Requests handed back with no delay, or released by a sweeper, are due again.
                    batch_empty = False
        finally:
            for task in in_flight:
                task.cancel()
            if ready:  # only on cancellation: give back what was claimed but never started
                await self.db(transitions.release_many, [r.id for r in ready], self.owner)

    async def _renew_leases(self) -> None:
        interval = max(1.0, self.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            held = list(self._held)
            try:
                still = await self.db(transitions.renew_leases, self.owner, held, self.settings.lease_seconds)
            except Exception:  # the next renewal tries again; the lease has slack for that
                log.exception("lease renewal failed")
                continue
            lost = set(held) - still
            if lost:
                log.warning("lost the lease on %d request(s); another run holds them now", len(lost))

    # ----------------------------------------------------------------------------- one request
    async def _process(self, request: ClaimedRequest) -> str:
        """Take one request as far as it goes; returns the outcome's name. Never raises."""
        owner = self.owner
        try:
            return await self._settle(request)
        except LeaseLost:
            return "lease_lost"
        except Permanent as exc:
            done = await self.db(
                transitions.mark_failed,
                request.id,
                owner,
                str(exc),
                retryable=exc.retryable,
                predict_time=exc.predict_time,
            )
            return "failed" if done else "lease_lost"
        except Transient as exc:
            return await self._hand_back(request, str(exc), exc.retry_after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the request: hand it back and say why
            log.exception("request %s: unexpected error", request.id)
            return await self._hand_back(request, f"internal error: {type(exc).__name__}: {exc}", None)
        finally:
            self._held.discard(request.id)

    async def _hand_back(self, request: ClaimedRequest, reason: str, retry_after: float | None) -> str:
        if request.attempts >= self.settings.max_attempts:
            done = await self.db(
                transitions.mark_failed,
                request.id,
                self.owner,
                f"gave up after {request.attempts} attempts: {reason}",
                retryable=True,
            )
            return "failed" if done else "lease_lost"
        delay = max(retry_after or 0.0, self.policy.requeue_delay_seconds * random.uniform(0.5, 1.5))
        done = await self.db.statement(transitions.release, request.id, self.owner, reason, delay)
        return "requeued" if done else "lease_lost"

    async def _settle(self, request: ClaimedRequest) -> str:
        spec = self._catalogue.get(request.model)
        if request.cancel_requested_at is not None:
            return await self._cancel(request)
        if request.attempts > self.settings.max_attempts:
            raise Permanent(f"gave up after {request.attempts - 1} attempts", retryable=True)
        if spec is None:
            if request.credits_charged:
                raise Permanent(f"model {request.model!r} is no longer in the catalogue")
            return await self._reject(request, f"unknown model {request.model!r}")

        prediction = await self._existing_prediction(request, spec)
        # `max_in_flight` bounds predictions at Replicate (and a model's own cap, its share); charging
        # sits inside the bound so nobody is charged long before their turn, downloads do not.
        async with self._prediction_slots, self._model_slots.get(spec.name) or contextlib.nullcontext():
            if prediction is None:
                # Wait for the create token first: the charge extends the lease, and the create must
                # follow it at once, before anyone could take the request over and create one too.
                await self._limiter.acquire()
                charge = Charge(request.id, request.user_id, spec.credit_type, spec.credits_per_run)
                try:
                    result = await self.db.statement(
                        transitions.charge_and_mark_intent,
                        request.id,
                        self.owner,
                        charge,
                        self.settings.lease_seconds,
                    )
                except transitions.NotHeld:
                    raise LeaseLost from None
                if isinstance(result, InsufficientCredits):
                    return await self._reject(request, result.reason)
                prediction = await self._create(request, spec, intent_at=datetime.now(UTC))
            prediction = await self._wait(prediction)
        return await self._finish(request, prediction)

    async def _reject(self, request: ClaimedRequest, reason: str) -> str:
        done = await self.db(transitions.mark_rejected, request.id, self.owner, reason)
        return "rejected" if done else "lease_lost"

    async def _cancel(self, request: ClaimedRequest) -> str:
        if request.prediction_id:
            await self._call(cancel_prediction, self.replicate, request.prediction_id)
        done = await self.db(transitions.mark_canceled, request.id, self.owner, "canceled on request")
        return "canceled" if done else "lease_lost"

    async def _existing_prediction(self, request: ClaimedRequest, spec: ModelSpec) -> Prediction | None:
        """When resuming: the prediction this request already has, or one a crash left unrecorded."""
        if request.prediction_id:
            return await self._call(get_prediction, self.replicate, request.prediction_id)
        if request.prediction_intent_at is None:
            return None
        return await self._find_unrecorded(request, spec, request.prediction_intent_at)

    async def _find_unrecorded(
        self, request: ClaimedRequest, spec: ModelSpec, intent_at: datetime
    ) -> Prediction | None:
        """A prediction created for this request after `intent_at` whose id never got stored."""
        lookup = Lookup(
            spec,
            request.input,
            created_after=intent_at,
            exclude_ids=await self.db(_prediction_ids_of_twins, request),
        )
        try:
            found = await self._call(self._unrecorded.find, lookup)
        except ListingIncomplete as exc:
            # Unknowable: creating again could bill twice; fail (refunded) and let a retry start afresh.
            raise Permanent(
                f"could not tell whether a prediction was created: {exc}", retryable=True
            ) from exc
        if found is not None:
            await self._record(request, found)
            log.info("request %s: resumed unrecorded prediction %s", request.id, found.id)
        return found

    async def _record(self, request: ClaimedRequest, prediction: Prediction) -> None:
        if not await self.db.statement(transitions.record_prediction, request.id, self.owner, prediction.id):
            raise LeaseLost

    async def _create(self, request: ClaimedRequest, spec: ModelSpec, *, intent_at: datetime) -> Prediction:
        settings, policy = self.settings, self.policy
        for attempt in range(policy.call_retries + 1):
            if attempt:  # the first create's token was taken before the charge
                await self._limiter.acquire()
                held = await self.db.statement(
                    transitions.extend_lease, request.id, self.owner, settings.lease_seconds
                )
                if not held:
                    raise LeaseLost
            try:
                prediction = await create_prediction(
                    self.replicate, spec, request.input, wait_seconds=settings.sync_wait_seconds
                )
            except Exception as exc:
                failure = classify_failure(exc)
                if not failure.transient:
                    raise Permanent(failure.message) from exc
                if failure.throttled:
                    await self._limiter.throttled(failure.retry_after)
                if failure.ambiguous:
                    # The create may have happened although its answer was lost: look before retrying.
                    found = await self._find_unrecorded(request, spec, intent_at)
                    if found is not None:
                        return found
                if attempt == policy.call_retries:
                    raise Transient(failure.message, failure.retry_after) from exc
                await asyncio.sleep(
                    backoff_delay(
                        attempt, policy.backoff_base_seconds, policy.backoff_max_seconds, failure.retry_after
                    )
                )
                continue
            await self._record(request, prediction)
            return prediction
        raise AssertionError("unreachable")

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One idempotent call to Replicate (get, list, cancel), retried on transient trouble."""
        policy = self.policy
        for attempt in range(policy.call_retries + 1):
            try:
                return await fn(*args, **kwargs)
            except ListingIncomplete:
                raise  # not a failed call: the caller decides
            except Exception as exc:
                failure = classify_failure(exc)
                if not failure.transient:
                    raise Permanent(failure.message) from exc
                if attempt == policy.call_retries:
                    raise Transient(failure.message, failure.retry_after) from exc
                await asyncio.sleep(
                    backoff_delay(
                        attempt, policy.backoff_base_seconds, policy.backoff_max_seconds, failure.retry_after
                    )
                )
        raise AssertionError("unreachable")

    async def _wait(self, prediction: Prediction) -> Prediction:
        """Poll until the prediction ends: 0.5 s, growing by half each time, at most 10 s apart."""
        deadline = time.monotonic() + self.policy.prediction_deadline_seconds
        delay = 0.5
        while prediction.status not in TERMINAL_PREDICTION_STATUSES:
            if time.monotonic() > deadline:
                await self._call(cancel_prediction, self.replicate, prediction.id)
                raise Permanent("prediction ran past its deadline and was canceled", retryable=True)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(10.0, delay * 1.5)
            prediction = await self._call(get_prediction, self.replicate, prediction.id)
        return prediction

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
            done = await self.db(
                transitions.mark_canceled, request.id, self.owner, "prediction was canceled at Replicate"
            )
            return "canceled" if done else "lease_lost"
        outputs = await self._store_outputs(request, prediction)
        done = await self.db.statement(
            transitions.mark_succeeded, request.id, self.owner, outputs, predict_time
        )
        return "succeeded" if done else "lease_lost"

    async def _store_outputs(self, request: ClaimedRequest, prediction: Prediction) -> list[dict[str, Any]]:
        if prediction.output is None:
            # The client drops Replicate's `data_removed` flag: a succeeded prediction without output had
            # it deleted (an hour after it ended) or produced none; either way there is nothing to deliver.
            raise Permanent("output deleted before download (Replicate removes outputs after an hour)")
        stored = []
        for index, part in enumerate(output_parts(prediction.output)):
            if isinstance(part, InlineContent):
                content, content_type, source = part.content, part.content_type, None
            else:
                fetched = await self._fetch(part.url)
                content, content_type, source = fetched.content, fetched.content_type, part.url
            key = output_key(
                self.settings.s3_prefix,
                request.batch_id,
                request.id,
                index,
                extension_for_content_type(content_type, source),
            )
            obj = await asyncio.get_running_loop().run_in_executor(
                self._uploads, put_object, self.s3, self.settings.s3_bucket, key, content, content_type
            )
            stored.append(
                {"uri": obj.uri, "sha256": obj.sha256, "size": obj.size, "content_type": obj.content_type}
            )
        return stored

    async def _fetch(self, url: str) -> Any:
        assert self._http is not None
        policy = self.policy
        for attempt in range(policy.call_retries + 1):
            try:
                return await fetch_output(self._http, url, self.fetch_policy)
            except OutputFetchError as exc:
                if not exc.transient:
                    raise Permanent(f"output could not be stored: {exc}") from exc
                if attempt == policy.call_retries:
                    raise Transient(f"output download failed: {exc}") from exc
                await asyncio.sleep(
                    backoff_delay(attempt, policy.backoff_base_seconds, policy.backoff_max_seconds)
                )
        raise AssertionError("unreachable")


async def _finished_within(
    finished: asyncio.Queue[asyncio.Task[str]], timeout: float
) -> list[asyncio.Task[str]]:
    """Every task in `finished` once at least one is there, or none after `timeout` seconds."""
    done: list[asyncio.Task[str]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            done.append(await finished.get())
    while not finished.empty():
        done.append(finished.get_nowait())
    return done


def _prediction_ids_of_twins(conn: Connection, request: ClaimedRequest) -> frozenset[str]:
    """Predictions that other requests with the same model and input already own (never take theirs)."""
    return frozenset(
        conn.execute(
            text(
                "SELECT prediction_id FROM generation_requests WHERE prediction_id IS NOT NULL"
                " AND model = :model AND input = CAST(:input AS jsonb) AND id <> :id"
            ),
            {"model": request.model, "input": json.dumps(request.input), "id": request.id},
        ).scalars()
    )
