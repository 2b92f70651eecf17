"""The API as it runs: `ai-pipeline serve` in its own process, in front of a database, S3 endpoint and
emulator that the real sensor and runs work on (`harness.drain()`), with a webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from ai_pipeline.credits import grant
from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.service.keys import create_key
from ai_pipeline_tests.support.databases import migrated_database
from ai_pipeline_tests.support.harness_fixtures import _fresh_emulator, harness  # noqa: F401
from ai_pipeline_tests.support.pipeline import PipelineHarness
from ai_pipeline_tests.support.service import ApiProcess, WebhookReceiver, api_process, service_environment


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of the module's own: its sensor drains every batch with due work."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    return engine_for_url(database_url, pool_size=20)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(autouse=True)
def _fresh_receiver(receiver: WebhookReceiver) -> None:
    receiver.clear()
    receiver.hold.set()


@pytest.fixture(scope="module")
def api(
    harness: PipelineHarness,  # noqa: F811
    receiver: WebhookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiProcess]:
    environment = service_environment(harness, AI_PIPELINE_WEBHOOK_HOSTS=f"127.0.0.1:{receiver.port}")
    log = tmp_path_factory.mktemp("api") / "serve.log"
    with api_process(environment, log) as api:
        yield api


@dataclass
class App:
    """An application with a key, and a client that sends it."""

    id: str
    key: str
    key_id: str
    webhook_secret: str
    client: httpx.Client


@pytest.fixture
def app(engine: Engine, api: ApiProcess, unique: str) -> Iterator[App]:
    with engine.begin() as conn:
        new = create_key(conn, f"app-{unique}")
    with api.client(new.key) as client:
        yield App(new.application_id, new.key, new.id, new.webhook_secret, client)


@pytest.fixture
def user(engine: Engine, unique: str) -> str:
    """A user with 10 image credits."""
    name = f"user-{unique}"
    with engine.begin() as conn:
        grant(conn, name, 10)
    return name


def log_of(api: ApiProcess) -> str:
    return Path(api.log_path).read_text()
