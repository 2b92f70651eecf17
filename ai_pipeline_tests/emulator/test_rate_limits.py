"""Replicate's rate limits: 429 with the real body and headers; the client retries GETs, never POSTs."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import replicate

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION
from ai_pipeline.dev.emulator.server import InProcessEmulator


def test_create_over_the_limit_is_429_and_not_retried_by_the_client(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(create_burst=1, create_rate_per_minute=6)
    client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "first"})

    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "second"})

    assert raised.value.status == 429
    assert re.fullmatch(
        r"Request was throttled\. Your rate limit resets in ~\d+s\.", raised.value.detail or ""
    )
    stats = emu.stats()
    assert stats["requests_by_kind"]["create"] == 2  # the client did not retry the POST
    assert stats["responses_429"] == {"create": 1}
    assert stats["predictions_created"] == 1


def test_429_carries_replicates_body_and_headers(emu: InProcessEmulator, http: httpx.Client) -> None:
    emu.configure(create_burst=1, create_rate_per_minute=6)
    body = {"version": IMAGE_MODEL_VERSION, "input": {"prompt": "x"}}
    http.post("/v1/predictions", json=body)

    response = http.post("/v1/predictions", json=body)

    assert response.status_code == 429
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 10
    assert response.json() == {
        "detail": f"Request was throttled. Your rate limit resets in ~{retry_after}s.",
        "status": 429,
        "retry_after": retry_after,
    }
    assert response.headers["ratelimit-remaining"] == "0"
    assert response.headers["ratelimit-reset"] == str(retry_after)


def test_get_over_the_limit_is_retried_by_the_client_after_retry_after(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "x"})
    emu.configure(other_burst=1, other_rate_per_minute=60)
    client.predictions.get(prediction.id)
    started = time.monotonic()

    assert client.predictions.get(prediction.id).id == prediction.id

    assert time.monotonic() - started >= 0.9  # honoured Retry-After: 1
    stats = emu.stats()
    assert stats["responses_429"] == {"get": 1}
    assert stats["requests_by_kind"]["get"] == 3


def test_creates_burst_then_refill_at_the_configured_rate(emu: InProcessEmulator, http: httpx.Client) -> None:
    emu.configure(create_burst=3, create_rate_per_minute=600)  # 10/s
    body = {"version": IMAGE_MODEL_VERSION, "input": {"prompt": "burst"}}

    burst = [http.post("/v1/predictions", json=body).status_code for _ in range(4)]
    time.sleep(0.15)
    refilled = http.post("/v1/predictions", json=body).status_code

    assert burst == [201, 201, 201, 429]
    assert refilled == 201


def test_every_api_answer_carries_rate_limit_headers(http: httpx.Client) -> None:
    response = http.get("/v1/predictions")

    assert response.status_code == 200
    assert int(response.headers["ratelimit-remaining"]) >= 0
    assert "ratelimit-reset" in response.headers


def test_rate_limits_can_be_switched_off(emu: InProcessEmulator, http: httpx.Client) -> None:
    emu.configure(rate_limits_enabled=False, create_burst=1, create_rate_per_minute=1)
    body = {"version": IMAGE_MODEL_VERSION, "input": {"prompt": "free"}}

    statuses = [http.post("/v1/predictions", json=body).status_code for _ in range(5)]

    assert statuses == [201] * 5
    assert emu.stats()["responses_429"] == {}
