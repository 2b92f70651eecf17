"""The chaos suite's short variant: 1,000 requests through the real daemon under faults, SIGKILLed run
workers and terminated backends; every invariant holds afterwards. Select with `-m chaos`."""

from __future__ import annotations

import pytest

from ai_pipeline.dev.chaos import ChaosScenario, run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_thousand_requests_under_faults_and_kills_end_terminal_with_money_right() -> None:
    scenario = ChaosScenario(
        requests=1000,
        seed=7,
        kill_interval=(10.0, 20.0),
        backend_kill_interval=5.0,
        storm_start=10.0,
        storm_seconds=10.0,
        drain_timeout=150.0,
    )

    result = run_chaos(scenario)

    figures = result.figures
    assert result.ok, result.problems
    assert result.invariants.ok, result.invariants.summary()
    assert (figures.lost, figures.double_debits, figures.missing_refunds, figures.orphaned_leases) == (
        0,
        0,
        0,
        0,
    )
    assert figures.duplicate_share <= 0.001
    # The faults really happened.
    assert figures.worker_kills >= 1 and figures.backend_terminations >= 1
    assert figures.failed_call_share >= 0.2
    assert (
        figures.succeeded + figures.failed_refunded + figures.rejected + figures.canceled
        == 1000 + figures.retries
    )
