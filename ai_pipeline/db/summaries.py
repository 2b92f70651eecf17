"""Per-batch summaries: counts per status, credits, Replicate time and cost, latency percentiles.

Used by `ai-pipeline status` (`reporting.format_summaries`), the batch asset's metadata in the Dagster
UI and the demo's summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.lifecycle import RequestStatus

_SUMMARY_SQL = text(
    """
    WITH r AS (
        SELECT r.batch_id, r.status, r.credits_charged, r.predict_time,
               EXTRACT(EPOCH FROM (r.completed_at - r.created_at)) AS latency,
               r.predict_time * COALESCE(m.usd_per_second, 0) AS cost
        FROM generation_requests r LEFT JOIN models m ON m.name = r.model
        WHERE (CAST(:batch AS text) IS NULL OR r.batch_id = :batch) AND r.batch_id IS NOT NULL
    )
    SELECT batch_id, status, count(*) AS n,
           COALESCE(sum(predict_time), 0) AS predict_time,
           COALESCE(sum(cost), 0) AS cost,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) AS p95
    FROM r GROUP BY batch_id, status ORDER BY batch_id, status
    """
)

_CREDITS_SQL = text(
    """
    SELECT r.batch_id, l.kind, COALESCE(sum(abs(l.delta)), 0) AS credits
    FROM credit_ledger l JOIN generation_requests r ON r.id = l.request_id
    WHERE (CAST(:batch AS text) IS NULL OR r.batch_id = :batch)
    GROUP BY r.batch_id, l.kind
    """
)


@dataclass
class BatchSummary:
    """What happened to one batch so far."""

    batch_id: str
    counts: dict[str, int] = field(default_factory=dict)
    credits_debited: int = 0
    credits_refunded: int = 0
    predict_time_seconds: float = 0.0
    estimated_cost_usd: float = 0.0
    latency_p50_seconds: float | None = None
    latency_p95_seconds: float | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def open(self) -> int:
        """Requests not yet terminal."""
        return sum(n for s, n in self.counts.items() if not RequestStatus(s).is_terminal)

    @property
    def credits_charged(self) -> int:
        """Credits kept: debited minus refunded."""
        return self.credits_debited - self.credits_refunded

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(total=self.total, open=self.open, credits_charged=self.credits_charged)
        return data


def batch_summaries(conn: Connection, batch_id: str | None = None) -> list[BatchSummary]:
    """Summaries of every batch (or of one)."""
    summaries: dict[str, BatchSummary] = {}
    for row in conn.execute(_SUMMARY_SQL, {"batch": batch_id}):
        summary = summaries.setdefault(row.batch_id, BatchSummary(row.batch_id))
        summary.counts[row.status] = int(row.n)
        summary.predict_time_seconds += float(row.predict_time)
        summary.estimated_cost_usd += float(row.cost)
        if row.status == RequestStatus.SUCCEEDED and row.p50 is not None:
            summary.latency_p50_seconds = round(float(row.p50), 3)
            summary.latency_p95_seconds = round(float(row.p95), 3)
    for row in conn.execute(_CREDITS_SQL, {"batch": batch_id}):
        summary = summaries.setdefault(row.batch_id, BatchSummary(row.batch_id))
        if row.kind == "debit":
            summary.credits_debited = int(row.credits)
        elif row.kind == "refund":
            summary.credits_refunded = int(row.credits)
    for summary in summaries.values():
        summary.predict_time_seconds = round(summary.predict_time_seconds, 3)
        summary.estimated_cost_usd = round(summary.estimated_cost_usd, 6)
    return sorted(summaries.values(), key=lambda s: s.batch_id)
