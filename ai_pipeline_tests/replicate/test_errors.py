"""Which failures of a call to Replicate are retried, and which may have taken effect anyway."""

from __future__ import annotations

import httpx
import pytest
from replicate.exceptions import ReplicateError

from ai_pipeline.replicate.errors import classify_failure, model_error_is_retryable


def test_throttling_is_transient_and_carries_the_servers_delay() -> None:
    failure = classify_failure(
        ReplicateError(status=429, detail="Request was throttled. Your rate limit resets in ~7s.")
    )
    assert failure.transient and failure.throttled and not failure.ambiguous
    assert failure.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient_and_may_have_taken_effect(status: int) -> None:
    failure = classify_failure(ReplicateError(status=status, detail="boom"))
    assert failure.transient and failure.ambiguous


@pytest.mark.parametrize("status", [401, 402, 404, 422])
def test_client_errors_are_permanent(status: int) -> None:
    failure = classify_failure(ReplicateError(status=status, detail="no"))
    assert not failure.transient and not failure.ambiguous


@pytest.mark.parametrize("status", [401, 402, 403])
def test_a_refused_token_billing_or_access_is_the_accounts_trouble(status: int) -> None:
    failure = classify_failure(ReplicateError(status=status, detail="no"))
    assert failure.account and not failure.service_trouble


@pytest.mark.parametrize("status", [404, 422, 429, 500])
def test_other_answers_are_not_the_accounts_trouble(status: int) -> None:
    assert not classify_failure(ReplicateError(status=status, detail="no")).account


@pytest.mark.parametrize(
    "exc",
    [
        ReplicateError(status=500, detail="x"),
        ReplicateError(status=503, detail="x"),
        httpx.ConnectError("no"),
    ],
)
def test_server_errors_and_missing_answers_are_service_trouble(exc: Exception) -> None:
    assert classify_failure(exc).service_trouble


@pytest.mark.parametrize("exc", [ReplicateError(status=429, detail="slow down"), ValueError("a bug")])
def test_throttling_and_our_own_errors_are_not_service_trouble(exc: Exception) -> None:
    assert not classify_failure(exc).service_trouble


def test_a_refused_connection_is_transient_and_certainly_did_nothing() -> None:
    failure = classify_failure(httpx.ConnectError("refused"))
    assert failure.transient and not failure.ambiguous


@pytest.mark.parametrize("exc", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")])
def test_a_lost_answer_is_transient_and_ambiguous(exc: Exception) -> None:
    failure = classify_failure(exc)
    assert failure.transient and failure.ambiguous


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ("CUDA out of memory. (E1001)", True),
        ("Timeout Starting Prediction (E6716)", True),
        ("NSFW content detected. Try running it again, or try a different prompt.", False),
        (None, False),
    ],
)
def test_only_capacity_and_cold_start_model_failures_are_worth_retrying(
    error: str | None, retryable: bool
) -> None:
    assert model_error_is_retryable(error) is retryable
