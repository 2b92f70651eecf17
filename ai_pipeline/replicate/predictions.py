"""Prediction calls through the official `replicate` client (async), as the catalogue says to make them."""

from __future__ import annotations

import weakref
from typing import Any

import httpx
from replicate.client import Client
from replicate.prediction import Prediction

from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.http_transport import AiohttpTransport, pooled_async_transport

TERMINAL_PREDICTION_STATUSES = frozenset({"succeeded", "failed", "canceled"})


# The transport under each client made here, so that `close_client` can close its connections.
_transports: weakref.WeakKeyDictionary[Client, AiohttpTransport] = weakref.WeakKeyDictionary()


def make_client(api_token: str | None, base_url: str, *, max_connections: int = 200) -> Client:
    """A client for `base_url` (the host root; the client's paths start with /v1), for async calls."""
    transport = pooled_async_transport(max_connections)
    client = Client(
        api_token=api_token,
        base_url=base_url,
        # Connect quickly or fail; allow a full `Prefer: wait=60` answer plus slack on reads.
        timeout=httpx.Timeout(connect=5.0, read=75.0, write=30.0, pool=60.0),
        transport=transport,
    )
    _transports[client] = transport
    return client


async def close_client(client: Client) -> None:
    """Close the connections a client from `make_client` holds in the running event loop (it opens
    new ones if used again)."""
    transport = _transports.get(client)
    if transport is not None:
        await transport.aclose()


async def create_prediction(
    client: Client, spec: ModelSpec, model_input: dict[str, Any], *, wait_seconds: int | None
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
    assert spec.replicate_model, "a ModelSpec names a deployment, a version or a model"
    return await client.models.predictions.async_create(
        model=spec.replicate_model, input=model_input, wait=wait
    )


async def get_prediction(client: Client, prediction_id: str) -> Prediction:
    """The prediction's current state (the client retries 429/503/504 on GETs itself)."""
    return await client.predictions.async_get(prediction_id)


async def cancel_prediction(client: Client, prediction_id: str) -> Prediction:
    """Ask Replicate to stop a prediction (it is billed for the time it ran)."""
    return await client.predictions.async_cancel(prediction_id)
