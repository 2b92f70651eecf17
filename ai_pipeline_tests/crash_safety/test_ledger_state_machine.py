"""A seeded simulation of the request lifecycle under crashes, on real Postgres.

Hypothesis interleaves, in any order, what workers do (claim, resume, debit + intent, create at Replicate
with or without losing the answer, reconcile, settle, hand back), what goes wrong (a worker crashes: its
memory is gone and its leases run out), what users do (cancel), what Replicate does (a prediction
succeeds, fails) and what the sweeper does, over a handful of requests of one user short of credits.
After every step: the ledger invariants hold and no request has more than one prediction. At the end
everything is drained and every request must be terminal with its money right.

The workers follow `BatchRunner`'s protocol through the real transitions (`db.requests`), the real
ledger and the real sweeper; Replicate is a small fake that knows which request created each prediction.
As in the runner, a worker creates only while it holds the request: the charge extends the lease and
the create follows at once (a retried create checks the lease again first).
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Connection, Engine, text

from ai_pipeline.canonical import canonical_json
from ai_pipeline.credits import Charge, InsufficientCredits, grant
from ai_pipeline.db import cancels, claims, settling
from ai_pipeline.db.claims import ClaimedRequest
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.db.settling import NotHeld
from ai_pipeline.processing.sweeper import SweepPolicy, sweep
from ai_pipeline_tests.crash_safety.crashes import expire_leases
from ai_pipeline_tests.support.factories import ensure_test_model, insert_request

MAX_ATTEMPTS = 4
REQUESTS = 4
CREDITS = 3  # fewer than the requests: some are rejected, uncharged
WORKERS = ("w1", "w2")
FAKE_OUTPUT = {"sha256": "0" * 64, "size": 1, "content_type": "image/png"}


@dataclass
class FakePrediction:
    id: str
    input_key: str
    created_for: int  # the request whose create made it: the ground truth for "one per request"
    status: str = "processing"


class FakeReplicate:
    """Predictions in creation order; lists by input like `find_created_prediction`; cancels."""

    def __init__(self, prefix: str) -> None:
        self.predictions: dict[str, FakePrediction] = {}
        self._ids = (f"{prefix}-{n}" for n in itertools.count())

    def create(self, request_id: int, model_input: dict[str, Any]) -> str:
        prediction = FakePrediction(next(self._ids), canonical_json(model_input), request_id)
        self.predictions[prediction.id] = prediction
        return prediction.id

    def find_unrecorded(self, model_input: dict[str, Any], owned: set[str]) -> str | None:
        key = canonical_json(model_input)
        return next(
            (p.id for p in self.predictions.values() if p.input_key == key and p.id not in owned), None
        )

    def cancel(self, prediction_id: str) -> None:
        prediction = self.predictions.get(prediction_id)
        if prediction is not None and prediction.status == "processing":
            prediction.status = "canceled"

    def running(self) -> list[str]:
        return [p.id for p in self.predictions.values() if p.status == "processing"]


@dataclass
class Held:
    """What a worker knows about a request it claimed (lost when it crashes)."""

    request: ClaimedRequest
    phase: str = "claimed"  # claimed → ready → charged → (answer_lost →) created → settled
    prediction_id: str | None = None


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.generation = 0
        self.held: dict[int, Held] = {}

    @property
    def owner(self) -> str:
        return f"{self.name}:{self.generation}"


class RequestsUnderCrashes(RuleBasedStateMachine):
    engine: ClassVar[Engine]

    def __init__(self) -> None:
        super().__init__()
        unique = uuid.uuid4().hex[:10]
        self.batch, self.user = f"sm-{unique}", f"sm-{unique}"
        with self.engine.begin() as conn:
            ensure_test_model(conn)
            grant(conn, self.user, CREDITS)
            for i in range(REQUESTS):
                insert_request(conn, self.user, batch_id=self.batch, input={"prompt": f"{unique} {i}"})
        self.replicate = FakeReplicate(unique)
        self.workers = {name: Worker(name) for name in WORKERS}

    # ------------------------------------------------------------------------------- helpers
    def _tx(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    def _pick(self, worker: Worker, index: int) -> Held | None:
        held = [h for _, h in sorted(worker.held.items())]
        return held[index % len(held)] if held else None

    def _row(self, request_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                text("SELECT * FROM generation_requests WHERE id = :id"), {"id": request_id}
            ).one()

    def _owned_predictions(self, conn: Connection, request_id: int) -> set[str]:
        return set(
            conn.execute(
                text(
                    "SELECT prediction_id FROM generation_requests WHERE prediction_id IS NOT NULL"
                    " AND id <> :id"
                ),
                {"id": request_id},
            ).scalars()
        )

    def _drop(self, worker: Worker, held: Held) -> None:
        worker.held.pop(held.request.id, None)

    def _still_holds(self, worker: Worker, request_id: int) -> bool:
        row = self._row(request_id)
        return row.status == "processing" and row.lease_owner == worker.owner

    # ------------------------------------------------------------------------------- workers
    @rule(name=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, name: str, limit: int) -> None:
        worker = self.workers[name]
        for request in self._tx(claims.claim_requests, self.batch, worker.owner, limit, 600):
            worker.held[request.id] = Held(request)

    @rule(name=st.sampled_from(WORKERS), index=st.integers(0, 5), answer_lost=st.booleans())
    def work(self, name: str, index: int, answer_lost: bool) -> None:
        """A worker takes one of its requests one step further (one with nothing claims first)."""
        worker = self.workers[name]
        if not worker.held:
            self.claim(name, 1 + index % 3)
        if held := self._pick(worker, index):
            self._advance(worker, held, answer_lost=answer_lost, retryable=answer_lost)

    @rule(name=st.sampled_from(WORKERS))
    def work_on_everything(self, name: str) -> None:
        """A worker takes each of its requests one step further, without trouble."""
        worker = self.workers[name]
        if not worker.held:
            self.claim(name, 2)
        for held in list(worker.held.values()):
            if held.request.id in worker.held:
                self._advance(worker, held, answer_lost=False, retryable=False)

    @rule(name=st.sampled_from(WORKERS), index=st.integers(0, 5))
    def hand_back(self, name: str, index: int) -> None:
        worker = self.workers[name]
        if held := self._pick(worker, index):
            self._hand_back(worker, held)

    # ------------------------------------------------------------ one step of one request (BatchRunner's)
    def _advance(self, worker: Worker, held: Held, *, answer_lost: bool, retryable: bool) -> None:
        if held.phase == "claimed":
            self._resume(worker, held)
        elif held.phase == "ready":
            self._charge(worker, held)
        elif held.phase == "charged":
            self._create(worker, held, answer_lost)
        elif held.phase == "answer_lost":
            self._reconcile(worker, held)  # after an ambiguous failure the runner looks before retrying
        else:
            self._settle(worker, held, retryable)

    def _resume(self, worker: Worker, held: Held) -> None:
        """What a run does first with a claimed request: cancel it, give up, or find its prediction."""
        request = held.request
        if request.cancel_requested_at is not None:
            if request.prediction_id:
                self.replicate.cancel(request.prediction_id)
            self._tx(settling.mark_canceled, request.id, worker.owner, "canceled on request")
            self._drop(worker, held)
        elif request.attempts > MAX_ATTEMPTS:
            self._tx(settling.mark_failed, request.id, worker.owner, "gave up", retryable=True)
            self._drop(worker, held)
        elif request.prediction_id:
            held.phase, held.prediction_id = "created", request.prediction_id
        elif request.prediction_intent_at is not None:
            self._reconcile(worker, held)
        else:
            held.phase = "ready"

    def _reconcile(self, worker: Worker, held: Held) -> None:
        """Find the prediction a create whose answer was lost made: by input, not owned by another request."""
        with self.engine.begin() as conn:
            owned = self._owned_predictions(conn, held.request.id)
        found = self.replicate.find_unrecorded(held.request.input, owned)
        if found is None:
            held.phase = "ready"
        elif self._tx(settling.record_prediction, held.request.id, worker.owner, found):
            held.phase, held.prediction_id = "created", found
        else:
            self._drop(worker, held)

    def _charge(self, worker: Worker, held: Held) -> None:
        request = held.request
        try:
            result = self._tx(
                settling.charge_and_mark_intent,
                request.id,
                worker.owner,
                Charge(request.id, request.user_id, "image_generation", 1),
                600,
            )
        except NotHeld:
            self._drop(worker, held)
            return
        if isinstance(result, InsufficientCredits):
            self._tx(settling.mark_rejected, request.id, worker.owner, result.reason)
            self._drop(worker, held)
        else:
            held.phase = "charged"

    def _create(self, worker: Worker, held: Held, answer_lost: bool) -> None:
        if not self._still_holds(worker, held.request.id):
            return  # the runner's charge extended the lease; a retried create checks it first
        prediction_id = self.replicate.create(held.request.id, held.request.input)
        if answer_lost:
            held.phase = "answer_lost"  # the create happened; its answer never arrived
        elif self._tx(settling.record_prediction, held.request.id, worker.owner, prediction_id):
            held.phase, held.prediction_id = "created", prediction_id
        else:
            self._drop(worker, held)

    def _settle(self, worker: Worker, held: Held, retryable: bool) -> None:
        assert held.prediction_id is not None
        status = self.replicate.predictions[held.prediction_id].status
        request_id, owner = held.request.id, worker.owner
        if status == "succeeded":
            output = {"uri": f"s3://fake/{held.prediction_id}.png", **FAKE_OUTPUT}
            self._tx(settling.mark_succeeded, request_id, owner, [output], 1.0)
        elif status == "failed":
            self._tx(settling.mark_failed, request_id, owner, "model failed", retryable=retryable)
        elif status == "canceled":
            self._tx(settling.mark_canceled, request_id, owner, "prediction was canceled at Replicate")
        else:
            return  # still running: poll again later
        self._drop(worker, held)

    def _hand_back(self, worker: Worker, held: Held) -> None:
        """Transient trouble: back to pending (keeping debit and prediction), or out of attempts."""
        if held.request.attempts >= MAX_ATTEMPTS:
            self._tx(settling.mark_failed, held.request.id, worker.owner, "gave up", retryable=True)
        else:
            self._tx(settling.release, held.request.id, worker.owner, "Replicate 503", 0.0)
        self._drop(worker, held)

    # ------------------------------------------------------- crashes, Replicate, users, the sweeper
    @rule(name=st.sampled_from(WORKERS))
    def crash(self, name: str) -> None:
        """SIGKILL: the worker's memory is gone and nobody renews its leases; a new run takes its place."""
        worker = self.workers[name]
        expire_leases(self.engine, worker.owner)
        worker.held.clear()
        worker.generation += 1

    @rule(index=st.integers(0, 20), outcome=st.sampled_from(["succeeded", "succeeded", "failed"]))
    def prediction_ends(self, index: int, outcome: str) -> None:
        running = self.replicate.running()
        if running:
            self.replicate.predictions[running[index % len(running)]].status = outcome

    @rule(index=st.integers(0, 20))
    def user_cancels(self, index: int) -> None:
        with self.engine.connect() as conn:
            ids = list(
                conn.execute(
                    text("SELECT id FROM generation_requests WHERE batch_id = :b ORDER BY id"),
                    {"b": self.batch},
                ).scalars()
            )
        self._tx(cancels.cancel_requests, request_id=ids[index % len(ids)])

    @rule()
    def sweeper_runs(self) -> None:
        sweep(
            self.engine,
            self.replicate.cancel,
            SweepPolicy(max_attempts=MAX_ATTEMPTS, retry_backoff_seconds=0),
        )

    # ---------------------------------------------------------------------------- invariants
    @invariant()
    def money_and_leases_are_consistent(self) -> None:
        with self.engine.connect() as conn:
            report = check_invariants(conn, batch_id=self.batch, expect_all_terminal=False)
        # Leases of a crashed worker stay expired until the sweeper (or a claim) comes: allowed meanwhile.
        problems = {k: v for k, v in report.violations.items() if v and not k.startswith("1 ")}
        assert not problems, problems

    @invariant()
    def no_request_has_two_predictions(self) -> None:
        per_request = Counter(p.created_for for p in self.replicate.predictions.values())
        assert all(count <= 1 for count in per_request.values()), per_request

    def teardown(self) -> None:
        """Drain: crashed leases are swept, predictions end, a fresh worker takes every request to its end."""
        for name in WORKERS:
            self.crash(name)
        worker = self.workers[WORKERS[0]]
        for _ in range(20):
            self.sweeper_runs()
            self.claim(worker.name, 100)
            if not worker.held:
                break
            for held in list(worker.held.values()):
                for _step in range(6):
                    if held.request.id not in worker.held:
                        break
                    for prediction_id in self.replicate.running():
                        self.replicate.predictions[prediction_id].status = "succeeded"
                    self._advance(worker, held, answer_lost=False, retryable=False)
        with self.engine.connect() as conn:
            report = check_invariants(conn, batch_id=self.batch)
        assert report.ok, report.summary()
        self.no_request_has_two_predictions()


def test_any_interleaving_of_crashes_cancels_and_sweeps_keeps_the_ledger_right(engine: Engine) -> None:
    RequestsUnderCrashes.engine = engine
    run_state_machine_as_test(
        RequestsUnderCrashes,
        settings=settings(
            derandomize=True, database=None, max_examples=200, stateful_step_count=40, deadline=None
        ),
    )
