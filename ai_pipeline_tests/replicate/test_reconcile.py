"""Finding predictions whose create answer was lost: one listing through the official client answers many
requests, matches exactly, and never says "not found" without having looked back far enough."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import replicate

from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION, run_emulator
from ai_pipeline.dev.emulator.server import InProcessEmulator
from ai_pipeline.replicate.reconcile import (
    ListingIncomplete,
    Lookup,
    UnrecordedPredictions,
    client_pages,
    scan,
)

SPEC = ModelSpec("image", 1, replicate_version=IMAGE_MODEL_VERSION)
OTHER_VERSION = ModelSpec("image-old", 1, replicate_version="0" * 64)


@pytest.fixture(scope="module")
def emulator() -> Iterator[InProcessEmulator]:
    with run_emulator(predict_seconds=0.05, predict_jitter_seconds=0.0, start_seconds=0.0, seed=3) as emu:
        emu.configure(list_page_size=5)
        yield emu


@pytest.fixture
def client(emulator: InProcessEmulator) -> replicate.Client:
    emulator.reset()
    emulator.configure(list_page_size=5)
    return replicate.Client(api_token="r8_test", base_url=emulator.base_url)


def _create(client: replicate.Client, prompt: str) -> str:
    return client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": prompt}).id


def _lookup(
    prompt: str, after: datetime, exclude: frozenset[str] = frozenset(), spec: ModelSpec = SPEC
) -> Lookup:
    return Lookup(spec, {"prompt": prompt}, created_after=after, exclude_ids=exclude)


def test_one_scan_answers_every_lookup_with_its_own_prediction(client: replicate.Client) -> None:
    intent = datetime.now(UTC)
    ids = {prompt: _create(client, prompt) for prompt in ["a", "b", "c"]}
    twin_first, twin_second = _create(client, "twin"), _create(client, "twin")
    for n in range(12):  # other traffic, so the matches are spread over several pages
        _create(client, f"noise {n}")

    answers = asyncio.run(
        scan(
            client_pages(client),
            [
                _lookup("a", intent),
                _lookup("c", intent),
                _lookup("never created", intent),
                _lookup("twin", intent),
                _lookup("twin", intent + timedelta(microseconds=1)),
                _lookup("b", intent, exclude=frozenset({ids["b"]})),  # another request owns it
                _lookup("a", intent, spec=OTHER_VERSION),  # same input, another version
            ],
        )
    )

    assert [a.id if a else None for a in answers] == [
        ids["a"],
        ids["c"],
        None,
        twin_first,
        twin_second,
        None,
        None,
    ]


def test_predictions_before_the_intent_are_not_taken(client: replicate.Client) -> None:
    _create(client, "old")
    (answer,) = asyncio.run(
        scan(client_pages(client), [_lookup("old", datetime.now(UTC) + timedelta(minutes=1))])
    )
    assert answer is None


def test_a_listing_that_cannot_reach_the_intent_does_not_say_not_found(client: replicate.Client) -> None:
    intent = datetime.now(UTC)
    created = _create(client, "deep")
    for n in range(12):
        _create(client, f"newer {n}")  # three pages of 5 lie between now and the intent

    async def look() -> None:
        pages = client_pages(client)
        with pytest.raises(ListingIncomplete):
            await scan(pages, [_lookup("not there", intent)], max_pages=2)
        (found,) = await scan(pages, [_lookup("deep", intent)], max_pages=4)
        assert found is not None and found.id == created

    asyncio.run(look())


def test_concurrent_lookups_share_one_scan(client: replicate.Client) -> None:
    intent = datetime.now(UTC)
    ids = [_create(client, f"lost {n}") for n in range(10)]
    finder = UnrecordedPredictions(client_pages(client))

    async def ask_all() -> list[str | None]:
        found = await asyncio.gather(*(finder.find(_lookup(f"lost {n}", intent)) for n in range(10)))
        return [p.id if p else None for p in found]

    assert asyncio.run(ask_all()) == ids
    assert finder.scans == 1


def test_a_failed_scan_fails_every_lookup_it_carried(client: replicate.Client) -> None:
    async def broken_page(cursor: str | None) -> object:
        raise RuntimeError("listing is down")

    finder = UnrecordedPredictions(broken_page)

    async def ask_two() -> list[BaseException | object]:
        return await asyncio.gather(
            finder.find(_lookup("x", datetime.now(UTC))),
            finder.find(_lookup("y", datetime.now(UTC))),
            return_exceptions=True,
        )

    results = asyncio.run(ask_two())
    assert all(isinstance(r, RuntimeError) for r in results)
