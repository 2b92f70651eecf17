"""The embedded Postgres (PyPI `pgserver`) used when no database URL is configured.

The server keeps running after the process that started it exits, so the CLI, the Dagster daemon and
every run share one server; later calls find and reuse it.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from ai_pipeline.db.urls import normalise_database_url


def embedded_database_url(home: Path, database: str = "postgres") -> str:
    """Start (or reuse) the embedded Postgres under `home/pgdata` and return its SQLAlchemy URL."""
    # imported lazily: it is only needed when no database URL is configured
    from pgserver.postgres_server import get_server

    home.mkdir(parents=True, exist_ok=True)
    pgdata = home / "pgdata"
    # Several processes may start at once (daemon, code server, runs): one of them initialises.
    with open(home / "pgserver.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = get_server(pgdata, cleanup_mode=None)
        uri = server.get_uri(database)
    return normalise_database_url(uri)
