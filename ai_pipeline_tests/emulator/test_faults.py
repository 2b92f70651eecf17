"""Injected faults: HTTP errors, dropped connections, model failures, cold starts, download faults."""

from __future__ import annotations

import time

import httpx
import pytest
import replicate

from ai_pipeline.dev.emulator import IMAGE_MODEL, IMAGE_MODEL_VERSION
from ai_pipeline.dev.emulator.faults import COLD_TIMEOUT_ERROR, NSFW_ERROR, OOM_ERROR
from ai_pipeline.dev.emulator.server import InProcessEmulator

IMAGE = f"{IMAGE_MODEL}:{IMAGE_MODEL_VERSION}"


def test_503_on_get_is_retried_by_the_client_transparently(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "x"})
    emu.configure(scripted_faults={"get": [503, 503]})

    assert client.predictions.get(prediction.id).id == prediction.id

    stats = emu.stats()
    assert stats["faults_sent"] == {"http_503": 2}
    assert stats["faults_by_endpoint"] == {"get": {"http_503": 2}}
    assert stats["requests_by_kind"]["get"] == 3


def test_500_on_get_is_not_retried(emu: InProcessEmulator, client: replicate.Client) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "x"})
    emu.configure(scripted_faults={"get": [500]})

    with pytest.raises(replicate.exceptions.ReplicateError) as raised:
        client.predictions.get(prediction.id)

    assert raised.value.status == 500
    assert emu.stats()["requests_by_kind"]["get"] == 1


def test_gateway_errors_come_as_html_like_from_the_edge(emu: InProcessEmulator, http: httpx.Client) -> None:
    emu.configure(scripted_faults={"other": [502]})

    response = http.get("/v1/predictions")

    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html"
    assert "502 Bad Gateway" in response.text


def test_random_http_errors_follow_the_configured_rate_and_statuses(
    emu: InProcessEmulator, http: httpx.Client
) -> None:
    emu.configure(http_error_rates={"other": 0.3}, http_error_statuses=[500, 504])

    statuses = [http.get("/v1/predictions").status_code for _ in range(200)]

    errors = [status for status in statuses if status != 200]
    assert 35 <= len(errors) <= 85
    assert set(errors) == {500, 504}
    assert sum(emu.stats()["faults_sent"].values()) == len(errors)


def test_random_faults_replay_identically_from_the_seed(emu: InProcessEmulator, http: httpx.Client) -> None:
    emu.configure(http_error_rates={"other": 0.5})
    first = [http.get("/v1/predictions").status_code for _ in range(30)]
    emu.reset()
    emu.configure(http_error_rates={"other": 0.5})

    assert [http.get("/v1/predictions").status_code for _ in range(30)] == first


def test_dropped_connection_is_seen_by_httpx_as_a_protocol_error(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "x"})
    emu.configure(scripted_faults={"get": ["drop"]})

    with pytest.raises(httpx.RemoteProtocolError):
        client.predictions.get(prediction.id)

    assert emu.stats()["faults_sent"] == {"drop": 1}
    assert client.predictions.get(prediction.id).id == prediction.id  # the next call works again


def test_dropped_create_still_creates_the_prediction(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(scripted_faults={"create": ["drop"]})

    with pytest.raises(httpx.RemoteProtocolError):
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "lost answer"})

    listed = client.predictions.list().results
    assert [p.input for p in listed] == [{"prompt": "lost answer"}]
    assert emu.stats()["predictions_created"] == 1


def test_dropped_create_can_drop_before_creating(emu: InProcessEmulator, client: replicate.Client) -> None:
    emu.configure(scripted_faults={"create": ["drop"]}, dropped_create_still_creates=False)

    with pytest.raises(httpx.RemoteProtocolError):
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "never made"})

    assert emu.stats()["predictions_created"] == 0


def test_random_drops_follow_the_configured_rate(emu: InProcessEmulator) -> None:
    emu.configure(drop_rates={"other": 0.25})
    dropped = 0
    with httpx.Client(base_url=emu.base_url, headers={"Authorization": "Bearer t"}, trust_env=False) as http:
        for _ in range(100):
            try:
                http.get("/v1/predictions")
            except httpx.RemoteProtocolError:
                dropped += 1

    assert 10 <= dropped <= 40
    assert emu.stats()["faults_sent"]["drop"] == dropped


