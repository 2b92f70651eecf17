"""ai_pipeline: paid AI generations on Replicate, orchestrated by Dagster."""
