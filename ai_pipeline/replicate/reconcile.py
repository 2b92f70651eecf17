"""Find predictions whose create answer never reached us, for many requests with one listing.

Replicate has no idempotency key and its list endpoint no filter: the only way to learn whether a
create whose answer was lost (a dropped connection, a 5xx from a proxy, a worker killed mid-call) made
a prediction is to page through the account's predictions, newest first, back to the moment the intent
was recorded, and match by what was run and its input (`made_for`). A page costs the same whoever reads
it, so a run gathers every request that needs a look into one scan: after a worker is killed, its fifty
resumed requests cost one listing, not fifty.

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
from ai_pipeline.replicate.breaker import SharedBreaker
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


def made_for(spec: ModelSpec, listed: dict[str, Any]) -> bool:
    """Whether a listed prediction (Replicate's JSON) was made the way `spec` makes its creates.

    - through a deployment: its `deployment` names that deployment (the model and version it reports are
      the release's, which the same model run directly reports too);
    - by version: its `version` is that version id (and its `model` the catalogue's, when named), and no
      deployment made it;
    - an official model by name: its `model` is that owner/name and no deployment made it. Official
      models answer with version ids of their own (reference/REPLICATE_NOTES.md), so the version says
      nothing there.
    Predictions started on the website (`source: web`) are never ours. A listing that does not report
    `deployment` at all cannot tell a deployment's predictions from its model's: there only the model
    and version are held to the spec, as far as the catalogue names them.
    """
    if listed.get("source") not in (None, "api"):
        return False
    deployment = listed.get("deployment")
    deployment_reported = "deployment" in listed
    if spec.replicate_deployment:
        return deployment == spec.replicate_deployment or not deployment_reported
    if deployment:
        return False
    if spec.replicate_model and listed.get("model") != spec.replicate_model:
        return False
    if spec.replicate_version:
        return listed.get("version") == _version_id(spec.replicate_version)
    return True


def _version_id(version: str) -> str:
    """The id of a catalogue version, which may be written `owner/name:id`."""
    return version.rpartition(":")[2]


@dataclass(frozen=True)
class ListingPage:
    """One page of `GET /v1/predictions`: the predictions as Replicate sent them, and the next page."""

    results: list[dict[str, Any]]
    next: str | None


ListPage = Callable[[str | None], Awaitable[ListingPage]]


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
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)  # input -> candidates, newest first
    cursor: str | None = None
    for _ in range(max_pages):
        page = await list_page(cursor)
        reached_horizon = False
        for listed in page.results:
            created = _parse_time(listed.get("created_at"))
            if created is not None and created < horizon:
                reached_horizon = True
                break
            if not isinstance(listed.get("input"), dict):
                continue
            key = canonical_json(listed["input"])
            if key in by_input:
                seen[key].append(listed)
        if reached_horizon or not page.next:
            return _assign(lookups, by_input, seen)
        cursor = page.next
    raise ListingIncomplete(f"listing did not reach {horizon.isoformat()} within {max_pages} pages")


def _assign(
    lookups: list[Lookup], by_input: dict[str, list[int]], seen: dict[str, list[dict[str, Any]]]
) -> list[Prediction | None]:
    answers: list[Prediction | None] = [None] * len(lookups)
    for key, indexes in by_input.items():
        taken: set[str] = set()
        oldest_first = list(reversed(seen.get(key, [])))
        for index in sorted(indexes, key=lambda i: lookups[i].created_after):
            lookup = lookups[index]
            for listed in oldest_first:
                created = _parse_time(listed.get("created_at"))
                if (
                    listed["id"] not in taken
                    and listed["id"] not in lookup.exclude_ids
                    and (created is None or created >= lookup.created_after - CLOCK_SLACK)
                    and made_for(lookup.spec, listed)
                ):
                    answers[index] = Prediction(**listed)
                    taken.add(listed["id"])
                    break
    return answers


# A listing page is a read: tried again right where it failed, five times, 0.1 s growing to 2 s apart
# (retrying the whole listing instead would rarely get through many pages while calls fail).
PAGE_RETRIES = Backoff(attempts=5, base_seconds=0.1, max_seconds=2.0)


def client_pages(client: Client, breaker: SharedBreaker | None = None) -> ListPage:
    """`list_page` for the official client, each page retried on transient trouble (and each answer or
    failure told to `breaker`).

    Pages are read as Replicate's JSON through the client's own request method (its auth, base URL,
    transport and GET retries; private, used by every namespace of replicate 1.0.x): its `Prediction`
    model drops `deployment` and `source`, which the match needs (`made_for`).
    """

    async def fetch(cursor: str | None) -> ListingPage:
        response = await client._async_request("GET", cursor or "/v1/predictions")
        body = response.json()
        return ListingPage(list(body.get("results") or []), body.get("next"))

    async def list_page(cursor: str | None) -> ListingPage:
        def once() -> Awaitable[ListingPage]:
            return fetch(cursor) if breaker is None else breaker.watched(lambda: fetch(cursor))

        return await retry_async(once, PAGE_RETRIES, retry_if=lambda exc: classify_failure(exc).transient)

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
