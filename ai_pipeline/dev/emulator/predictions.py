"""Predictions: their lifecycle, their JSON, and the store that lists them page by page.

A prediction's whole life (when it starts, when it ends, how it ends) is planned when it is created;
its status at any moment is computed from the clock. Nothing runs per prediction in the background,
which keeps thousands of predictions in flight cheap. Only a cancel changes the plan.

    starting ──▶ processing ──▶ succeeded | failed
        │             │
        └─────────────┴──▶ canceled          (failed also directly from starting: E6716)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ai_pipeline.dev.emulator.faults import ModelFailure
from ai_pipeline.dev.emulator.models import BuiltinModel

STARTING = "starting"
PROCESSING = "processing"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELED = "canceled"
STATUSES: tuple[str, ...] = (STARTING, PROCESSING, SUCCEEDED, FAILED, CANCELED)
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELED})

WEBHOOK_EVENTS = frozenset({"start", "output", "logs", "completed"})
DEFAULT_WEBHOOK_EVENTS = frozenset({"output", "completed"})

_PROGRESS_BAR_WIDTH = 10


def new_prediction_id(rng: random.Random) -> str:
    """A 26-character lowercase base32 id, shaped like Replicate's (e.g. ``gm3qorzdhgbfurvjtvhg6dckhu``)."""
    return base64.b32encode(rng.randbytes(16)).decode().rstrip("=").lower()


