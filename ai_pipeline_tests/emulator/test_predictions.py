"""Predictions through the official client: create, get, wait, run, cancel, list, sync mode, shapes."""

from __future__ import annotations

import io
import re
import time

import httpx
import pytest
import replicate
from PIL import Image

from ai_pipeline.dev.emulator import (
    CAPTION_MODEL_VERSION,
    IMAGE_DEPLOYMENT,
    IMAGE_MODEL,
    IMAGE_MODEL_VERSION,
    IMAGES_MODEL,
    TEXT_MODEL,
    TEXT_MODEL_VERSION,
)
from ai_pipeline.dev.emulator.server import InProcessEmulator

from .conftest import TOKEN

PREDICTION_FIELDS = {
    "id", "model", "version", "input", "output", "logs", "error", "status", "created_at", "started_at",
    "completed_at", "metrics", "urls", "data_removed", "source", "deployment",
}  # fmt: skip
ID_PATTERN = re.compile(r"^[a-z2-7]{26}$")


def _png(url: str) -> Image.Image:
    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_create_by_version_starts_then_succeeds_with_a_real_png(client: replicate.Client) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "a red fox"})

    assert prediction.status == "starting"
    assert ID_PATTERN.match(prediction.id)
    assert prediction.output is None
    prediction.wait()

    assert prediction.status == "succeeded"
    assert prediction.model == IMAGE_MODEL
    assert prediction.version == IMAGE_MODEL_VERSION
    assert prediction.metrics is not None and prediction.metrics["predict_time"] == pytest.approx(
        0.2, abs=0.05
    )
    assert prediction.metrics["total_time"] >= prediction.metrics["predict_time"]
    assert prediction.started_at and prediction.completed_at
    assert _png(prediction.output).size == (64, 64)


def test_prediction_json_carries_every_replicate_field(
    emu: InProcessEmulator, client: replicate.Client, http: httpx.Client
) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "fields"})
    prediction.wait()

    body = http.get(f"/v1/predictions/{prediction.id}").json()

    assert set(body) == PREDICTION_FIELDS
    assert body["source"] == "api"
    assert body["data_removed"] is False
    assert body["deployment"] is None
    assert set(body["urls"]) == {"get", "cancel", "web"}
    assert body["urls"]["get"] == f"{emu.base_url}/v1/predictions/{prediction.id}"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", body["created_at"])


def test_status_moves_from_starting_through_processing_to_succeeded(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(start_seconds=0.2, predict_seconds=0.4)
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "life"})
    seen = [prediction.status]
    while seen[-1] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.03)
        prediction.reload()
        if prediction.status != seen[-1]:
            seen.append(prediction.status)

    assert seen == ["starting", "processing", "succeeded"]


def test_same_prompt_and_seed_give_the_same_bytes_and_another_seed_does_not(client: replicate.Client) -> None:
    ref = f"{IMAGE_MODEL}:{IMAGE_MODEL_VERSION}"
    first = client.run(ref, input={"prompt": "a lighthouse", "seed": 3})
    again = client.run(ref, input={"prompt": "a lighthouse", "seed": 3})
    other = client.run(ref, input={"prompt": "a lighthouse", "seed": 4})

    assert first != again  # every prediction has its own file URL...
    assert httpx.get(first).content == httpx.get(again).content  # ...with the same bytes
    assert httpx.get(first).content != httpx.get(other).content


def test_official_model_returns_a_list_of_pngs(client: replicate.Client) -> None:
    prediction = client.models.predictions.create(
        model=IMAGES_MODEL, input={"prompt": "tiles", "num_outputs": 3}
    )
    prediction.wait()

    assert prediction.model == IMAGES_MODEL
    assert isinstance(prediction.output, list) and len(prediction.output) == 3
    assert all(_png(url).size == (64, 64) for url in prediction.output)
    assert prediction.metrics is not None and prediction.metrics["image_count"] == 3


