"""A run worker in its own process, for tests that SIGKILL it or run several at once: one `BatchRunner`
working through a batch.

    python -m ai_pipeline_tests.crash_safety.worker '{"database_url": ..., "batch": ..., ...}'

It is exactly what a Dagster run does inside `batch_generations`, without Dagster's start-up cost.
`crashes.start_worker` starts one on a test harness's parts.
"""

from __future__ import annotations

import json
import sys

from ai_pipeline.db.engine import engine_for_url
from ai_pipeline.processing import BatchRunner
from ai_pipeline.replicate.predictions import make_client
from ai_pipeline.settings import Settings
from ai_pipeline_tests.support.s3 import make_s3_client


def main(raw: str) -> None:
    options = json.loads(raw)
    settings = Settings(
        s3_bucket=options["bucket"],
        s3_prefix="test",
        output_hosts=(options["output_host"],),
        output_max_bytes=10 * 1024 * 1024,
        output_timeout_seconds=30,
        max_in_flight=options.get("max_in_flight", 20),
        run_max_in_flight=options.get("run_max_in_flight"),
        lease_seconds=options["lease_seconds"],
        creates_per_minute=6000,
        sync_wait_seconds=options.get("sync_wait_seconds", 1),
    )
    runner = BatchRunner(
        engine_for_url(options["database_url"]),
        make_client(options["token"], options["replicate_base_url"]),
        make_s3_client(options["s3_endpoint_url"]),
        settings,
        owner=options["owner"],
    )
    print(json.dumps(dict(runner.run(options["batch"]).outcomes)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
