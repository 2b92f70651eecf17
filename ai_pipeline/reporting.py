"""Batch summaries as text for people (`ai-pipeline status`, the demo)."""

from __future__ import annotations

from ai_pipeline.db.lifecycle import RequestStatus
from ai_pipeline.db.summaries import BatchSummary


def format_summaries(summaries: list[BatchSummary]) -> str:
    """A plain-text table of batch summaries."""
    statuses = [s.value for s in RequestStatus]
    header = ["batch", *statuses, "debited", "refunded", "predict s", "cost $", "p50 s", "p95 s"]
    rows = [header]
    for s in summaries:
        rows.append(
            [
                s.batch_id,
                *(str(s.counts.get(status, 0)) for status in statuses),
                str(s.credits_debited),
                str(s.credits_refunded),
                f"{s.predict_time_seconds:.1f}",
                f"{s.estimated_cost_usd:.4f}",
                "-" if s.latency_p50_seconds is None else f"{s.latency_p50_seconds:.2f}",
                "-" if s.latency_p95_seconds is None else f"{s.latency_p95_seconds:.2f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(lines)
