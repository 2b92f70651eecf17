"""The sweeper: settles what dead runs and cancels leave behind. No Dagster here; a sensor calls `sweep`.

One sweep, in order:

1. expired leases (the run holding them stopped renewing): back to `pending`, so the next run resumes
   each request where it was (its debit and its prediction are kept); a request that used all its
   attempts is failed and refunded instead, and its prediction is canceled at Replicate;
2. cancels (`ai-pipeline cancel`): the prediction of every open request asked to cancel is canceled at
   Replicate and the request ended `canceled` and refunded (a run that still holds it changes nothing
   more); a request whose run is still creating its prediction waits for the id, and cannot succeed
   meanwhile (a cancel wins over a later success);
3. retryable failures that ended at least the backoff ago are retried once, as new pending requests.

Every change is a compare-and-set on the request's row in its own short transaction (retried on a
dropped connection), so a sweep is safe at any moment, alongside runs and other sweeps, and a second
sweep right after the first changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from replicate.client import Client
from sqlalchemy import Engine

from ai_pipeline.db import cancels, recovery
from ai_pipeline.db.lifecycle import RequestStatus
from ai_pipeline.db.transactions import run_in_transaction
from ai_pipeline.replicate.errors import classify_failure
from ai_pipeline.settings import Settings

log = logging.getLogger(__name__)

# Cancels a prediction at Replicate; raises `CancelNotDelivered` when it may not have arrived.
CancelAtReplicate = Callable[[str], None]


class CancelNotDelivered(Exception):
    """A cancel may not have reached Replicate (throttled, unreachable): the next sweep tries again."""


@dataclass(frozen=True)
class SweepPolicy:
    """How the sweeper decides: attempts before giving up, retry backoff, work per sweep."""

    max_attempts: int = 5
    retry_backoff_seconds: float = 60.0
    # Failures older than this are not retried automatically any more (a backfill still can).
    retry_lookback_seconds: float = 24 * 3600.0
    # Rows each step handles per sweep, so a sweep stays short (a sensor tick times out after 60 s).
    limit: int = 1000
    cancel_limit: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepPolicy:
        return cls(max_attempts=settings.max_attempts, retry_backoff_seconds=settings.retry_backoff_seconds)


@dataclass
class SweepReport:
    """What one sweep did."""

    leases_released: int = 0
    gave_up: int = 0
    cancels_sent: int = 0
    canceled: int = 0
    retries_queued: int = 0
    cancels_not_delivered: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(
            (self.leases_released, self.gave_up, self.cancels_sent, self.canceled, self.retries_queued)
        )

    def summary(self) -> str:
        text = (
            f"released {self.leases_released} expired lease(s), gave up on {self.gave_up} (refunded),"
            f" sent {self.cancels_sent} cancel(s) to Replicate, canceled {self.canceled} request(s),"
            f" queued {self.retries_queued} retry(ies)"
        )
        if self.cancels_not_delivered:
            text += f"; {len(self.cancels_not_delivered)} cancel(s) to try again next sweep"
        return text


def replicate_canceler(api_token: str | None, base_url: str) -> CancelAtReplicate:
    """Cancel predictions with the official client (blocking calls, short timeouts).

    A prediction Replicate no longer knows (404) has nothing left to stop.
    """
    client = Client(api_token=api_token, base_url=base_url, timeout=httpx.Timeout(10.0, connect=5.0))

    def cancel(prediction_id: str) -> None:
        try:
            client.predictions.cancel(prediction_id)
        except Exception as exc:
            failure = classify_failure(exc)
            if failure.status == 404:
                return
            raise CancelNotDelivered(failure.message) from exc

    return cancel


def sweep(engine: Engine, cancel_at_replicate: CancelAtReplicate, policy: SweepPolicy) -> SweepReport:
    """One sweep (see the module docstring); returns what it did."""
    report = SweepReport()

    expired = run_in_transaction(engine, recovery.settle_expired_leases, policy.max_attempts, policy.limit)
    report.leases_released = expired.released
    report.gave_up = len(expired.gave_up)
    for request in expired.gave_up:
        if request.prediction_id:
            # Already failed and refunded; stopping the prediction only saves what it would still cost.
            _cancel(cancel_at_replicate, request, report)

    for request in run_in_transaction(engine, cancels.requests_to_cancel, policy.cancel_limit):
        if request.prediction_id is None and request.status is RequestStatus.PROCESSING:
            continue  # its run is creating the prediction: cancel that once its id is stored
        if request.prediction_id and not _cancel(cancel_at_replicate, request, report):
            continue  # not stopped at Replicate yet: keep the request open, try again next sweep
        if run_in_transaction(engine, cancels.finish_canceled, request.id):
            report.canceled += 1

    report.retries_queued = run_in_transaction(
        engine,
        recovery.requeue_due_failures,
        backoff_seconds=policy.retry_backoff_seconds,
        lookback_seconds=policy.retry_lookback_seconds,
        limit=policy.limit,
    )
    return report


def _cancel(
    cancel_at_replicate: CancelAtReplicate, request: cancels.OpenRequest, report: SweepReport
) -> bool:
    assert request.prediction_id is not None
    try:
        cancel_at_replicate(request.prediction_id)
    except CancelNotDelivered as exc:
        log.warning("request %s: cancel of %s not delivered: %s", request.id, request.prediction_id, exc)
        report.cancels_not_delivered.append(request.prediction_id)
        return False
    report.cancels_sent += 1
    return True