def test_nsfw_prompt_fails_with_replicates_text(client: replicate.Client) -> None:
    with pytest.raises(replicate.exceptions.ModelError) as raised:
        client.run(IMAGE, input={"prompt": "a portrait fail:nsfw"})

    prediction = raised.value.prediction
    assert prediction.status == "failed"
    assert (
        prediction.error
        == NSFW_ERROR
        == "NSFW content detected. Try running it again, or try a different prompt."
    )
    assert prediction.output is None
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0  # billed


def test_oom_prompt_fails_part_way_with_e1001(client: replicate.Client) -> None:
    prediction = client.predictions.create(
        version=IMAGE_MODEL_VERSION, input={"prompt": "huge fail:oom"}, wait=5
    )

    assert prediction.status == "failed"
    assert prediction.error == OOM_ERROR
    assert prediction.error.startswith("CUDA out of memory.") and prediction.error.endswith("(E1001)")
    assert "torch.cuda.OutOfMemoryError" in (prediction.logs or "")
    assert prediction.metrics is not None and prediction.metrics["predict_time"] < 0.2


def test_cold_timeout_prompt_sits_in_starting_then_fails_with_e6716(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(cold_timeout_seconds=0.5)
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "fail:cold-timeout"})
    time.sleep(0.3)
    assert client.predictions.get(prediction.id).status == "starting"

    prediction.wait()

    assert prediction.status == "failed"
    assert prediction.error == COLD_TIMEOUT_ERROR
    assert prediction.started_at is None
    assert prediction.metrics is not None and "predict_time" not in prediction.metrics


def test_random_model_failures_use_the_real_texts(emu: InProcessEmulator, client: replicate.Client) -> None:
    emu.configure(model_failure_rates={"oom": 1.0})

    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "ordinary"}, wait=5)

    assert prediction.error == OOM_ERROR
    stats = emu.stats()
    assert stats["faults_sent"] == {"model_failure_oom": 1}
    assert stats["predictions_by_status"]["failed"] == 1


def test_cold_start_keeps_a_prediction_starting_and_is_not_billed(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(cold_start_probability=1.0, cold_start_seconds=0.6)
    prediction = client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "cold"})
    time.sleep(0.4)
    assert client.predictions.get(prediction.id).status == "starting"

    prediction.wait()

    assert prediction.status == "succeeded"
    assert prediction.metrics is not None
    assert prediction.metrics["total_time"] - prediction.metrics["predict_time"] >= 0.6
    assert emu.stats()["cold_starts"] == 1


def test_predict_time_follows_the_configured_latency(
    emu: InProcessEmulator, client: replicate.Client
) -> None:
    emu.configure(predict_seconds=0.3, predict_jitter_seconds=0.1)
    predictions = [
        client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": f"t{i}"}) for i in range(8)
    ]
    for prediction in predictions:
        prediction.wait()

    times = [p.metrics["predict_time"] for p in predictions if p.metrics]
    assert all(0.19 <= t <= 0.41 for t in times)
    assert len(set(times)) > 1


def test_download_faults_fail_or_slow_the_file(emu: InProcessEmulator, client: replicate.Client) -> None:
    url = client.run(IMAGE, input={"prompt": "file"})
    emu.configure(scripted_faults={"download": [500, 404, "slow"]}, download_delay_seconds=0.4)

    statuses = [httpx.get(url, trust_env=False).status_code for _ in range(2)]
    started = time.monotonic()
    slow = httpx.get(url, trust_env=False)
    took = time.monotonic() - started

    assert statuses == [500, 404]
    assert slow.status_code == 200 and took >= 0.4
    stats = emu.stats()
    assert stats["faults_sent"] == {"download_500": 1, "download_404": 1, "download_slow": 1}
    assert stats["downloads"] == 1
    assert stats["downloads_by_status"] == {"200": 1, "404": 1, "500": 1}


def test_random_download_errors_follow_the_rate(emu: InProcessEmulator, client: replicate.Client) -> None:
    url = client.run(IMAGE, input={"prompt": "file"})
    emu.configure(download_error_rate=1.0, download_error_statuses=[503])

    assert httpx.get(url, trust_env=False).status_code == 503
