"""The `Settings` tests build the code location with: what a deployment would read from its environment,
pointed at the test's database."""

from __future__ import annotations

from typing import Any

from ai_pipeline.settings import Settings

TEST_TOKEN = "r8_test_token"
# Nothing listens on the discard port: a test that starts no emulator sees a call to Replicate refused,
# never answered by a real service.
UNREACHABLE_REPLICATE = "http://127.0.0.1:9"


def settings_for_tests(database_url: str, **overrides: Any) -> Settings:
    """Settings on the test's database; Replicate is unreachable unless `overrides` name an emulator."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "replicate_api_token": TEST_TOKEN,
        "replicate_base_url": UNREACHABLE_REPLICATE,
        **overrides,
    }
    return Settings(**values)
