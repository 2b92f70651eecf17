"""What one run does to the database, step by step: each method names the step and runs its transition
(`ai_pipeline/db/`) in a transaction of its own, or as one statement, on the run's small thread pool.

    claim ─▶ charge ─▶ record_prediction ─▶ succeed | fail | cancel | reject | hand_back

Every write is a compare-and-set on the request's row under this run's lease (the `owner`), so a run
that lost a request changes nothing: those methods answer False (or raise `NotHeld` for the charge).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from ai_pipeline.catalogue import ModelSpec, load_catalogue
from ai_pipeline.credits.ledger import Charge, InsufficientCredits, LedgerEntry
from ai_pipeline.db import claims, settling
from ai_pipeline.db.claims import ClaimedRequest
from ai_pipeline.db.rate_limits import BucketConfig, ensure_bucket
from ai_pipeline.db.transactions import TransactionRunner


class RunStore:
    """The database as one run (lease owner `owner`) sees it."""

    def __init__(self, engine: Engine, owner: str, *, lease_seconds: int, threads: int = 2) -> None:
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.transactions = TransactionRunner(engine, threads=threads)
        # For the shared create limiter: it runs its one-statement reservations through this.
        self.statement = self.transactions.statement

    # ------------------------------------------------------------------------------- the batch
    async def catalogue(self) -> dict[str, ModelSpec]:
        return await self.transactions(load_catalogue)

    async def ensure_bucket(self, bucket: BucketConfig) -> None:
        await self.transactions(ensure_bucket, bucket)

    async def release_expired_leases(self, batch_id: str) -> int:
        """Take back what dead runs of this batch held, without waiting for the sweeper."""
        return await self.transactions(claims.release_expired_leases, batch_id)

    async def claim(self, batch_id: str, limit: int) -> list[ClaimedRequest]:
        return await self.transactions(claims.claim_requests, batch_id, self.owner, limit, self.lease_seconds)

    async def renew_leases(self, request_ids: list[int]) -> set[int]:
        """Renew the leases still held; returns the ids still held."""
        return await self.transactions(claims.renew_leases, self.owner, request_ids, self.lease_seconds)

    async def give_back_unstarted(self, request_ids: list[int]) -> int:
        return await self.transactions(claims.release_many, request_ids, self.owner)

    # ----------------------------------------------------------------------------- one request
    async def charge(self, request: ClaimedRequest, charge: Charge) -> LedgerEntry | InsufficientCredits:
        """Debit once, note the intent to create a prediction, renew the lease (`NotHeld` if lost)."""
        return await self.transactions.statement(
            settling.charge_and_mark_intent, request.id, self.owner, charge, self.lease_seconds
        )

    async def still_held(self, request: ClaimedRequest) -> bool:
        """Whether this run still holds the request; if so its lease is renewed (before a retried create)."""
        return await self.transactions.statement(
            settling.extend_lease, request.id, self.owner, self.lease_seconds
        )

    async def record_prediction(self, request: ClaimedRequest, prediction_id: str) -> bool:
        return await self.transactions.statement(
            settling.record_prediction, request.id, self.owner, prediction_id
        )

    async def predictions_of_twins(self, request: ClaimedRequest) -> frozenset[str]:
        """Predictions other requests with this request's model and input already own."""
        return await self.transactions(
            settling.predictions_of_twins, request.id, request.model, request.input
        )

    async def succeed(
        self, request: ClaimedRequest, outputs: list[dict[str, Any]], predict_time: float | None
    ) -> bool:
        return await self.transactions.statement(
            settling.mark_succeeded, request.id, self.owner, outputs, predict_time
        )

    async def fail(
        self, request: ClaimedRequest, error: str, *, retryable: bool, predict_time: float | None = None
    ) -> bool:
        """→ failed, refunded in the same transaction."""
        return await self.transactions(
            settling.mark_failed,
            request.id,
            self.owner,
            error,
            retryable=retryable,
            predict_time=predict_time,
        )

    async def cancel(self, request: ClaimedRequest, reason: str) -> bool:
        """→ canceled, refunded in the same transaction."""
        return await self.transactions(settling.mark_canceled, request.id, self.owner, reason)

    async def reject(self, request: ClaimedRequest, reason: str) -> bool:
        """→ rejected, never charged."""
        return await self.transactions(settling.mark_rejected, request.id, self.owner, reason)

    async def hand_back(self, request: ClaimedRequest, reason: str, delay_seconds: float) -> bool:
        """→ pending, due again after `delay_seconds`, keeping its debit and prediction."""
        return await self.transactions.statement(
            settling.release, request.id, self.owner, reason, delay_seconds
        )

    def close(self) -> None:
        self.transactions.close()
