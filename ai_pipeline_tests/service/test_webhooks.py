"""Webhooks out through the running service: exactly the signed events a receiver should get, retried
until acknowledged, and still delivered when the service was killed between the status change and the
delivery (the event is written with the status, in the same transaction)."""

from __future__ import annotations

import time

from sqlalchemy import Engine, text
from standardwebhooks import Webhook

from ai_pipeline_tests.service.conftest import App
from ai_pipeline_tests.support.pipeline import PipelineHarness
from ai_pipeline_tests.support.service import ApiProcess, Delivery, WebhookReceiver


def _verified(app: App, deliveries: list[Delivery]) -> dict[str, dict[str, object]]:
    """Each delivery's event by its webhook-id, after checking its signature with the app's secret."""
    events = {}
    for delivery in deliveries:
        event = Webhook(app.webhook_secret).verify(delivery.body, delivery.headers)
        events[delivery.headers["webhook-id"]] = event
    return events


def _submit(app: App, user: str, prompt: str, webhook_url: str | None) -> int:
    body = {"user_id": user, "model": "emulator/image", "prompt": prompt}
    if webhook_url:
        body["webhook_url"] = webhook_url
    answer = app.client.post("/v1/generations", json=body)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _outbox(engine: Engine, event_id: str) -> dict[str, object] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM webhook_outbox WHERE event_id = :e"), {"e": event_id}).first()
        return None if row is None else dict(row._mapping)


def _delivered(engine: Engine, event_id: str, timeout: float = 10.0) -> dict[str, object]:
    """The outbox row once the worker has recorded the acknowledgement (it does so after the receiver
    answered, so a test that saw the delivery arrive must wait for it)."""
    deadline = time.monotonic() + timeout
    while (row := _outbox(engine, event_id)) is None or row["delivered_at"] is None:
        assert time.monotonic() < deadline, f"{event_id} never recorded as delivered: {row}"
        time.sleep(0.05)
    return row


def test_the_receiver_gets_exactly_the_signed_events_it_should(
    app: App, user: str, harness: PipelineHarness, receiver: WebhookReceiver
) -> None:
    hook = receiver.url()
    succeeds = _submit(app, user, "a fox", hook)
    fails = _submit(app, user, "fail:nsfw a fox", hook)
    _submit(app, user, "no webhook for this one", None)
    rows = [{"user_id": user, "model": "emulator/image", "prompt": f"batch {i}"} for i in range(2)]
    batch = app.client.post("/v1/batches", json={"requests": rows, "webhook_url": hook}).json()

    harness.drain()

    events = _verified(app, receiver.wait_for(3))
    time.sleep(1.5)  # nothing more arrives
    assert len(receiver.deliveries) == 3
    total = batch["request_counts"]["total"]
    assert set(events) == {f"gen_{succeeds}", f"gen_{fails}", f"batch_{batch['id']}_{total}"}
    assert events[f"gen_{succeeds}"]["type"] == "generation.succeeded"
    assert events[f"gen_{succeeds}"]["data"]["outputs"][0]["uri"].startswith("s3://")
    assert events[f"gen_{fails}"]["type"] == "generation.failed"
    assert events[f"gen_{fails}"]["data"]["credits_charged"] == 0
    completed = events[f"batch_{batch['id']}_{total}"]
    assert completed["type"] == "batch.completed" and completed["data"]["request_counts"]["succeeded"] == 2


def test_an_unacknowledged_delivery_is_retried_with_the_same_id_and_body(
    app: App, user: str, harness: PipelineHarness, receiver: WebhookReceiver, engine: Engine
) -> None:
    receiver.answers = [500, 503]
    request_id = _submit(app, user, "a fox", receiver.url())
    harness.drain()
    first, second, third = receiver.wait_for(3, timeout=60)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert first.body == second.body == third.body
    assert len(_verified(app, [first, second, third])) == 1
    assert _delivered(engine, f"gen_{request_id}")["attempts"] == 3


def test_events_written_while_the_service_is_down_are_delivered_once_it_is_back(
    app: App, user: str, harness: PipelineHarness, receiver: WebhookReceiver, api: ApiProcess, engine: Engine
) -> None:
    request_id = _submit(app, user, "a fox", receiver.url())
    api.kill()
    try:
        harness.drain()  # the status changes while nothing can deliver
        row = _outbox(engine, f"gen_{request_id}")
        assert row is not None and row["delivered_at"] is None
        assert receiver.deliveries == []
    finally:
        api.start()
    events = _verified(app, receiver.wait_for(1))
    assert (
        list(events) == [f"gen_{request_id}"]
        and events[f"gen_{request_id}"]["type"] == "generation.succeeded"
    )


def test_a_delivery_cut_off_by_a_killed_service_is_made_again(
    app: App, user: str, harness: PipelineHarness, receiver: WebhookReceiver, api: ApiProcess, engine: Engine
) -> None:
    receiver.hold.clear()  # the receiver takes the POST but never answers: no acknowledgement
    request_id = _submit(app, user, "a fox", receiver.url())
    harness.drain()
    receiver.wait_for(1)
    api.kill()
    api.start()
    receiver.hold.set()
    deliveries = receiver.wait_for(2, timeout=60)  # once the killed worker's lease has run out
    assert {d.headers["webhook-id"] for d in deliveries} == {f"gen_{request_id}"}
    assert deliveries[0].body == deliveries[1].body
    _verified(app, deliveries)
    _delivered(engine, f"gen_{request_id}")


def test_a_webhook_url_off_the_allow_list_is_refused_at_submission(app: App, user: str) -> None:
    for url in (
        "http://example.com/hook",
        "http://10.0.0.8/hook",
        "ftp://127.0.0.1/hook",
        "http://u:p@127.0.0.1/",
    ):
        body = {"user_id": user, "model": "emulator/image", "prompt": "x", "webhook_url": url}
        answer = app.client.post("/v1/generations", json=body)
        assert answer.status_code == 422, url
        assert answer.json()["errors"][0]["field"] == "webhook_url"


def test_the_event_is_written_in_the_transaction_that_ends_the_request(
    app: App, user: str, engine: Engine, receiver: WebhookReceiver
) -> None:
    """A run killed before its settle commits leaves no event (the request is redone, one event later);
    once the settle commits, the event is there whatever happens to the process next."""
    from ai_pipeline.db.settling import mark_canceled

    request_id = _submit(app, user, "a fox", receiver.url())
    with engine.connect() as conn:
        transaction = conn.begin()
        assert mark_canceled(conn, request_id, None, "ended, then the process died before COMMIT")
        transaction.rollback()
    assert _outbox(engine, f"gen_{request_id}") is None
    with engine.begin() as conn:
        assert mark_canceled(conn, request_id, None, "ended and committed")
    row = _outbox(engine, f"gen_{request_id}")
    assert row is not None and row["event_type"] == "generation.canceled"
