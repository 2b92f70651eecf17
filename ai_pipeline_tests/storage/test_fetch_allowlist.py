"""Allowlist entries: which hosts and ports each one lets through."""

from __future__ import annotations

import pytest

from ai_pipeline.settings import Settings
from ai_pipeline.storage.fetch import AllowedHost, FetchPolicy


@pytest.mark.parametrize(
    ("entry", "host", "port", "allowed"),
    [
        ("replicate.delivery", "replicate.delivery", 443, True),
        ("replicate.delivery", "pbxt.replicate.delivery", 443, False),
        ("*.replicate.delivery", "pbxt.replicate.delivery", 443, True),
        ("*.replicate.delivery", "a.b.replicate.delivery", 443, True),
        ("*.replicate.delivery", "replicate.delivery", 443, False),
        ("*.replicate.delivery", "evilreplicate.delivery", 443, False),
        ("*.replicate.delivery", "replicate.delivery.evil.com", 443, False),
        ("Replicate.Delivery.", "replicate.delivery", 443, True),
        ("127.0.0.1:8787", "127.0.0.1", 8787, True),
        ("127.0.0.1:8787", "127.0.0.1", 8788, False),
        ("127.0.0.1", "127.0.0.1", 9999, True),
        ("[::1]:8787", "::1", 8787, True),
        ("0:0::1", "::1", 80, True),
    ],
)
def test_entry_matches_exactly_the_hosts_it_names(entry: str, host: str, port: int, allowed: bool) -> None:
    assert AllowedHost.parse(entry).matches(host, port) is allowed


@pytest.mark.parametrize(
    ("entry", "trusted"),
    [
        ("127.0.0.1:8787", True),
        ("localhost", True),
        ("::1", True),
        ("replicate.delivery", False),
        ("*.replicate.delivery", False),
        ("localhost.example", False),
    ],
)
def test_only_ip_literals_and_localhost_may_reach_private_addresses(entry: str, trusted: bool) -> None:
    assert AllowedHost.parse(entry).trusts_private_addresses is trusted


@pytest.mark.parametrize("entry", ["", "*.", "host:notaport", "host:0", "[::1]:99999"])
def test_malformed_entries_fail_when_the_policy_is_built(entry: str) -> None:
    with pytest.raises(ValueError):
        FetchPolicy((entry,), max_bytes=1, timeout_seconds=1)


def test_policy_from_settings_uses_the_configured_hosts_cap_and_timeout() -> None:
    settings = Settings(output_hosts=("127.0.0.1:8787",), output_max_bytes=123, output_timeout_seconds=4.5)
    policy = FetchPolicy.from_settings(settings)
    assert (policy.allowed_hosts, policy.max_bytes, policy.timeout_seconds) == (("127.0.0.1:8787",), 123, 4.5)
