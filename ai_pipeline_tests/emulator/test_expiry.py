"""Output expiry: after ``output_ttl`` the prediction loses its data and its files answer 404."""

from __future__ import annotations

import time

import httpx
import replicate

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION
from ai_pipeline.dev.emulator.server import InProcessEmulator


def test_output_input_and_files_are_removed_after_the_ttl(
    emu: InProcessEmulator, client: replicate.Client, http: httpx.Client
) -> None:
    emu.configure(output_ttl=1)
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "ephemeral"}, wait=5)
    assert prediction.status == "succeeded"
    assert http.get(prediction.output).status_code == 200

    time.sleep(1.1)
    expired = client.predictions.get(prediction.id)

    assert expired.status == "succeeded"
    assert expired.output is None
    assert expired.input == {}
    assert http.get(f"/v1/predictions/{prediction.id}").json()["data_removed"] is True
    assert http.get(prediction.output).status_code == 404


def test_unfinished_predictions_keep_their_data(emu: InProcessEmulator, client: replicate.Client) -> None:
    emu.configure(output_ttl=0.01, predict_seconds=1.0)
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "running"})
    time.sleep(0.2)

    assert client.predictions.get(prediction.id).input == {"prompt": "running"}
