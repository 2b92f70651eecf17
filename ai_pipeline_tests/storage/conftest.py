"""Fixtures for the storage tests: a real S3 endpoint (moto server) and a real HTTP file server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ai_pipeline_tests.storage.file_server import file_server
from ai_pipeline_tests.support.s3 import create_bucket, make_s3_client, s3_endpoint


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    with s3_endpoint() as url:
        yield url


@pytest.fixture(scope="session")
def s3_client(s3_endpoint_url: str) -> Any:
    return make_s3_client(s3_endpoint_url)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for one test."""
    return create_bucket(s3_client)


@pytest.fixture(scope="session")
def file_server_port() -> Iterator[int]:
    with file_server() as port:
        yield port
