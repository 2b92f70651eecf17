"""Error answers with Replicate's status codes and problem+json bodies: 401, 402, 404, 422."""

from __future__ import annotations

import httpx
import pytest
import replicate

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION, IMAGES_MODEL
from ai_pipeline.dev.emulator.server import InProcessEmulator

from .conftest import TOKEN


def test_missing_token_is_401_problem_json(emu: InProcessEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    anonymous = replicate.Client(base_url=emu.base_url)

    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        anonymous.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "x"})

    assert raised.value.status == 401
    assert raised.value.title == "Unauthenticated"
    assert raised.value.detail == "You did not pass a valid authentication token"
    response = httpx.get(f"{emu.base_url}/v1/predictions", trust_env=False)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert emu.stats()["predictions_created"] == 0


def test_only_the_configured_token_is_accepted_when_one_is_required(emu: InProcessEmulator) -> None:
    emu.configure(token="r8_the-right-one")
    wrong = replicate.Client(api_token="r8_another", base_url=emu.base_url)
    right = replicate.Client(api_token="r8_the-right-one", base_url=emu.base_url)

    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        wrong.predictions.list()

    assert raised.value.status == 401
    assert right.predictions.list().results == []


def test_an_account_whose_billing_stopped_is_refused_creates_and_may_still_read(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(billing_required=True)

    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.models.predictions.create(model=IMAGES_MODEL, input={"prompt": "x"})

    assert raised.value.status == 402
    assert raised.value.title == "Billing required"
    assert client.predictions.list().results == []
    assert client.accounts.current().username == "emulator"
    emu.configure(billing_required=False)
    assert client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "x"}).id
    assert emu.stats()["predictions_created"] == 1


def test_unknown_version_is_422_invalid_version(client: replicate.Client) -> None:
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.predictions.create(version="0" * 64, input={"prompt": "x"})

    assert raised.value.status == 422
    assert raised.value.title == "Invalid version or not permitted"


def test_missing_required_input_is_422_with_invalid_fields(http: httpx.Client) -> None:
    response = http.post("/v1/predictions", json={"version": IMAGE_MODEL_VERSION, "input": {"seed": 1}})

    assert response.status_code == 422
    assert response.json() == {
        "title": "Input validation failed",
        "detail": "- input: prompt is required\n",
        "status": 422,
        "invalid_fields": [{"type": "required", "field": "input", "description": "prompt is required"}],
    }


def test_out_of_range_and_mistyped_inputs_are_422(client: replicate.Client, http: httpx.Client) -> None:
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.models.predictions.create(model=IMAGES_MODEL, input={"prompt": "x", "num_outputs": 5})
    mistyped = http.post("/v1/predictions", json={"version": IMAGE_MODEL_VERSION, "input": {"prompt": 3}})

    assert raised.value.status == 422
    assert "input.num_outputs: Must be less than or equal to 4" in (raised.value.detail or "")
    assert mistyped.status_code == 422
    assert mistyped.json()["invalid_fields"][0]["field"] == "input.prompt"


def test_unknown_prediction_model_and_deployment_are_404(client: replicate.Client) -> None:
    for call in (
        lambda: client.predictions.get("doesnotexist0000000000000a"),
        lambda: client.models.get("emulator/nope"),
        lambda: client.deployments.predictions.create("emulator/nope", input={"prompt": "x"}),
    ):
        with pytest.raises(replicate.exceptions.ReplicateError) as raised:
            call()
        assert raised.value.status == 404


def test_unknown_webhook_event_is_422(client: replicate.Client) -> None:
    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.predictions.create(
            version=IMAGE_MODEL_VERSION,
            input={"prompt": "x"},
            webhook="http://127.0.0.1:9/hook",
            webhook_events_filter=["finished"],
        )

    assert raised.value.status == 422


def test_token_header_scheme_is_checked_before_anything_else(emu: InProcessEmulator) -> None:
    response = httpx.post(
        f"{emu.base_url}/v1/predictions",
        json={"version": "nope", "input": {}},
        headers={"Authorization": f"Basic {TOKEN}"},
        trust_env=False,
    )

    assert response.status_code == 401