def test_an_official_model_run_by_name_answers_with_a_version_id_of_its_own(
    client: replicate.Client,
) -> None:
    by_name = client.models.predictions.create(model=TEXT_MODEL, input={"prompt": "which version"})
    by_version = client.predictions.create(version=TEXT_MODEL_VERSION, input={"prompt": "which version"})

    assert by_name.model == by_version.model == TEXT_MODEL
    assert by_version.version == TEXT_MODEL_VERSION
    assert by_name.version != TEXT_MODEL_VERSION and by_name.version.startswith("dp-")
    assert client.predictions.get(by_name.id).version == by_name.version


def test_official_model_defaults_to_two_images(client: replicate.Client) -> None:
    output = client.run(IMAGES_MODEL, input={"prompt": "defaults"})

    assert len(output) == 2


def test_community_model_by_name_without_version_is_404(client: replicate.Client) -> None:
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.models.predictions.create(model=IMAGE_MODEL, input={"prompt": "x"})

    assert raised.value.status == 404


def test_text_model_outputs_a_list_of_tokens_and_offers_a_stream(client: replicate.Client) -> None:
    prediction = client.predictions.create(
        version=TEXT_MODEL_VERSION, input={"prompt": "hello", "max_tokens": 7}
    )
    prediction.wait()

    assert prediction.urls is not None and "stream" in prediction.urls
    assert isinstance(prediction.output, list) and len(prediction.output) == 7
    assert all(isinstance(token, str) for token in prediction.output)
    assert prediction.metrics is not None and prediction.metrics["output_token_count"] == 7


def test_text_output_grows_while_processing(emu: InProcessEmulator, client: replicate.Client) -> None:
    emu.configure(predict_seconds=1.0)
    prediction = client.models.predictions.create(
        model=TEXT_MODEL, input={"prompt": "grow", "max_tokens": 20}
    )
    time.sleep(0.6)
    prediction.reload()

    assert prediction.status == "processing"
    assert 0 < len(prediction.output) < 20


def test_run_of_a_versioned_text_model_yields_tokens(client: replicate.Client) -> None:
    tokens = list(
        client.run(f"{TEXT_MODEL}:{TEXT_MODEL_VERSION}", input={"prompt": "iterate", "max_tokens": 5})
    )

    assert len(tokens) == 5


def test_stream_yields_each_token_then_done(client: replicate.Client) -> None:
    events = list(client.stream(TEXT_MODEL, input={"prompt": "stream me", "max_tokens": 6}))

    outputs = [str(event) for event in events if event.event.value == "output"]
    assert len(outputs) == 6
    assert events[-1].event.value == "done"
    final = client.predictions.list().results[0]
    assert "".join(outputs) == "".join(final.output)


def test_caption_model_outputs_a_dict_with_a_png(client: replicate.Client) -> None:
    output = client.run(f"emulator/caption:{CAPTION_MODEL_VERSION}", input={"prompt": "a quiet harbor"})

    assert set(output) == {"caption", "image", "score"}
    assert "a quiet harbor" in output["caption"]
    assert 0.8 <= output["score"] <= 0.99
    assert _png(output["image"]).size == (64, 64)


def test_deployment_runs_the_image_model(client: replicate.Client, http: httpx.Client) -> None:
    prediction = client.deployments.predictions.create(IMAGE_DEPLOYMENT, input={"prompt": "deployed"}, wait=5)

    assert prediction.status == "succeeded"
    assert prediction.model == IMAGE_MODEL
    assert http.get(f"/v1/predictions/{prediction.id}").json()["deployment"] == IMAGE_DEPLOYMENT
    deployment = client.deployments.get(IMAGE_DEPLOYMENT)
    assert deployment.current_release is not None
    assert deployment.current_release.version == IMAGE_MODEL_VERSION


