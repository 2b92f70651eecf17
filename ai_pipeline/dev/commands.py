"""`ai-pipeline demo` and `ai-pipeline dev`: the whole pipeline on local stand-ins."""

from __future__ import annotations

import click


@click.command()
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the batch to finish.")
def demo(timeout: float) -> None:
    """Run a sample batch through the whole pipeline on local stand-ins (nothing to configure)."""
    from ai_pipeline.dev.demo import run_demo

    if not run_demo(timeout):
        raise click.ClickException("the demo batch did not finish cleanly (see above)")


@click.command()
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster UI.")
def dev(port: int) -> None:
    """Start the local stand-ins, the Dagster daemon and the Dagster UI until Ctrl+C."""
    from ai_pipeline.dev.demo import run_dev

    run_dev(port)
