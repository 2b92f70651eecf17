"""The emulator's pure parts: token buckets, configuration merging, artefacts, ids, Prefer parsing."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from ai_pipeline.dev.emulator.app import parse_prefer_wait
from ai_pipeline.dev.emulator.artifacts import generate_tokens, render_png
from ai_pipeline.dev.emulator.config import ConfigError, EmulatorConfig, merge_config
from ai_pipeline.dev.emulator.models import IMAGE_MODEL_VERSION, find_version
from ai_pipeline.dev.emulator.predictions import new_prediction_id
from ai_pipeline.dev.emulator.ratelimit import TokenBucket


def test_token_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, capacity=3, now=0.0)

    taken = [bucket.take(0.0).allowed for _ in range(4)]
    denied = bucket.take(0.0)

    assert taken == [True, True, True, False]
    assert denied.reset_seconds == 1 and denied.remaining == 0
    assert bucket.take(0.1).allowed
    assert not bucket.take(0.1).allowed


def test_png_is_valid_and_deterministic() -> None:
    png = render_png("a boat", 5, 0)

    assert png == render_png("a boat", 5, 0)
    assert png != render_png("a boat", 6, 0)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (64, 64)


def test_tokens_are_deterministic_and_sized() -> None:
    tokens = generate_tokens("hi", 9, 1)

    assert len(tokens) == 9 and tokens == generate_tokens("hi", 9, 1)
    assert all(token.startswith(" ") for token in tokens[1:])


def test_prediction_ids_look_like_replicates() -> None:
    ids = {new_prediction_id(random.Random(seed)) for seed in range(50)}

    assert len(ids) == 50
    assert all(len(i) == 26 and i.isalnum() and i == i.lower() for i in ids)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("wait", 60.0),
        ("wait=5", 5.0),
        ("respond-async, wait=60", 60.0),
        ("wait=0", None),
        ("wait=61", None),
    ],
)
def test_prefer_wait_parsing(header: str | None, expected: float | None) -> None:
    assert parse_prefer_wait(header, 60.0) == expected


def test_version_field_accepts_id_ref_or_official_name() -> None:
    assert find_version(IMAGE_MODEL_VERSION) is not None
    assert find_version(f"emulator/image:{IMAGE_MODEL_VERSION}") is not None
    assert find_version(f"emulator/images:{IMAGE_MODEL_VERSION}") is None
    assert find_version("emulator/images") is not None  # official
    assert find_version("emulator/image") is None  # community models need a version


def test_merge_config_validates_every_knob() -> None:
    base = EmulatorConfig()

    with pytest.raises(ConfigError):
        merge_config(base, {"scripted_faults": {"get": ["explode"]}})
    with pytest.raises(ConfigError):
        merge_config(base, {"model_failure_rates": {"segfault": 0.1}})
    with pytest.raises(ConfigError):
        merge_config(base, {"predict_seconds": -1})
    merged = merge_config(base, {"scripted_faults": {"get": [503, "drop"]}})
    assert merged.scripted_faults == {"create": [], "get": [503, "drop"], "other": [], "download": []}
    assert base.scripted_faults["get"] == []
