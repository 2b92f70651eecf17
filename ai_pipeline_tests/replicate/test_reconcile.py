"""Finding predictions whose create answer was lost: one listing through the official client answers many
requests, matches exactly, and never says "not found" without having looked back far enough."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import replicate

from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.dev.emulator import (
    CAPTION_MODEL_VERSION,
    IMAGE_DEPLOYMENT,
    IMAGE_MODEL,
    IMAGE_MODEL_VERSION,
    IMAGES_MODEL,
    TEXT_MODEL,
    run_emulator,
)
from ai_pipeline.dev.emulator.server import InProcessEmulator
from ai_pipeline.replicate.reconcile import (
    ListingIncomplete,
    Lookup,
    UnrecordedPredictions,
    client_pages,
    made_for,
    scan,
)

SPEC = ModelSpec("image", 1, replicate_version=IMAGE_MODEL_VERSION)
OTHER_VERSION = ModelSpec("image-old", 1, replicate_version="0" * 64)
BY_MODEL_AND_VERSION = ModelSpec(
    "image-named", 1, replicate_model=IMAGE_MODEL, replicate_version=IMAGE_MODEL_VERSION
)
CAPTION = ModelSpec("caption", 1, replicate_version=CAPTION_MODEL_VERSION)
OFFICIAL_IMAGES = ModelSpec("images", 2, replicate_model=IMAGES_MODEL)
OFFICIAL_TEXT = ModelSpec("text", 1, replicate_model=TEXT_MODEL)
DEPLOYMENT = ModelSpec("deployed", 1, replicate_deployment=IMAGE_DEPLOYMENT)


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


def _found(client: replicate.Client, lookups: list[Lookup]) -> list[str | None]:
    return [a.id if a else None for a in asyncio.run(scan(client_pages(client), lookups))]


def test_the_lookup_ignores_another_official_models_prediction_with_the_same_input(
    client: replicate.Client,
) -> None:
    intent = datetime.now(UTC)
    text = client.models.predictions.create(model=TEXT_MODEL, input={"prompt": "same words"}).id
    images = client.models.predictions.create(model=IMAGES_MODEL, input={"prompt": "same words"}).id

    assert _found(
        client,
        [
            _lookup("same words", intent, spec=OFFICIAL_IMAGES),
            _lookup("same words", intent + timedelta(microseconds=1), spec=OFFICIAL_IMAGES),
            _lookup("same words", intent, spec=OFFICIAL_TEXT),
        ],
    ) == [images, None, text]


def test_the_lookup_ignores_another_versions_prediction_with_the_same_input(client: replicate.Client) -> None:
    intent = datetime.now(UTC)
    caption = client.predictions.create(version=CAPTION_MODEL_VERSION, input={"prompt": "same"}).id

    assert _found(
        client,
        [
            _lookup("same", intent, spec=SPEC),
            _lookup("same", intent, spec=BY_MODEL_AND_VERSION),
            _lookup("same", intent, spec=CAPTION),
        ],
    ) == [None, None, caption]


def test_a_deployments_prediction_and_its_models_are_told_apart(client: replicate.Client) -> None:
    intent = datetime.now(UTC)
    direct = _create(client, "deployed or not")  # same model, version and input: the older of the two
    deployed = client.deployments.predictions.create(IMAGE_DEPLOYMENT, input={"prompt": "deployed or not"}).id

    assert _found(
        client,
        [
            _lookup("deployed or not", intent, spec=DEPLOYMENT),
            _lookup("deployed or not", intent, spec=SPEC),
            _lookup("deployed or not", intent + timedelta(microseconds=1), spec=SPEC),
        ],
    ) == [deployed, direct, None]


def test_a_prediction_started_on_the_website_is_never_taken() -> None:
    listed = {"id": "x", "model": IMAGE_MODEL, "version": IMAGE_MODEL_VERSION, "deployment": None}

    assert made_for(SPEC, {**listed, "source": "api"})
    assert not made_for(SPEC, {**listed, "source": "web"})


def test_a_listing_without_a_deployment_field_matches_a_deployment_on_input_and_time_alone() -> None:
    """What else could it do: the model and version a deployment reports are its release's."""
    listed = {"id": "x", "model": IMAGE_MODEL, "version": IMAGE_MODEL_VERSION, "source": "api"}

    assert made_for(DEPLOYMENT, listed)
    assert made_for(SPEC, listed)
    assert not made_for(DEPLOYMENT, {**listed, "deployment": None})
