"""What the routes share, made once per process: the database (a small thread pool with its own
connections), the model catalogue (cached for a few seconds), presigned output URLs, the rate limiter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from ai_pipeline.catalogue import ModelSpec, load_catalogue
from ai_pipeline.db import api_keys
from ai_pipeline.db.engine import engine_for_url, resolve_database_url
from ai_pipeline.db.transactions import TransactionRunner
from ai_pipeline.service.limits import RateLimiter
from ai_pipeline.service.webhooks import WebhookPolicy
from ai_pipeline.settings import Settings
from ai_pipeline.storage.client import create_presigning_client
from ai_pipeline.storage.keys import parse_s3_uri

# A revoked key stops working within this many seconds: a key found is remembered that long, which
# saves a database round trip on nearly every request (unknown keys are never remembered).
KEY_CACHE_SECONDS = 1.0
# A catalogue change (a new model, a price) reaches the API within this many seconds; reading the
# catalogue for every submission would be a second query per request.
CATALOGUE_SECONDS = 5.0
DATABASE_THREADS = 8


class ServiceContext:
    """The service's shared parts, built from `Settings`."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        # Each database thread keeps two connections (a transaction's and one for single statements);
        # streamed results files and the catalogue read take more from the pool's overflow.
        self.engine = engine or engine_for_url(
            resolve_database_url(settings), pool_size=2 * DATABASE_THREADS + 4
        )
        self.db = TransactionRunner(self.engine, threads=DATABASE_THREADS)
        self.rate_limiter = RateLimiter(settings.api_rate_per_second, settings.api_rate_burst)
        self.webhook_policy = WebhookPolicy.from_settings(settings)
        self._catalogue: Mapping[str, ModelSpec] = {}
        self._catalogue_read_at = -CATALOGUE_SECONDS
        self._catalogue_lock = asyncio.Lock()
        self._s3: Any = None
        self._keys: dict[bytes, tuple[float, tuple[str, str]]] = {}

    async def key_owner(self, key_hash: bytes) -> tuple[str, str] | None:
        """(key id, application) of a live key with this hash (see `KEY_CACHE_SECONDS`)."""
        now = time.monotonic()
        cached = self._keys.get(key_hash)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        owner = await self.db.statement(api_keys.key_owner, key_hash)
        if owner is None:
            self._keys.pop(key_hash, None)
        else:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key_hash] = (now, owner)
        return owner

    async def catalogue(self) -> Mapping[str, ModelSpec]:
        """Every model (disabled ones too: the loader's rules tell 'disabled' from 'unknown')."""
        if time.monotonic() - self._catalogue_read_at < CATALOGUE_SECONDS:
            return self._catalogue
        async with self._catalogue_lock:
            if time.monotonic() - self._catalogue_read_at >= CATALOGUE_SECONDS:
                self._catalogue = await self.db(load_catalogue, enabled_only=False)
                self._catalogue_read_at = time.monotonic()
        return self._catalogue

    def presign(self, uri: str) -> tuple[str, datetime]:
        """A short-lived HTTPS (or the endpoint's scheme) URL a browser can open for an `s3://` URI."""
        if self._s3 is None:
            self._s3 = create_presigning_client(
                endpoint_url=self.settings.aws_endpoint_url, region_name=self.settings.aws_region
            )
        bucket, key = parse_s3_uri(uri)
        seconds = self.settings.api_presign_seconds
        url = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )
        return str(url), datetime.now(UTC) + timedelta(seconds=seconds)

    def close(self) -> None:
        self.db.close()
