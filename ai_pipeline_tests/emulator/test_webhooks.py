"""Signed webhooks: verified with ``replicate.webhooks.validate``, filtered by event, terminal retried."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import replicate
from replicate.webhook import InvalidSignatureError

from ai_pipeline.dev.emulator import IMAGE_MODEL_VERSION, TEXT_MODEL_VERSION
from ai_pipeline.dev.emulator.server import InProcessEmulator

from .conftest import WebhookReceiver


def test_completed_webhook_is_signed_with_the_default_secret(
    client: replicate.Client, receiver: WebhookReceiver
) -> None:
    prediction = client.predictions.create(
        version=IMAGE_MODEL_VERSION, input={"prompt": "hooked"}, webhook=receiver.url
    )

    delivery = receiver.wait_for(1)[-1]
    secret = client.webhooks.default.secret()

    assert secret.key.startswith("whsec_")
    replicate.webhooks.validate(headers=delivery.headers, body=delivery.body, secret=secret, tolerance=300)
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.json["id"] == prediction.id
    assert delivery.json["status"] == "succeeded"
    assert delivery.json["output"].endswith("/out-0.png")


def test_a_tampered_webhook_body_fails_validation(
    client: replicate.Client, receiver: WebhookReceiver
) -> None:
    client.predictions.create(version=IMAGE_MODEL_VERSION, input={"prompt": "hooked"}, webhook=receiver.url)
    delivery = receiver.wait_for(1)[-1]
    tampered = json.dumps({**delivery.json, "output": "http://evil.example/x.png"}, separators=(",", ":"))

    with pytest.raises(InvalidSignatureError):
        replicate.webhooks.validate(
            headers=delivery.headers, body=tampered, secret=client.webhooks.default.secret(), tolerance=300
        )


def test_default_filter_sends_output_while_processing_and_completed_at_the_end(
    emu: InProcessEmulator, client: replicate.Client, receiver: WebhookReceiver
) -> None:
    emu.configure(predict_seconds=1.2)
    client.predictions.create(
        version=TEXT_MODEL_VERSION, input={"prompt": "tokens", "max_tokens": 12}, webhook=receiver.url
    )
    receiver.wait_for(3)
    emu_stats = _wait_for_terminal_webhook(emu)

    bodies = [delivery.json for delivery in receiver.deliveries]
    assert "starting" not in {body["status"] for body in bodies}  # no 'start' event by default
    processing = [body for body in bodies if body["status"] == "processing"]
    assert len(processing) >= 1
    assert all(0 < len(body["output"]) < 12 for body in processing)
    assert bodies[-1]["status"] == "succeeded" and len(bodies[-1]["output"]) == 12
    assert emu_stats["webhooks_by_event"]["completed"] == 1
    assert emu_stats["webhooks_by_event"]["output"] == len(processing)


def test_events_filter_start_and_completed_sends_exactly_those(
    emu: InProcessEmulator, client: replicate.Client, receiver: WebhookReceiver
) -> None:
    emu.configure(predict_seconds=0.8)
    client.predictions.create(
        version=TEXT_MODEL_VERSION,
        input={"prompt": "two events"},
        webhook=receiver.url,
        webhook_events_filter=["start", "completed"],
    )

    receiver.wait_for(2)
    stats = _wait_for_terminal_webhook(emu)

    assert [d.json["status"] for d in receiver.deliveries] == ["starting", "succeeded"]
    assert stats["webhooks_by_event"] == {"start": 1, "completed": 1}


def test_terminal_webhook_is_retried_with_the_same_id_until_accepted(
    emu: InProcessEmulator, client: replicate.Client, receiver: WebhookReceiver
) -> None:
    emu.configure(webhook_retry_initial_seconds=0.1)
    receiver.fail_first = 2
    client.predictions.create(
        version=IMAGE_MODEL_VERSION,
        input={"prompt": "retry me"},
        webhook=receiver.url,
        webhook_events_filter=["completed"],
    )

    receiver.wait_for(1)

    assert receiver.answered == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
    assert len({d.body for d in receiver.deliveries}) == 1
    # The receiver has answered; the emulator counts the delivery once it has read that answer.
    stats = _wait_for_stats(emu, lambda stats: stats["webhooks_delivered"] >= 1)
    assert stats["webhook_attempts"] == 3
    assert stats["webhooks_delivered"] == 1
    assert stats["webhook_failures"] == 2


def test_non_terminal_webhooks_are_not_retried(
    emu: InProcessEmulator, client: replicate.Client, receiver: WebhookReceiver
) -> None:
    emu.configure(webhook_retry_initial_seconds=0.05)
    receiver.fail_first = 1
    client.predictions.create(
        version=IMAGE_MODEL_VERSION,
        input={"prompt": "start fails"},
        webhook=receiver.url,
        webhook_events_filter=["start", "completed"],
    )

    receiver.wait_for(1)

    assert [d.json["status"] for d in receiver.deliveries] == ["starting", "succeeded"]
    assert receiver.answered == [500, 200]


def test_canceled_prediction_sends_its_completed_webhook(
    emu: InProcessEmulator, client: replicate.Client, receiver: WebhookReceiver
) -> None:
    emu.configure(predict_seconds=10)
    prediction = client.predictions.create(
        version=IMAGE_MODEL_VERSION,
        input={"prompt": "stop"},
        webhook=receiver.url,
        webhook_events_filter=["completed"],
    )

    client.predictions.cancel(prediction.id)

    assert receiver.wait_for(1, timeout=2)[0].json["status"] == "canceled"


def _wait_for_terminal_webhook(emu: InProcessEmulator) -> dict:
    return _wait_for_stats(emu, lambda stats: bool(stats["webhooks_by_event"].get("completed")))


def _wait_for_stats(emu: InProcessEmulator, condition: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = emu.stats()
        if condition(stats):
            return stats
        time.sleep(0.02)
    raise AssertionError(f"the emulator's stats never met the condition: {emu.stats()}")