def test_cancel_answers_200_canceled_and_bills_time_run(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(predict_seconds=5.0)
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "long"})
    time.sleep(0.3)

    canceled = client.predictions.cancel(prediction.id)

    assert canceled.status == "canceled"
    assert canceled.output is None and canceled.completed_at
    assert 0.1 < canceled.metrics["predict_time"] < 1.0
    time.sleep(0.1)
    assert client.predictions.get(prediction.id).status == "canceled"


def test_cancel_of_a_finished_prediction_leaves_it_as_it_was(client: replicate.Client) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "done"}, wait=5)

    assert client.predictions.cancel(prediction.id).status == "succeeded"


def test_list_pages_newest_first_with_absolute_next_and_previous(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(list_page_size=2)
    created = [
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": f"p{i}"}).id for i in range(5)
    ]

    pages = list(replicate.paginate(client.predictions.list))

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [p.id for page in pages for p in page] == created[::-1]
    assert pages[0].next is not None and pages[0].next.startswith(f"{emu.base_url}/v1/predictions?cursor=")
    assert pages[-1].next is None and pages[0].previous is None
    back = client.predictions.list(pages[1].previous)
    assert [p.id for p in back] == [p.id for p in pages[0]]


def test_sync_mode_holds_the_create_until_done(client: replicate.Client, http: httpx.Client) -> None:
    response = http.post(
        "/v1/predictions",
        json={"version": IMAGE_MODEL_VERSION, "input": {"prompt": "sync"}},
        headers={"Prefer": "wait=5"},
    )

    assert response.status_code == 201
    assert response.headers["preference-applied"] == "wait"
    assert response.json()["status"] == "succeeded"
    assert response.json()["output"].endswith("/out-0.png")
    assert client.predictions.create(
        version=IMAGE_MODEL_VERSION, input={"prompt": "x"}, wait=True
    ).status == ("succeeded")


def test_sync_mode_answers_starting_when_the_wait_runs_out_and_run_falls_back_to_polling(
    emu: InProcessEmulator, client: replicate.Client, http: httpx.Client
) -> None:
    emu.configure(predict_seconds=1.5)
    started = time.monotonic()
    response = http.post(
        "/v1/predictions",
        json={"version": IMAGE_MODEL_VERSION, "input": {"prompt": "slow"}},
        headers={"Prefer": "wait=1"},
    )
    held = time.monotonic() - started

    assert 0.95 <= held < 1.4
    assert response.headers["preference-applied"] == "wait"
    assert response.json()["status"] == "starting"
    assert http.get(f"/v1/predictions/{response.json()['id']}").json()["status"] == "processing"
    output = client.run(f"{IMAGE_MODEL}:{IMAGE_MODEL_VERSION}", input={"prompt": "slow"}, wait=1)
    assert isinstance(output, str) and output.endswith("/out-0.png")


def test_model_and_version_lookup_describe_the_schema(client: replicate.Client) -> None:
    model = client.models.get(IMAGE_MODEL)
    version = model.versions.get(IMAGE_MODEL_VERSION)

    assert model.latest_version is not None and model.latest_version.id == IMAGE_MODEL_VERSION
    assert version.openapi_schema["components"]["schemas"]["Input"]["required"] == ["prompt"]
    assert version.openapi_schema["components"]["schemas"]["Output"]["format"] == "uri"


def test_client_finds_the_emulator_through_the_environment(
    emu: InProcessEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATE_BASE_URL", emu.base_url)
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)

    output = replicate.Client().run(f"{IMAGE_MODEL}:{IMAGE_MODEL_VERSION}", input={"prompt": "env"})

    assert output.startswith(emu.base_url)


def test_public_url_is_used_for_every_link(emu: InProcessEmulator, client: replicate.Client) -> None:
    emu.configure(public_url="http://emulator.internal:9000")

    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "links"}, wait=5)

    assert prediction.urls is not None and prediction.urls["get"].startswith(
        "http://emulator.internal:9000/v1/"
    )
    assert prediction.output.startswith("http://emulator.internal:9000/_delivery/")
