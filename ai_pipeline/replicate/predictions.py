"""Prediction calls through the official `replicate` client (async), as the catalogue says to make them."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timedelta
from typing import Any

import httpx
import replicate
from replicate.prediction import Prediction

from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.http_transport import pooled_async_transport
from ai_pipeline.replicate.errors import classify_failure

TERMINAL_PREDICTION_STATUSES = frozenset({"succeeded", "failed", "canceled"})


def make_client(api_token: str | None, base_url: str, *, max_connections: int = 200) -> replicate.Client:
    """A client for `base_url` (the host root; the client's paths start with /v1)."""
    return replicate.Client(
        api_token=api_token,
        base_url=base_url,
        # Connect quickly or fail; allow a full `Prefer: wait=60` answer plus slack on reads.
        timeout=httpx.Timeout(connect=5.0, read=75.0, write=30.0, pool=60.0),
        transport=pooled_async_transport(max_connections),
    )


async def create_prediction(
    client: replicate.Client, spec: ModelSpec, model_input: dict[str, Any], *, wait_seconds: int | None
) -> Prediction:
    """Create a prediction by deployment, version or official model (in that order of preference).

    With `wait_seconds`, Replicate holds the answer until the prediction ends or the wait runs out.
    """
    wait: int | bool = wait_seconds if wait_seconds else False
    if spec.replicate_deployment:
        return await client.deployments.predictions.async_create(
            spec.replicate_deployment, input=model_input, wait=wait
        )
    if spec.replicate_version:
        return await client.predictions.async_create(
            version=spec.replicate_version, input=model_input, wait=wait
        )
    return await client.models.predictions.async_create(
        model=spec.replicate_model, input=model_input, wait=wait
    )


async def get_prediction(client: replicate.Client, prediction_id: str) -> Prediction:
    """The prediction's current state (the client retries 429/503/504 on GETs itself)."""
    return await client.predictions.async_get(prediction_id)


async def cancel_prediction(client: replicate.Client, prediction_id: str) -> Prediction:
    """Ask Replicate to stop a prediction (it is billed for the time it ran)."""
    return await client.predictions.async_cancel(prediction_id)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _matches(prediction: Prediction, spec: ModelSpec, canonical_input: str) -> bool:
    if prediction.input is None or _canonical(prediction.input) != canonical_input:
        return False
    if spec.replicate_version and not spec.replicate_deployment:
        return prediction.version == spec.replicate_version
    return True


async def find_created_prediction(
    client: replicate.Client,
    spec: ModelSpec,
    model_input: dict[str, Any],
    *,
    created_after: datetime,
    exclude_ids: frozenset[str] = frozenset(),
    max_pages: int = 50,
) -> Prediction | None:
    """Find a prediction this request may have created although the answer never reached us.

    Pages through the account's predictions (newest first) back to `created_after`, and returns the
    oldest one with this model and exactly this input whose id is not in `exclude_ids`.
    """
    canonical_input = _canonical(model_input)
    horizon = created_after - timedelta(seconds=5)  # clocks differ a little
    cursor: str | ellipsis = ...  # noqa: F821
    found: Prediction | None = None
    for _ in range(max_pages):
        page = await _list_page(client, cursor)
        reached_horizon = False
        for prediction in page.results:
            created = _parse_time(prediction.created_at)
            if created is not None and created < horizon:
                reached_horizon = True
                break
            if prediction.id not in exclude_ids and _matches(prediction, spec, canonical_input):
                found = prediction  # keep going: the oldest match is the first create
        if reached_horizon or not page.next:
            break
        cursor = page.next
    return found


async def _list_page(client: replicate.Client, cursor: str | ellipsis, attempts: int = 5) -> Any:  # noqa: F821
    """One page of the account's predictions. A read, so transient trouble is tried again right here:
    retrying the whole listing instead would rarely get through many pages while calls fail, and a
    resume that cannot look back is a resume that waits, until the prediction it looks for is deleted.
    """
    for attempt in range(attempts):
        try:
            return await client.predictions.async_list(cursor)
        except Exception as exc:
            if not classify_failure(exc).transient or attempt == attempts - 1:
                raise
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
