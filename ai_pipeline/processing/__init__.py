"""Working through a batch: claim, charge, predict, store, settle. Plain asyncio; no Dagster here."""

from ai_pipeline.processing.batch_runner import BatchRunner, RunReport

__all__ = ["BatchRunner", "RunReport"]
