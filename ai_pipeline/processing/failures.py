"""How trouble with one request ends, and how long a run keeps trying before it says so.

A call that fails is retried in the run (`CALLS`) while its failure is transient. Trouble with the
account, not the request (401/402/403), or any trouble while the shared circuit breaker is open,
neither ends nor hands back the request: it waits for the breaker and carries on (`waits_for_breaker`).
What is left is one of:
- `Transient`: may pass later: the request goes back to the queue (after `max_attempts` claims it fails);
- `Permanent`: will not pass: the request fails and is refunded;
- `LeaseLost`: another run holds the request now: leave it alone.
"""

from __future__ import annotations

from ai_pipeline.replicate.errors import classify_failure
from ai_pipeline.replicate.reconcile import ListingIncomplete
from ai_pipeline.retry import Backoff

# One call (create, get, cancel, download): five tries, 0.5 s growing to 30 s apart.
CALLS = Backoff(attempts=5, base_seconds=0.5, max_seconds=30.0)
# Longest a prediction may run (Replicate stops them at 30 minutes) before the run cancels it.
PREDICTION_DEADLINE_SECONDS = 35 * 60.0
# A request handed back after transient trouble is due again after about this long (±50 %).
REQUEUE_DELAY_SECONDS = 10.0


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


RequestFailure = Transient | Permanent | LeaseLost


def replicate_call_failed(exc: Exception) -> RequestFailure:
    """What a call to Replicate that failed for good (retries spent, or not worth one) means."""
    if isinstance(exc, RequestFailure):
        return exc
    if isinstance(exc, ListingIncomplete):
        # Unknowable: creating again could bill twice; fail (refunded) and let a retry start afresh.
        return Permanent(f"could not tell whether a prediction was created: {exc}", retryable=True)
    failure = classify_failure(exc)
    if failure.transient:
        return Transient(failure.message, failure.retry_after)
    return Permanent(failure.message)


def worth_retrying(exc: Exception) -> bool:
    """A failed call to Replicate worth trying again in the run."""
    return not isinstance(exc, RequestFailure) and classify_failure(exc).transient


def retry_after(exc: Exception) -> float | None:
    """How long Replicate asked the caller to wait (a 429), if it said."""
    return None if isinstance(exc, RequestFailure) else classify_failure(exc).retry_after


def waits_for_breaker(exc: Exception, *, breaker_open: bool) -> bool:
    """Whether a call that failed for good waits for Replicate's circuit breaker to close and is then
    tried again, instead of ending the request: when Replicate refused the account (401/402/403), and
    for transient trouble while the breaker is open (an outage, not this request's). Such a request is
    never failed, refunded or charged again for it."""
    if isinstance(exc, RequestFailure):
        return False
    failure = classify_failure(exc)
    return failure.account or (failure.transient and breaker_open)
