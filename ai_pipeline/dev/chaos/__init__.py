"""The chaos suite: the whole pipeline (real Dagster daemon, sensors, runs) under faults, then every
invariant checked.

    python -m ai_pipeline.dev.chaos --requests 10000 [--seed S] [--kill-interval 30:60] [--no-write]

`scenario.py` says what goes wrong (the emulator's fault mix, the 429 storm, kills, terminated
backends), `agents.py` makes it go wrong, `figures.py` counts what came out, and `suite.py` runs it all.
"""

from ai_pipeline.dev.chaos.figures import ChaosFigures
from ai_pipeline.dev.chaos.scenario import ChaosScenario
from ai_pipeline.dev.chaos.suite import ChaosResult, run_chaos

__all__ = ["ChaosFigures", "ChaosResult", "ChaosScenario", "run_chaos"]
