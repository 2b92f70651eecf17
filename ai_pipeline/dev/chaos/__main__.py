"""`python -m ai_pipeline.dev.chaos --requests N [--seed S] [--kill-interval MIN:MAX] [--no-write]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ai_pipeline.dev.chaos.scenario import ChaosScenario
from ai_pipeline.dev.chaos.suite import record_results, run_chaos

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "RESULTS.md"


def _interval(raw: str) -> tuple[float, float] | None:
    if raw in ("0", "none", "off"):
        return None
    low, _, high = raw.partition(":")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ai_pipeline.dev.chaos",
        description="The pipeline under faults, SIGKILLed run workers and dropped connections; then every "
        "invariant is checked. Exits 1 if one fails.",
    )
    parser.add_argument("--requests", type=int, default=10_000, help="requests to load (default 10,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    parser.add_argument("--batches", type=int, help="batches to spread them over (default: 1 per 2,500)")
    parser.add_argument(
        "--kill-interval",
        type=_interval,
        default=(30.0, 60.0),
        help="seconds between SIGKILLs of a run worker, MIN:MAX, or 'off' (default 30:60)",
    )
    parser.add_argument(
        "--backend-kill-interval",
        type=float,
        default=10.0,
        help="seconds between terminations of the pipeline's Postgres backends, 0 for none (default 10)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases afterwards (to look into them)"
    )
    parser.add_argument("--no-write", action="store_true", help=f"do not record the result in {RESULTS}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    scenario = ChaosScenario(
        requests=args.requests,
        seed=args.seed,
        batches=args.batches,
        kill_interval=args.kill_interval,
        backend_kill_interval=args.backend_kill_interval or None,
    )
    result = run_chaos(scenario, keep=args.keep)
    if not args.no_write:
        record_results(
            result,
            RESULTS,
            "python -m ai_pipeline.dev.chaos " + " ".join(sys.argv[1:] if argv is None else argv),
        )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
