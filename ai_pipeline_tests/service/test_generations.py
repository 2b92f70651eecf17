"""`/v1/generations` through the running service: submitted, paid at once, processed by the real sensor
and runs, read back with a presigned URL a browser can open; 402, 422, idempotent retries, cancels."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from click.testing import CliRunner
from sqlalchemy import Engine, text

from ai_pipeline.cli import main
from ai_pipeline.credits import balance
from ai_pipeline.db.invariants import check_invariants
from ai_pipeline.service.context import KEY_CACHE_SECONDS
from ai_pipeline.service.keys import create_key
from ai_pipeline.storage.uploads import object_check
from ai_pipeline_tests.service.conftest import App
from ai_pipeline_tests.support.pipeline import PipelineHarness
from ai_pipeline_tests.support.service import ApiProcess

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _requests_of(engine: Engine, user: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, status, credits_charged FROM generation_requests WHERE user_id = :u ORDER BY id"
            ),
            {"u": user},
        )
        return [dict(row._mapping) for row in rows]


def _ledger_of(engine: Engine, user: str) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT kind, delta FROM credit_ledger WHERE user_id = :u ORDER BY id"), {"u": user}
        )
        return [(row.kind, row.delta) for row in rows]


def test_a_submission_reaches_succeeded_and_its_presigned_url_returns_the_png(
    app: App, user: str, harness: PipelineHarness, engine: Engine
) -> None:
    answer = app.client.post(
        "/v1/generations", json={"user_id": user, "model": "emulator/image", "prompt": "a fox"}
    )
    assert answer.status_code == 201, answer.text
    submitted = answer.json()
    assert submitted["status"] == "pending" and submitted["credits_charged"] == 1
    assert answer.headers["location"] == f"/v1/generations/{submitted['id']}"
    with engine.connect() as conn:
        assert balance(conn, user) == 9  # debited at submission

    harness.drain()

    generation = app.client.get(f"/v1/generations/{submitted['id']}").json()
    assert generation["status"] == "succeeded", generation
    assert generation["credits_charged"] == 1 and generation["error"] is None
    [output] = generation["outputs"]
    assert output["uri"].startswith(f"s3://{harness.bucket}/")
    assert output["url"].startswith(harness.s3_endpoint_url) and "X-Amz-Signature" in output["url"]
    download = httpx.get(output["url"])  # no credentials: what a browser would do
    assert download.status_code == 200
    assert download.content.startswith(PNG_SIGNATURE)
    assert len(download.content) == output["size"]
    with engine.connect() as conn:
        assert balance(conn, user) == 9  # the run found the submission's debit: charged once
        assert check_invariants(conn, verify_object=object_check(harness.s3)).ok


def test_insufficient_credits_is_402_with_the_balance_and_price_and_records_nothing(
    app: App, engine: Engine, unique: str
) -> None:
    poor = f"poor-{unique}"
    answer = app.client.post(
        "/v1/generations", json={"user_id": poor, "model": "emulator/image", "prompt": "x"}
    )
    assert answer.status_code == 402
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["balance"] == 0 and problem["price"] == 1
    assert problem["type"].endswith("insufficient-credits") and problem["status"] == 402
    assert _requests_of(engine, poor) == [] and _ledger_of(engine, poor) == []


def test_a_retried_post_with_the_same_idempotency_key_returns_the_first_answer_and_makes_one_request(
    app: App, user: str, engine: Engine
) -> None:
    body = {"user_id": user, "model": "emulator/image", "input": {"prompt": "a crane", "seed": 3}}
    headers = {"Idempotency-Key": "order-1"}
    first = app.client.post("/v1/generations", json=body, headers=headers)
    again = app.client.post("/v1/generations", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    reused = app.client.post("/v1/generations", json={**body, "priority": 5}, headers=headers)
    assert reused.status_code == 422 and reused.json()["type"].endswith("idempotency-key-reused")
    assert len(_requests_of(engine, user)) == 1
    assert _ledger_of(engine, user) == [("grant", 10), ("debit", -1)]


def test_concurrent_retries_with_one_key_make_one_request(app: App, user: str, engine: Engine) -> None:
    body = {"user_id": user, "model": "emulator/image", "prompt": "at once"}

    def post(_: int) -> httpx.Response:
        return app.client.post("/v1/generations", json=body, headers={"Idempotency-Key": "same"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(16)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert len(_requests_of(engine, user)) == 1
    assert _ledger_of(engine, user) == [("grant", 10), ("debit", -1)]


def test_a_retried_post_with_the_same_external_id_returns_the_first_answer(
    app: App, user: str, engine: Engine, unique: str
) -> None:
    body = {"user_id": user, "model": "emulator/image", "prompt": "again", "external_id": f"ext-{unique}"}
    first = app.client.post("/v1/generations", json=body)
    again = app.client.post("/v1/generations", json=body)
    assert first.status_code == again.status_code == 201 and again.content == first.content
    other = app.client.post("/v1/generations", json={**body, "prompt": "something else"})
    assert other.status_code == 409
    assert other.json()["errors"][0]["code"] == "external_id_taken"
    assert len(_requests_of(engine, user)) == 1


def test_an_invalid_submission_is_422_naming_the_field_and_the_loaders_reason(app: App, user: str) -> None:
    good = {"user_id": user, "model": "emulator/image", "prompt": "x"}
    cases = {
        "user_id": ({**good, "user_id": "no spaces allowed"}, "invalid_user_id"),
        "model": ({**good, "model": "no/such-model"}, "unknown_model"),
        "prompt": ({**good, "prompt": "   "}, "empty_prompt"),
        "input": ({**good, "input": {"a": 1}}, "both_prompt_and_input"),
        "external_id": ({**good, "external_id": "load:x"}, "invalid_external_id"),
    }
    for field, (body, code) in cases.items():
        answer = app.client.post("/v1/generations", json=body)
        assert answer.status_code == 422, (field, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"] == [
            {"field": field, "code": code, "message": answer.json()["errors"][0]["message"]}
        ]


def test_canceling_a_pending_generation_ends_it_canceled_and_refunded(
    app: App, user: str, engine: Engine
) -> None:
    submitted = app.client.post(
        "/v1/generations", json={"user_id": user, "model": "emulator/image", "prompt": "stop"}
    )
    request_id = submitted.json()["id"]
    canceled = app.client.post(f"/v1/generations/{request_id}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled" and canceled.json()["credits_charged"] == 0
    with engine.connect() as conn:
        assert balance(conn, user) == 10
    assert _ledger_of(engine, user) == [("grant", 10), ("debit", -1), ("refund", 1)]


def test_a_wrong_or_revoked_key_is_401_and_another_applications_request_is_404(
    app: App, user: str, api: ApiProcess, engine: Engine, unique: str
) -> None:
    submitted = app.client.post(
        "/v1/generations", json={"user_id": user, "model": "emulator/image", "prompt": "mine"}
    )
    path = f"/v1/generations/{submitted.json()['id']}"
    assert httpx.get(api.base_url + path).status_code == 401
    assert (
        httpx.get(api.base_url + path, headers={"Authorization": "Bearer aip_not-a-key"}).status_code == 401
    )

    with engine.begin() as conn:
        other = create_key(conn, f"other-{unique}")
    with api.client(other.key) as stranger:
        assert stranger.get(path).status_code == 404
        assert stranger.post(path + "/cancel").status_code == 404
        assert stranger.get("/v1/generations").json()["data"] == []

    revoked = CliRunner().invoke(
        main,
        ["keys", "revoke", app.key_id],
        env={"AI_PIPELINE_DATABASE_URL": str(engine.url.render_as_string(hide_password=False))},
    )
    assert revoked.exit_code == 0, revoked.output
    time.sleep(KEY_CACHE_SECONDS)  # a key found is remembered this long
    answer = app.client.get(path)
    assert answer.status_code == 401 and answer.json()["type"].endswith("unauthorized")


def test_listing_pages_through_the_applications_generations_with_a_cursor(app: App, user: str) -> None:
    ids = [
        app.client.post(
            "/v1/generations", json={"user_id": user, "model": "emulator/image", "prompt": f"n{i}"}
        ).json()["id"]
        for i in range(5)
    ]
    seen: list[int] = []
    cursor = None
    while True:
        page = app.client.get(
            "/v1/generations", params={"limit": 2, **({"after": cursor} if cursor else {})}
        ).json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == sorted(ids, reverse=True)
