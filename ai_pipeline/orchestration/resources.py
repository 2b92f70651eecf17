"""The resources of the code location, all made from one `Settings`.

`settings`, `database` (`db.engine.Database`) and `replicate` are plain objects (Dagster's
`ResourceParam`): they have no run config, so nothing of theirs (the token, a database password) can
reach the launchpad, run config, logs or the UI. `s3` is dagster-aws's S3 resource handing out the
pipeline's tuned client; credentials come from boto3's own chain (environment, profile, instance role).
"""

from __future__ import annotations

from typing import Any

from dagster_aws.s3 import S3Resource
from replicate.client import Client

from ai_pipeline.db.engine import Database
from ai_pipeline.replicate.predictions import make_client
from ai_pipeline.settings import Settings
from ai_pipeline.storage.client import create_s3_client


class Replicate:
    """Makes clients of the official Replicate client with the configured token and base URL."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def client(self, max_connections: int = 200) -> Client:
        return make_client(
            self._settings.token, self._settings.replicate_base_url, max_connections=max_connections
        )


class OutputsS3Resource(S3Resource):
    """dagster-aws's S3 resource, handing out the pipeline's tuned client (see `storage.client`)."""

    def get_client(self) -> Any:
        if self.profile_name or self.use_unsigned_session or self.aws_session_token:
            return super().get_client()  # configurations the tuned client does not cover
        return create_s3_client(
            endpoint_url=self.endpoint_url,
            region_name=self.region_name or "us-east-1",
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of this deployment, all from `settings`."""
    return {
        "settings": settings,
        "database": Database(settings),
        "replicate": Replicate(settings),
        "s3": OutputsS3Resource(endpoint_url=settings.aws_endpoint_url, region_name=settings.aws_region),
    }
