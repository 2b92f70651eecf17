"""A real S3 endpoint for tests: moto's server on 127.0.0.1, speaking the S3 protocol over HTTP.

    with s3_endpoint() as endpoint_url:
        s3 = make_s3_client(endpoint_url)
        bucket = create_bucket(s3)

moto keeps its state per process, not per server: every server started in one test session sees the
same buckets, so give each test its own bucket (`create_bucket` without a name does).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.server import ThreadedMotoServer

from ai_pipeline.storage.client import create_s3_client

TEST_REGION = "us-east-1"


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server on a free port of 127.0.0.1, yield its URL, stop it afterwards."""
    # werkzeug logs every request at INFO; that drowns test output and costs CPU.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_s3_client(endpoint_url: str) -> Any:
    """The pipeline's S3 client (`create_s3_client`), pointed at `endpoint_url` with dummy credentials."""
    return create_s3_client(
        endpoint_url=endpoint_url,
        region_name=TEST_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_bucket(s3_client: Any, name: str | None = None) -> str:
    """Create a bucket (a unique name unless one is given) and return its name."""
    bucket = name or f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket
