"""What a failed call to Replicate means for the request: retry later, or give up and refund.

One place decides, so a change to the retry rules is a change here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from replicate.exceptions import ReplicateError

# Statuses worth trying again: throttled, or the service (or something in front of it) hiccuped.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# The account, not the request: a token that is wrong or revoked (401), billing stopped (402), access
# refused (403). Every call fails alike until someone fixes the account: the pipeline pauses.
ACCOUNT_STATUSES = frozenset({401, 402, 403})
_RETRY_IN = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


@dataclass(frozen=True)
class CallFailure:
    """A classified failure of one call to Replicate."""

    transient: bool
    # The call may have taken effect although no answer came back (a create may exist).
    ambiguous: bool
    status: int | None
    message: str
    retry_after: float | None = None

    @property
    def throttled(self) -> bool:
        return self.status == 429

    @property
    def account(self) -> bool:
        """Replicate refused the account, not this request (401/402/403)."""
        return self.status in ACCOUNT_STATUSES

    @property
    def service_trouble(self) -> bool:
        """Replicate (or what stands before it) failed or did not answer: one of these is a hiccup, a
        run of them from every call an outage."""
        return self.transient and (self.status is None or self.status >= 500)


def classify_failure(exc: BaseException) -> CallFailure:
    """Classify an exception raised by the `replicate` client or httpx."""
    if isinstance(exc, ReplicateError):
        status = exc.status
        detail = exc.detail or exc.title or "error"
        retry_after = None
        if status == 429:
            match = _RETRY_IN.search(detail)
            retry_after = float(match.group(1)) if match else None
        transient = status in TRANSIENT_STATUSES or status is None
        # A 5xx answer may come from a proxy after the service did the work.
        ambiguous = status is not None and status >= 500
        return CallFailure(transient, ambiguous, status, f"Replicate {status}: {detail}", retry_after)
    if isinstance(exc, httpx.TimeoutException):
        # A read timeout means the request went out: its effect is unknown.
        ambiguous = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
        return CallFailure(True, ambiguous, None, f"timeout talking to Replicate ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        ambiguous = not isinstance(exc, httpx.ConnectError)
        return CallFailure(True, ambiguous, None, f"connection to Replicate failed ({type(exc).__name__})")
    return CallFailure(False, False, None, f"{type(exc).__name__}: {exc}")


# Model failures worth another attempt later: capacity and cold-start trouble, not content refusals.
_RETRYABLE_MODEL_ERRORS = ("E1001", "out of memory", "E6716", "timeout starting", "internal error")


def model_error_is_retryable(error: str | None) -> bool:
    """Whether a failed prediction's error suggests that running it again could succeed."""
    text_lower = (error or "").lower()
    return any(marker.lower() in text_lower for marker in _RETRYABLE_MODEL_ERRORS)
