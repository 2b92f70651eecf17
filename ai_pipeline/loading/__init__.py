"""Bulk loading of request files (CSV, Parquet, JSONL) into `generation_requests` as a batch.

    load_file(engine, "requests.csv", "march-campaign")  ->  LoadSummary

Every row is validated (`validation.py`); good rows are inserted as pending through COPY into a
staging table (`writer.py`); bad rows go to a rejects file (`rejects.py`) with their row number and a
reason. Loading the same file into the same batch again inserts nothing twice (`keys.py`).
"""

from ai_pipeline.loading.errors import LoadError
from ai_pipeline.loading.loader import load_file
from ai_pipeline.loading.summary import LoadSummary

__all__ = ["LoadError", "LoadSummary", "load_file"]
