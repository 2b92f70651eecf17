"""What crashed runs leave behind, made on purpose: the steps a run takes, and then it stops.

`DeadRun` takes the very steps `BatchRunner` takes (claim under a lease, debit + intent, create at
Replicate, store the id) and can stop between any two of them; `die()` lets its leases run out, as a
SIGKILLed worker's do. `failed_ago` ends a request failed (refunded) as a run would have, a while ago.
`start_worker` starts a real run worker in a process of its own (worker.py), to be SIGKILLed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import replicate
from sqlalchemy import Engine, text

from ai_pipeline.canonical import canonical_json
from ai_pipeline.catalogue import load_catalogue
from ai_pipeline.credits import Charge, LedgerEntry
from ai_pipeline.db import claims, settling
from ai_pipeline.db.claims import ClaimedRequest
from ai_pipeline.processing.sweeper import SweepPolicy, SweepReport, replicate_canceler, sweep
from ai_pipeline_tests.support.databases import REPO_ROOT
from ai_pipeline_tests.support.pipeline import PipelineHarness
from ai_pipeline_tests.support.settings import TEST_TOKEN


@dataclass
class DeadRun:
    engine: Engine
    client: replicate.Client | None  # None: a run that never gets as far as creating a prediction
    owner: str

    def claim(self, batch_id: str, limit: int = 100, lease_seconds: int = 60) -> list[ClaimedRequest]:
        with self.engine.begin() as conn:
            return claims.claim_requests(conn, batch_id, self.owner, limit, lease_seconds)

    def charge(self, request: ClaimedRequest) -> None:
        with self.engine.begin() as conn:
            spec = load_catalogue(conn)[request.model]
            charge = Charge(request.id, request.user_id, spec.credit_type, spec.credits_per_run)
            entry = settling.charge_and_mark_intent(conn, request.id, self.owner, charge, 60)
        assert isinstance(entry, LedgerEntry)

    def create(self, request: ClaimedRequest) -> str:
        """Create the request's prediction at Replicate (by version, as the catalogue says)."""
        assert self.client is not None, "this run has no Replicate client"
        with self.engine.connect() as conn:
            spec = load_catalogue(conn)[request.model]
        return self.client.predictions.create(version=spec.replicate_version, input=request.input).id

    def record(self, request: ClaimedRequest, prediction_id: str) -> None:
        with self.engine.begin() as conn:
            assert settling.record_prediction(conn, request.id, self.owner, prediction_id)

    def die(self) -> None:
        """The worker is gone: nobody renews its leases, and they run out."""
        expire_leases(self.engine, self.owner)

    def die_after(
        self, batch_id: str, step: Literal["charge", "create", "record"]
    ) -> tuple[ClaimedRequest, str | None]:
        """Claim the batch's one request, take the run's steps up to and including `step`, then die.

        Returns the request and the id of the prediction it created (None when it died before creating).
        """
        (request,) = self.claim(batch_id)
        self.charge(request)
        prediction_id = None
        if step != "charge":
            prediction_id = self.create(request)
            if step == "record":
                self.record(request, prediction_id)
        self.die()
        return request, prediction_id


def expire_leases(engine: Engine, owner: str) -> None:
    """Make every lease `owner` holds run out now, as a SIGKILLed worker's do."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE generation_requests SET lease_expires_at = now() - interval '1 second'"
                " WHERE lease_owner = :owner AND status = 'processing'"
            ),
            {"owner": owner},
        )


def failed_ago(engine: Engine, request_id: int, *, retryable: bool, seconds_ago: float) -> None:
    """End a request `failed` (refunded) as a run would have, `seconds_ago`."""
    with engine.begin() as conn:
        assert settling.mark_failed(
            conn, request_id, None, "model failed: CUDA out of memory", retryable=retryable
        )
        conn.execute(
            text(
                "UPDATE generation_requests SET completed_at = now() - make_interval(secs => :ago)"
                " WHERE id = :id"
            ),
            {"ago": seconds_ago, "id": request_id},
        )


def sweep_once(harness: PipelineHarness, **policy: Any) -> SweepReport:
    """One sweep, canceling at the harness's emulator."""
    canceler = replicate_canceler(TEST_TOKEN, harness.emulator.base_url)
    return sweep(harness.engine, canceler, SweepPolicy(**policy))


def request_row(engine: Engine, request_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT r.*, (SELECT count(*) FROM credit_ledger l WHERE l.request_id = r.id"
                " AND l.kind = 'debit') AS debits, (SELECT count(*) FROM credit_ledger l"
                " WHERE l.request_id = r.id AND l.kind = 'refund') AS refunds"
                " FROM generation_requests r WHERE r.id = :id"
            ),
            {"id": request_id},
        ).one()


def creates_of(harness: PipelineHarness, model_input: dict[str, Any]) -> int:
    """How many predictions Replicate (the emulator) created with exactly this input."""
    wanted = canonical_json(model_input)
    for entry in harness.emulator.stats(per_input=True)["creates_by_input"]["per_input"]:
        if canonical_json(entry["input"]) == wanted:
            return int(entry["creates"])
    return 0


def batch_statuses(engine: Engine, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text("SELECT status, count(*) FROM generation_requests WHERE batch_id = :b GROUP BY status"),
                {"b": batch_id},
            ).all()
        )


def start_worker(
    harness: PipelineHarness, batch: str, owner: str, *, lease_seconds: int, **options: Any
) -> subprocess.Popen[bytes]:
    """A worker process on `batch` against the harness's database, S3 endpoint and emulator; `options`
    as `main` reads them (`max_in_flight`, `run_max_in_flight`, `sync_wait_seconds`)."""
    emulator = urlsplit(harness.emulator.base_url)
    config = {
        "database_url": harness.database_url,
        "batch": batch,
        "owner": owner,
        "bucket": harness.bucket,
        "s3_endpoint_url": harness.s3_endpoint_url,
        "replicate_base_url": harness.emulator.base_url,
        "output_host": f"{emulator.hostname}:{emulator.port}",
        "token": TEST_TOKEN,
        "lease_seconds": lease_seconds,
        **options,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ai_pipeline_tests.crash_safety.worker", json.dumps(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
