"""What can go wrong, and when: model failure texts, the magic prompts, and the seeded fault decisions.

All randomness comes from one ``random.Random`` seeded from ``--seed`` so a run can be replayed.
Scripted faults (``scripted_faults`` in the config) are served first, in order, so tests can ask for
"the next GET answers 503 twice" without relying on chance.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from ai_pipeline.dev.emulator.config import EmulatorConfig

DROP: Literal["drop"] = "drop"
SLOW: Literal["slow"] = "slow"
HttpFault = int | Literal["drop"] | None
DownloadFault = int | Literal["drop", "slow"] | None

NSFW_ERROR = "NSFW content detected. Try running it again, or try a different prompt."
OOM_ERROR = (
    "CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 22.20 GiB total capacity; 19.62 GiB already "
    "allocated; 1.84 GiB free; 19.90 GiB reserved in total by PyTorch) If reserved memory is >> allocated "
    "memory try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management "
    "and PYTORCH_CUDA_ALLOC_CONF (E1001)"
)
COLD_TIMEOUT_ERROR = "Timeout Starting Prediction (E6716)"


@dataclass(frozen=True)
class ModelFailure:
    """A way a prediction fails: the ``error`` text it ends with and when in its life it fails."""

    kind: str
    error: str
    # "starting": never leaves 'starting' (no started_at, nothing billed); "processing": fails mid-run.
    phase: Literal["starting", "processing"]
    # Share of the planned processing time that runs (and is billed) before the failure.
    fraction_run: float
    log_tail: str


MODEL_FAILURES: dict[str, ModelFailure] = {
    "nsfw": ModelFailure(
        kind="nsfw",
        error=NSFW_ERROR,
        phase="processing",
        fraction_run=1.0,
        log_tail="Potential NSFW content detected in output; output withheld.\n",
    ),
    "oom": ModelFailure(
        kind="oom",
        error=OOM_ERROR,
        phase="processing",
        fraction_run=0.4,
        log_tail=(
            "Traceback (most recent call last):\n"
            '  File "/src/predict.py", line 118, in predict\n'
            "    output = self.pipe(prompt=prompt, generator=generator)\n"
            f"torch.cuda.OutOfMemoryError: {OOM_ERROR.removesuffix(' (E1001)')}\n"
        ),
    ),
    "cold_timeout": ModelFailure(
        kind="cold_timeout", error=COLD_TIMEOUT_ERROR, phase="starting", fraction_run=0.0, log_tail=""
    ),
}

# A prompt containing one of these fails the prediction deterministically (demos and tests).
MAGIC_PROMPTS: dict[str, str] = {
    "fail:nsfw": "nsfw",
    "fail:oom": "oom",
    "fail:cold-timeout": "cold_timeout",
}


@dataclass(frozen=True)
class RunPlan:
    """How one prediction will unfold, decided when it is created."""

    start_delay: float  # seconds in 'starting' (until the failure, for a failure while starting)
    predict_time: float  # seconds in 'processing' (0 if it never starts)
    failure: ModelFailure | None
    cold_start: bool
    failure_injected: bool  # chosen at random (as opposed to asked for by a magic prompt)


class FaultInjector:
    """Makes every random decision of the emulator from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def plan_run(self, config: EmulatorConfig, prompt: str) -> RunPlan:
        """Decide latency, cold start and failure of a new prediction with this prompt."""
        failure, injected = self._choose_failure(config, prompt)
        if failure is not None and failure.phase == "starting":
            return RunPlan(
                config.cold_timeout_seconds, 0.0, failure, cold_start=True, failure_injected=injected
            )
        cold = config.cold_start_probability > 0 and self._rng.random() < config.cold_start_probability
        start_delay = config.cold_start_seconds if cold else config.start_seconds
        predict_time = self._predict_time(config)
        if failure is not None:
            predict_time *= failure.fraction_run
        return RunPlan(start_delay, predict_time, failure, cold_start=cold, failure_injected=injected)

    def http_fault(self, config: EmulatorConfig, kind: str) -> HttpFault:
        """The fault (status code or ``"drop"``) to serve instead of this API call, if any."""
        scripted = config.scripted_faults.get(kind)
        if scripted:
            fault = scripted.pop(0)
            return DROP if fault == DROP else int(fault)
        drop_rate = config.drop_rates.get(kind, 0.0)
        if drop_rate and self._rng.random() < drop_rate:
            return DROP
        error_rate = config.http_error_rates.get(kind, 0.0)
        if error_rate and self._rng.random() < error_rate:
            return self._rng.choice(config.http_error_statuses)
        return None

    def download_fault(self, config: EmulatorConfig) -> DownloadFault:
        """The fault (status code, ``"drop"`` or ``"slow"``) to apply to an output download, if any."""
        scripted = config.scripted_faults.get("download")
        if scripted:
            fault = scripted.pop(0)
            return fault if fault in (DROP, SLOW) else int(fault)
        if config.download_error_rate and self._rng.random() < config.download_error_rate:
            return self._rng.choice(config.download_error_statuses)
        if config.download_slow_rate and self._rng.random() < config.download_slow_rate:
            return SLOW
        return None

    def _choose_failure(self, config: EmulatorConfig, prompt: str) -> tuple[ModelFailure | None, bool]:
        for marker, kind in MAGIC_PROMPTS.items():
            if marker in prompt:
                return MODEL_FAILURES[kind], False
        roll = self._rng.random() if any(config.model_failure_rates.values()) else 1.0
        for kind, rate in config.model_failure_rates.items():
            if roll < rate:
                return MODEL_FAILURES[kind], True
            roll -= rate
        return None, False

    def _predict_time(self, config: EmulatorConfig) -> float:
        mean, spread = config.predict_seconds, config.predict_jitter_seconds
        if mean <= 0 or spread <= 0 or config.predict_distribution == "fixed":
            return mean
        if config.predict_distribution == "lognormal":
            sigma = math.sqrt(math.log1p((spread / mean) ** 2))
            return self._rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)
        return self._rng.uniform(max(0.0, mean - spread), mean + spread)
