"""Counters tests and benchmarks read from ``GET /_emulator/stats`` to see what the emulator did."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ai_pipeline.canonical import canonical_json


@dataclass
class Stats:
    """Everything counted since start or the last reset."""

    requests: int = 0
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[int] = field(default_factory=Counter)
    predictions_created: int = 0
    creates_by_model: Counter[str] = field(default_factory=Counter)
    input_counts: Counter[str] = field(default_factory=Counter)
    duplicate_creates: int = 0
    responses_429: Counter[str] = field(default_factory=Counter)
    responses_401: int = 0
    faults_sent: Counter[str] = field(default_factory=Counter)
    faults_by_endpoint: dict[str, Counter[str]] = field(default_factory=dict)
    model_failures: Counter[str] = field(default_factory=Counter)
    cold_starts: int = 0
    cancels: int = 0
    webhook_attempts: int = 0
    webhooks_delivered: int = 0
    webhook_failures: int = 0
    webhooks_by_event: Counter[str] = field(default_factory=Counter)
    downloads: int = 0
    downloads_by_status: Counter[int] = field(default_factory=Counter)

    def record_create(self, model: str, given_input: Any) -> None:
        """Count a prediction create and whether its input was seen before."""
        self.predictions_created += 1
        self.creates_by_model[model] += 1
        key = canonical_json(given_input)
        if key in self.input_counts:
            self.duplicate_creates += 1
        self.input_counts[key] += 1

    def record_fault(self, endpoint_kind: str, fault: str) -> None:
        """Count an injected fault (``http_503``, ``drop``, ``download_slow``...) against an endpoint kind."""
        self.faults_sent[fault] += 1
        self.faults_by_endpoint.setdefault(endpoint_kind, Counter())[fault] += 1

    def snapshot(self, predictions_by_status: dict[str, int], per_input: bool = False) -> dict[str, Any]:
        """The counters as JSON-compatible data; ``per_input`` adds the count of every distinct input."""
        data: dict[str, Any] = {
            "requests": self.requests,
            "requests_by_kind": dict(self.requests_by_kind),
            "responses_by_status": {str(k): v for k, v in sorted(self.responses_by_status.items())},
            "predictions_created": self.predictions_created,
            "creates_by_model": dict(self.creates_by_model),
            "creates_by_input": {
                "distinct_inputs": len(self.input_counts),
                "duplicate_creates": self.duplicate_creates,
                "max_creates_per_input": max(self.input_counts.values(), default=0),
            },
            "predictions_by_status": predictions_by_status,
            "responses_429": dict(self.responses_429),
            "responses_401": self.responses_401,
            "faults_sent": dict(self.faults_sent),
            "faults_by_endpoint": {kind: dict(counts) for kind, counts in self.faults_by_endpoint.items()},
            "model_failures": dict(self.model_failures),
            "cold_starts": self.cold_starts,
            "cancels": self.cancels,
            "webhook_attempts": self.webhook_attempts,
            "webhooks_delivered": self.webhooks_delivered,
            "webhook_failures": self.webhook_failures,
            "webhooks_by_event": dict(self.webhooks_by_event),
            "downloads": self.downloads,
            "downloads_by_status": {str(k): v for k, v in sorted(self.downloads_by_status.items())},
        }
        if per_input:
            data["creates_by_input"]["per_input"] = [
                {"input": json.loads(key), "creates": count} for key, count in self.input_counts.most_common()
            ]
        return data
