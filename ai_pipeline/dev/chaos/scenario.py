"""What goes wrong during a chaos run, and how hard: one place to read (and change) the fault mix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Replicate misbehaving: with these rates well over a fifth of all calls fail, in every way we know of.
EMULATOR_FAULTS: dict[str, Any] = {
    # 5xx answers instead of the call's result, and connections closed without an answer (a dropped
    # create still creates: only the answer is lost, which is what makes duplicates possible).
    "http_error_rates": {"create": 0.18, "get": 0.16, "other": 0.15},
    "drop_rates": {"create": 0.07, "get": 0.06, "other": 0.07},
    "dropped_create_still_creates": True,
    # Predictions failing: content refusals (permanent) and capacity/cold-boot trouble (retryable).
    "model_failure_rates": {"nsfw": 0.02, "oom": 0.03, "cold_timeout": 0.02},
    "cold_timeout_seconds": 3.0,
    # Slow boots, and outputs deleted soon after the prediction ends: a prediction noticed late (a resume
    # after a crash) finds its output gone. Replicate deletes them after an hour, 12 default leases; here
    # 6 chaos leases. (Much shorter, and a crash's unrecorded create can no longer be found by its input
    # when resuming: see the report's limitations.)
    "cold_start_probability": 0.05,
    "cold_start_seconds": 8.0,
    "output_ttl": 120.0,
    # Output downloads failing or crawling.
    "download_error_rate": 0.12,
    "download_error_statuses": [500, 503, 404],
    "download_slow_rate": 0.05,
    "download_delay_seconds": 3.0,
    "predict_seconds": 1.0,
    "predict_jitter_seconds": 0.5,
    "predict_distribution": "lognormal",
}
# Limits outside the storm: above the pipeline's own create rate, so 429s come from the storm.
EMULATOR_LIMITS: dict[str, Any] = {
    "create_rate_per_minute": 6000.0,
    "create_burst": 500.0,
    "other_rate_per_minute": 30000.0,
    "other_burst": 2000.0,
}
# The 429 storm: Replicate throttles creates to a trickle for a while.
STORM_LIMITS: dict[str, Any] = {"create_rate_per_minute": 30.0, "create_burst": 5.0}
# Back to a well-behaved Replicate for the drain.
NO_FAULTS: dict[str, Any] = {
    "http_error_rates": {"create": 0.0, "get": 0.0, "other": 0.0},
    "drop_rates": {"create": 0.0, "get": 0.0, "other": 0.0},
    "model_failure_rates": {"nsfw": 0.0, "oom": 0.0, "cold_timeout": 0.0},
    "cold_start_probability": 0.0,
    "download_error_rate": 0.0,
    "download_slow_rate": 0.0,
}

MODELS = (
    "emulator/image",
    "emulator/images",
    "emulator/image-deployment",
    "emulator/text",
    "emulator/caption",
)


@dataclass(frozen=True)
class ChaosScenario:
    """One chaos run: how much work, which faults, for how long."""

    requests: int = 10_000
    seed: int = 1
    batches: int | None = None  # default: one per 2,500 requests, at least 2
    # Seconds between SIGKILLs of a run worker (uniform in the range); None: no kills.
    kill_interval: tuple[float, float] | None = (30.0, 60.0)
    # Seconds between terminations of the pipeline's Postgres backends; None: none.
    backend_kill_interval: float | None = 10.0
    # The 429 storm: when (seconds after the daemon starts) and for how long.
    storm_start: float = 20.0
    storm_seconds: float = 20.0
    # Faults stop when this share of the requests has ended, or after `max_fault_seconds`.
    faults_until_done: float = 0.9
    max_fault_seconds: float = 1800.0
    # Share of requests canceled (`cancel_requests`) while the faults go on.
    cancel_share: float = 0.005
    # Share of requests written by a user whose credits cover only half of them (the rest: rejected).
    poor_share: float = 0.02
    # Everything must have drained this long after the faults stop.
    drain_timeout: float = 900.0
    # Pipeline settings handed to the daemon (and so to its runs and sensors).
    pipeline_env: dict[str, str] = field(
        default_factory=lambda: {
            "AI_PIPELINE_LEASE_SECONDS": "20",
            "AI_PIPELINE_SWEEP_INTERVAL_SECONDS": "5",
            "AI_PIPELINE_RETRY_BACKOFF_SECONDS": "5",
            "AI_PIPELINE_SYNC_WAIT_SECONDS": "5",
            "AI_PIPELINE_CREATES_PER_MINUTE": "3000",
            # 50 per run as before the caps held across runs; with more than two batches the shared
            # cap binds, so killed workers' slots must come back too.
            "AI_PIPELINE_MAX_IN_FLIGHT": "100",
            "AI_PIPELINE_RUN_MAX_IN_FLIGHT": "50",
        }
    )

    @property
    def batch_count(self) -> int:
        return self.batches or max(2, self.requests // 2500)

    def emulator_options(self) -> dict[str, Any]:
        return {**EMULATOR_FAULTS, **EMULATOR_LIMITS, "seed": self.seed}

    def describe(self) -> str:
        """The fault mix in one paragraph (for RESULTS.md)."""
        f = EMULATOR_FAULTS
        kills = (
            f"a run worker SIGKILLed every {self.kill_interval[0]:g}-{self.kill_interval[1]:g} s"
            if self.kill_interval
            else "no worker kills"
        )
        backends = (
            f"the pipeline's Postgres backends terminated every {self.backend_kill_interval:g} s"
            if self.backend_kill_interval
            else "no backend terminations"
        )
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.pipeline_env.items()))
        return (
            f"HTTP 5xx on {_rates(f['http_error_rates'])} of calls; connections dropped on"
            f" {_rates(f['drop_rates'])} (a dropped create still creates); model failures"
            f" {_rates(f['model_failure_rates'])}; cold starts {f['cold_start_probability']:.0%}"
            f" ({f['cold_start_seconds']:g} s); outputs deleted {f['output_ttl']:g} s after the prediction"
            f" ends; downloads failing {f['download_error_rate']:.0%} and slow {f['download_slow_rate']:.0%}"
            f" ({f['download_delay_seconds']:g} s); a 429 storm of {self.storm_seconds:g} s (creates"
            f" throttled to {STORM_LIMITS['create_rate_per_minute']:g}/min); {kills}; {backends};"
            f" {self.cancel_share:.1%} of requests canceled mid-run; {self.poor_share:.0%} written by a user"
            f" short of credits. Faults stop once {self.faults_until_done:.0%} of requests ended; then the"
            f" sweeper, the sensor and the run-failure sensor drain the rest. Pipeline settings: {settings};"
            f" emulator seed {self.seed}."
        )


def _rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{kind} {rate:.0%}" for kind, rate in rates.items())
