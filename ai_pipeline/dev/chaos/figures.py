"""Counting what a chaos run left: outcomes, money, leases, and predictions billed twice."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.canonical import canonical_json


@dataclass(frozen=True)
class ChaosFigures:
    """The figure line of a chaos run."""

    requests: int  # loaded by the writer
    retries: int  # requests the sweeper added to retry retryable failures
    succeeded: int
    failed_refunded: int
    rejected: int
    canceled: int
    lost: int  # loaded requests missing, or not terminal at the end
    double_debits: int
    missing_refunds: int  # failed/canceled after a debit without a refund
    orphaned_leases: int  # still claimed at the end
    duplicate_predictions: int  # predictions created beyond one per request (emulator's counters)
    worker_kills: int
    backend_terminations: int
    calls: int
    failed_calls: int  # while faults were on: answered with a fault or a 429, or a failed prediction
    wall_seconds: float

    @property
    def duplicate_share(self) -> float:
        return self.duplicate_predictions / self.requests if self.requests else 0.0

    @property
    def failed_call_share(self) -> float:
        return self.failed_calls / self.calls if self.calls else 0.0

    def line(self) -> str:
        return (
            f"requests {self.requests:,} (+{self.retries:,} retries) | succeeded {self.succeeded:,}"
            f" | failed+refunded {self.failed_refunded:,} | rejected {self.rejected:,}"
            f" | canceled {self.canceled:,} | lost {self.lost} | double debits {self.double_debits}"
            f" | missing refunds {self.missing_refunds} | orphaned leases {self.orphaned_leases}"
            f" | duplicate billed predictions {self.duplicate_predictions} ({self.duplicate_share:.2%} of"
            f" requests) | worker kills {self.worker_kills} | backend terminations"
            f" {self.backend_terminations} | calls failing {self.failed_call_share:.0%}"
            f" | wall {self.wall_seconds:.0f} s"
        )


def count_outcomes(conn: Connection, batches: list[str], loaded: int) -> dict[str, int]:
    """Outcome, money and lease counts over the chaos batches."""
    row = conn.execute(
        text(
            """
            WITH r AS (
                SELECT r.*,
                       (SELECT count(*) FROM credit_ledger l WHERE l.request_id = r.id AND l.kind = 'debit')
                           AS debits,
                       (SELECT count(*) FROM credit_ledger l WHERE l.request_id = r.id AND l.kind = 'refund')
                           AS refunds
                FROM generation_requests r WHERE r.batch_id = ANY(:batches)
            )
            SELECT count(*) FILTER (WHERE retry_of IS NULL) AS originals,
                   count(*) FILTER (WHERE retry_of IS NOT NULL) AS retries,
                   count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                   count(*) FILTER (WHERE status = 'failed' AND debits = refunds) AS failed_refunded,
                   count(*) FILTER (WHERE status = 'rejected') AS rejected,
                   count(*) FILTER (WHERE status = 'canceled') AS canceled,
                   count(*) FILTER (WHERE status IN ('pending', 'processing')) AS open,
                   count(*) FILTER (WHERE debits > 1 OR refunds > 1) AS double_debits,
                   count(*) FILTER (WHERE status IN ('failed', 'canceled') AND debits > refunds)
                       AS missing_refunds,
                   count(*) FILTER (WHERE status = 'processing') AS orphaned_leases
            FROM r
            """
        ),
        {"batches": batches},
    ).one()
    return {
        "retries": row.retries,
        "succeeded": row.succeeded,
        "failed_refunded": row.failed_refunded,
        "rejected": row.rejected,
        "canceled": row.canceled,
        "lost": max(0, loaded - row.originals) + row.open,
        "double_debits": row.double_debits,
        "missing_refunds": row.missing_refunds,
        "orphaned_leases": row.orphaned_leases,
    }


def duplicate_predictions(conn: Connection, batches: list[str], per_input: list[dict[str, Any]]) -> int:
    """Predictions created beyond one per request, from the emulator's creates per distinct input.

    Every loaded input is unique, so an input's requests are the request and its retry; each may create
    one prediction (the ones that recorded an intent to). Anything above that was billed twice.
    """
    allowed: Counter[str] = Counter()
    rows = conn.execute(
        text(
            "SELECT input FROM generation_requests WHERE batch_id = ANY(:batches)"
            " AND (prediction_id IS NOT NULL OR prediction_intent_at IS NOT NULL)"
        ),
        {"batches": batches},
    )
    for (model_input,) in rows:
        allowed[canonical_json(model_input)] += 1
    return sum(max(0, int(entry["creates"]) - allowed[canonical_json(entry["input"])]) for entry in per_input)


def failed_calls(stats: dict[str, Any]) -> tuple[int, int]:
    """(calls, failed calls) from the emulator's counters: every API call and download; failed are the
    injected errors and dropped connections, failed predictions, failed downloads and 429s."""
    not_failures = {"cold_start", "download_slow"}
    faults = sum(int(n) for fault, n in stats["faults_sent"].items() if fault not in not_failures)
    throttled = sum(int(n) for n in stats["responses_429"].values())
    return int(stats["requests"]), faults + throttled
