"""Find predictions whose create answer never reached us, for many requests with one listing.

Replicate has no idempotency key and its list endpoint no filter: the only way to learn whether a
create whose answer was lost (a dropped connection, a 5xx from a proxy, a worker killed mid-call) made
a prediction is to page through the account's predictions, newest first, back to the moment the intent
was recorded, and match by model and input. A page costs the same whoever reads it, so a run gathers
every request that needs a look into one scan: after a worker is killed, its fifty resumed requests cost
one listing, not fifty.

A listing that cannot reach its horizon (page limit, transient errors) raises: "not found" is only said
after every prediction since the intent was seen, because "not found" leads to a new, billed create.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from replicate.client import Client
from replicate.prediction import Prediction

from ai_pipeline.canonical import canonical_json
from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.replicate.errors import classify_failure
from ai_pipeline.retry import Backoff, retry_async

# Replicate's clock and ours differ a little: list a bit further back than the recorded intent.
CLOCK_SLACK = timedelta(seconds=10)
# 100 predictions a page: 400 pages reach an hour back at 600 creates a minute (when inputs are deleted).
MAX_PAGES = 400


class ListingIncomplete(Exception):
    """The listing stopped before it reached the horizon: whether the prediction exists is unknown."""


@dataclass(frozen=True)
class Lookup:
    """One request's question: a prediction of `spec` with `model_input`, created after `created_after`,
    that is not one of `exclude_ids` (predictions other requests with the same input own)."""

    spec: ModelSpec
    model_input: dict[str, Any]
    created_after: datetime
    exclude_ids: frozenset[str] = frozenset()

    @property
    def canonical_input(self) -> str:
        return canonical_json(self.model_input)


def _matches(prediction: Prediction, lookup: Lookup) -> bool:
    spec = lookup.spec
    if spec.replicate_version and not spec.replicate_deployment:
        return prediction.version == spec.replicate_version
    return True


ListPage = Callable[[str | None], Awaitable[Any]]


async def scan(
    list_page: ListPage, lookups: list[Lookup], *, max_pages: int = MAX_PAGES
) -> list[Prediction | None]:
    """Answer every lookup with one pass over the listing; `list_page(cursor)` returns one page.

    Each lookup gets the oldest matching prediction created after its horizon (the first create is the
    one its intent was for); lookups with the same input get distinct predictions, oldest first.
    Raises `ListingIncomplete` when `max_pages` pages did not reach the oldest horizon.
    """
    if not lookups:
        return []
    by_input: dict[str, list[int]] = defaultdict(list)
    for index, lookup in enumerate(lookups):
        by_input[lookup.canonical_input].append(index)
    horizon = min(lookup.created_after for lookup in lookups) - CLOCK_SLACK
    seen: dict[str, list[Prediction]] = defaultdict(list)  # input -> candidates, newest first
    cursor: str | None = None
    for _ in range(max_pages):
        page = await list_page(cursor)
        reached_horizon = False
        for prediction in page.results:
            created = _parse_time(prediction.created_at)
            if created is not None and created < horizon:
                reached_horizon = True
                break
            if prediction.input is None:
                continue
            key = canonical_json(prediction.input)
            if key in by_input:
                seen[key].append(prediction)
        if reached_horizon or not page.next:
            return _assign(lookups, by_input, seen)
        cursor = page.next
    raise ListingIncomplete(f"listing did not reach {horizon.isoformat()} within {max_pages} pages")


def _assign(
    lookups: list[Lookup], by_input: dict[str, list[int]], seen: dict[str, list[Prediction]]
) -> list[Prediction | None]:
    answers: list[Prediction | None] = [None] * len(lookups)
    for key, indexes in by_input.items():
        taken: set[str] = set()
        oldest_first = list(reversed(seen.get(key, [])))
        for index in sorted(indexes, key=lambda i: lookups[i].created_after):
            lookup = lookups[index]
            for prediction in oldest_first:
                created = _parse_time(prediction.created_at)
                if (
                    prediction.id not in taken
                    and prediction.id not in lookup.exclude_ids
                    and (created is None or created >= lookup.created_after - CLOCK_SLACK)
                    and _matches(prediction, lookup)
                ):
                    answers[index] = prediction
                    taken.add(prediction.id)
                    break
    return answers


# A listing page is a read: tried again right where it failed, five times, 0.1 s growing to 2 s apart
# (retrying the whole listing instead would rarely get through many pages while calls fail).
PAGE_RETRIES = Backoff(attempts=5, base_seconds=0.1, max_seconds=2.0)


def client_pages(client: Client) -> ListPage:
    """`list_page` for the official client, each page retried on transient trouble."""

    async def list_page(cursor: str | None) -> Any:
        return await retry_async(
            lambda: client.predictions.async_list(cursor if cursor is not None else ...),
            PAGE_RETRIES,
            retry_if=lambda exc: classify_failure(exc).transient,
        )

    return list_page


@dataclass
class _Pending:
    lookup: Lookup
    answer: asyncio.Future[Prediction | None]


@dataclass
class UnrecordedPredictions:
    """Gathers the lookups of one run's tasks into shared scans (one at a time, back to back).

    A lookup waits for a scan that *starts* after it was asked, so a prediction created before the
    question is always on the pages that scan reads.
    """

    list_page: ListPage
    max_pages: int = MAX_PAGES
    scans: int = 0
    _waiting: list[_Pending] = field(default_factory=list)
    _worker: asyncio.Task[None] | None = None

    async def find(self, lookup: Lookup) -> Prediction | None:
        answer: asyncio.Future[Prediction | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(lookup, answer))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._scan_while_asked())
        return await answer

    async def _scan_while_asked(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            batch = [pending for pending in batch if not pending.answer.done()]  # callers cancelled
            if not batch:
                continue
            self.scans += 1
            try:
                answers = await scan(self.list_page, [p.lookup for p in batch], max_pages=self.max_pages)
            except Exception as exc:
                for pending in batch:
                    if not pending.answer.done():
                        pending.answer.set_exception(exc)
                continue
            for pending, prediction in zip(batch, answers, strict=True):
                if not pending.answer.done():
                    pending.answer.set_result(prediction)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
