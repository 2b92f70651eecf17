"""The model catalogue: which Replicate model each request's `model` names, and what it costs."""

from ai_pipeline.catalogue.models import (
    CatalogueError,
    ModelSpec,
    load_catalogue,
    read_catalogue_file,
    upsert_models,
)

__all__ = ["CatalogueError", "ModelSpec", "load_catalogue", "read_catalogue_file", "upsert_models"]
