"""The emulator's own controls: stats counters, live configuration, reset."""

from __future__ import annotations

import httpx
import replicate

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION, IMAGES_MODEL, model_versions
from ai_pipeline.dev.emulator.server import InProcessEmulator


def test_stats_count_creates_per_distinct_input(emu: InProcessEmulator, client: replicate.Client) -> None:
    for prompt in ("same", "same", "other"):
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": prompt, "seed": 1})
    client.predictions.create(version=IMAGE_MODEL_VERSION, input={"seed": 1, "prompt": "same"})  # key order

    stats = emu.stats(per_input=True)

    assert stats["predictions_created"] == 4
    assert stats["creates_by_input"]["distinct_inputs"] == 2
    assert stats["creates_by_input"]["duplicate_creates"] == 2
    assert stats["creates_by_input"]["per_input"] == [
        {"input": {"prompt": "same", "seed": 1}, "creates": 3},
        {"input": {"prompt": "other", "seed": 1}, "creates": 1},
    ]
    assert "per_input" not in emu.stats()["creates_by_input"]


def test_stats_count_requests_and_predictions_by_status(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(predict_seconds=5)
    running = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "running"})
    client.predictions.cancel(
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "c"}).id
    )
    client.predictions.get(running.id)

    stats = emu.stats()

    assert stats["predictions_by_status"]["canceled"] == 1
    assert stats["predictions_by_status"]["starting"] + stats["predictions_by_status"]["processing"] == 1
    assert stats["requests_by_kind"] == {"control": 2, "create": 2, "other": 1, "get": 1}
    assert stats["requests"] == 6  # this stats call included
    assert stats["cancels"] == 1
    assert stats["responses_by_status"] == {"200": 3, "201": 2}


def test_reset_forgets_predictions_and_counters(emu: InProcessEmulator, client: replicate.Client) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "gone"})

    emu.reset()

    assert emu.stats()["predictions_created"] == 0
    assert client.predictions.list().results == []
    try:
        client.predictions.get(prediction.id)
        raise AssertionError("prediction survived the reset")
    except replicate.exceptions.ReplicateError as error:
        assert error.status == 404


def test_config_patch_merges_per_kind_and_null_restores_the_default(emu: InProcessEmulator) -> None:
    emu.configure(http_error_rates={"get": 0.5}, predict_seconds=3)
    config = emu.configure(http_error_rates={"create": 0.1})

    assert config["http_error_rates"] == {"create": 0.1, "get": 0.5, "other": 0.0}
    assert config["predict_seconds"] == 3
    assert emu.configure(predict_seconds=None)["predict_seconds"] == 1.0


def test_config_rejects_unknown_knobs_and_bad_values(emu: InProcessEmulator) -> None:
    control = httpx.Client(base_url=emu.base_url, trust_env=False)

    unknown = control.post("/_emulator/config", json={"predict_secs": 1})
    out_of_range = control.post("/_emulator/config", json={"http_error_rates": {"get": 2}})
    bad_status = control.post("/_emulator/config", json={"http_error_statuses": [418]})

    assert [r.status_code for r in (unknown, out_of_range, bad_status)] == [422, 422, 422]
    assert "predict_secs" in unknown.json()["detail"]
    assert control.get("/_emulator/config").json()["http_error_rates"]["get"] == 0.0


def test_reset_can_restore_the_start_up_configuration(emu: InProcessEmulator) -> None:
    emu.configure(predict_seconds=9)

    emu.reset(restore_config=True)

    assert httpx.get(f"{emu.base_url}/_emulator/config", trust_env=False).json()["predict_seconds"] == 0.2


def test_registry_lists_the_built_in_models(emu: InProcessEmulator) -> None:
    registry = httpx.get(f"{emu.base_url}/_emulator/models", trust_env=False).json()

    assert registry["models"] == model_versions()
    assert {m["model"] for m in registry["models"]} == {
        "emulator/image",
        "emulator/images",
        "emulator/text",
        "emulator/caption",
    }
    assert [m["official"] for m in registry["models"] if m["model"] == IMAGES_MODEL] == [True]
    assert registry["deployments"] == [{"deployment": "emulator/image-deployment", "model": "emulator/image"}]