def isoformat(timestamp: float) -> str:
    """Replicate's timestamp format: ``2023-09-08T16:19:34.765994Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True, eq=False)
class Prediction:
    """One prediction and its planned life. Times are ``time.time()`` seconds."""

    id: str
    seq: int
    model: BuiltinModel
    input: dict[str, Any]
    seed: int
    deployment: str | None
    base_url: str  # of the create request: webhooks and stream links are built from it
    created_at: float
    start_at: float | None  # None: never leaves 'starting'
    end_at: float  # when it reaches its planned terminal state
    full_run_seconds: float  # how long processing would take to finish (progress denominator)
    failure: ModelFailure | None
    webhook: str | None = None
    webhook_events: frozenset[str] = DEFAULT_WEBHOOK_EVENTS
    webhook_completed: str | None = None
    canceled_at: float | None = None
    changed: asyncio.Event | None = None  # made on demand; set when a cancel changes the plan
    version: str | None = None  # reported instead of the model's version id (official models by name)

    def status_at(self, now: float) -> str:
        """The status at time ``now``."""
        if self.canceled_at is not None:
            return CANCELED
        if now >= self.end_at:
            return FAILED if self.failure is not None else SUCCEEDED
        if self.start_at is None or now < self.start_at:
            return STARTING
        return PROCESSING

    def is_terminal(self, now: float) -> bool:
        """Whether the prediction has finished at ``now``."""
        return self.canceled_at is not None or now >= self.end_at

    def completed_at(self) -> float:
        """When it finished (or will finish, as planned)."""
        return self.canceled_at if self.canceled_at is not None else self.end_at

    def next_change_after(self, now: float) -> float:
        """The next planned moment its status changes."""
        if self.start_at is not None and now < self.start_at:
            return self.start_at
        return self.end_at

    def progress_at(self, now: float) -> float:
        """Share (0..1) of the model's run done at ``now``."""
        if self.start_at is None or now < self.start_at:
            return 0.0
        if self.full_run_seconds <= 0:
            return 1.0 if now >= self.end_at else 0.0
        elapsed = min(now, self.completed_at()) - self.start_at
        return max(0.0, min(1.0, elapsed / self.full_run_seconds))

    def cancel(self, now: float) -> bool:
        """Cancel unless already finished; returns whether anything changed."""
        if self.is_terminal(now):
            return False
        self.canceled_at = now
        if self.changed is not None:
            self.changed.set()
        return True

    def is_data_removed(self, now: float, output_ttl: float) -> bool:
        """Whether input, output, logs and files have been deleted (``output_ttl`` after completion)."""
        return self.is_terminal(now) and now >= self.completed_at() + output_ttl

    def file_url(self, base_url: str, filename: str) -> str:
        """Absolute URL of one of its output files."""
        return f"{base_url}/_delivery/{self.id}/{filename}"

    def output_at(self, now: float, base_url: str) -> Any:
        """The output visible at ``now`` (partial while processing, final once succeeded)."""
        status = self.status_at(now)
        if status in (STARTING, FAILED):
            return None
        progress = 1.0 if status == SUCCEEDED else self.progress_at(now)
        if status == CANCELED and progress >= 1.0:
            progress = 0.999  # canceled before it could publish its final output
        return self.model.output(self.input, self.seed, lambda name: self.file_url(base_url, name), progress)

    def logs_at(self, now: float) -> str:
        """Cog-like logs: the seed, tqdm progress lines the client can parse, and failure details."""
        if self.start_at is None or now < self.start_at:
            return ""
        total = self.model.progress_steps
        done = int(total * self.progress_at(now))
        stride = max(1, total // 10)
        steps = list(range(0, done + 1, stride))
        if steps[-1] != done:
            steps.append(done)
        lines = [f"Using seed: {self.seed}"]
        for step in steps:
            filled = _PROGRESS_BAR_WIDTH * step // total
            bar = "█" * filled + " " * (_PROGRESS_BAR_WIDTH - filled)
            lines.append(f"{100 * step // total:3d}%|{bar}| {step}/{total}")
        logs = "\n".join(lines) + "\n"
        if self.failure is not None and self.status_at(now) == FAILED:
            logs += self.failure.log_tail
        return logs

    def metrics_at(self, now: float, output: Any) -> dict[str, Any]:
        """``predict_time`` (billed, active seconds) and ``total_time`` once finished; ``{}`` before."""
        if not self.is_terminal(now):
            return {}
        completed = self.completed_at()
        metrics: dict[str, Any] = {}
        if self.start_at is not None and completed > self.start_at:
            metrics["predict_time"] = round(completed - self.start_at, 6)
        metrics["total_time"] = round(completed - self.created_at, 6)
        if self.status_at(now) == SUCCEEDED:
            metrics.update(self.model.extra_metrics(self.input, self.seed, output))
        return metrics

    def to_json(
        self, now: float, base_url: str, output_ttl: float, status: str | None = None
    ) -> dict[str, Any]:
        """The prediction object as the API serves it at ``now``.

        ``status`` overrides the reported status (a ``Prefer: wait`` that ran out reports 'starting').
        """
        actual_status = self.status_at(now)
        terminal = actual_status in TERMINAL_STATUSES
        removed = terminal and now >= self.completed_at() + output_ttl
        if removed:
            given_input: dict[str, Any] = {}
            output = None
            logs = ""
        else:
            given_input = self.input
            output = self.output_at(now, base_url)
            logs = self.logs_at(now)
        started = self.start_at is not None and now >= self.start_at
        urls = {
            "get": f"{base_url}/v1/predictions/{self.id}",
            "cancel": f"{base_url}/v1/predictions/{self.id}/cancel",
            "web": f"{base_url}/p/{self.id}",
        }
        if self.model.streams:
            urls["stream"] = f"{base_url}/_stream/{self.id}"
        return {
            "id": self.id,
            "model": self.model.ref,
            "version": self.version or self.model.version_id,
            "input": given_input,
            "logs": logs,
            "output": output,
            "data_removed": removed,
            "error": self.failure.error if actual_status == FAILED and self.failure else None,
            "status": status or actual_status,
            "created_at": isoformat(self.created_at),
            "started_at": isoformat(self.start_at) if started and self.start_at is not None else None,
            "completed_at": isoformat(self.completed_at()) if terminal else None,
            "urls": urls,
            "metrics": self.metrics_at(now, output),
            "source": "api",
            "deployment": self.deployment,
        }


class InvalidCursor(ValueError):
    """A list cursor this store did not issue."""


class PredictionStore:
    """All predictions, by id and in creation order (newest first when listed)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Prediction] = {}
        self._ordered: list[Prediction] = []

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self._ordered)

    @property
    def next_seq(self) -> int:
        """The sequence number the next prediction gets."""
        return len(self._ordered)

    def add(self, prediction: Prediction) -> None:
        """Store a new prediction."""
        self._by_id[prediction.id] = prediction
        self._ordered.append(prediction)

    def get(self, prediction_id: str) -> Prediction | None:
        """The prediction with this id, if any."""
        return self._by_id.get(prediction_id)

    def page(self, cursor: str | None, size: int) -> tuple[list[Prediction], str | None, str | None]:
        """One page, newest first: ``(items, next_cursor, previous_cursor)``.

        Cursors are opaque strings, like Replicate's (base64 of a position); ``next`` goes to older items.
        """
        newest = len(self._ordered) - 1
        if cursor is None:
            top = newest
        else:
            reverse, position = _decode_cursor(cursor)
            # A 'previous' cursor shows the page just newer than ``position``.
            top = min(newest, position + size) if reverse else position - 1
        bottom = max(0, top - size + 1)
        items = [self._ordered[seq] for seq in range(top, bottom - 1, -1)] if top >= 0 else []
        next_cursor = _encode_cursor(False, bottom) if items and bottom > 0 else None
        previous_cursor = _encode_cursor(True, top) if items and top < newest else None
        return items, next_cursor, previous_cursor


def _encode_cursor(reverse: bool, position: int) -> str:
    raw = f"r=1&p={position}" if reverse else f"p={position}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[bool, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        fields = dict(part.split("=", 1) for part in raw.split("&"))
        return fields.get("r") == "1", int(fields["p"])
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError) as exc:
        raise InvalidCursor(cursor) from exc
