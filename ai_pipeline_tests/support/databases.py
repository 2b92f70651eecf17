"""Isolated test databases on a real Postgres.

`AI_PIPELINE_TEST_DATABASE_URL` names a server to use (CI points it at the machine's PostgreSQL);
without it the embedded `pgserver` Postgres under `.ai_pipeline/` is used. Every test session creates
its own database there and drops it afterwards, so parallel sessions never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ai_pipeline.db.embedded import embedded_database_url
from ai_pipeline.db.urls import normalise_database_url

REPO_ROOT = Path(__file__).resolve().parents[2]


def server_url() -> str:
    """URL of the Postgres server tests create their databases on."""
    configured = os.environ.get("AI_PIPELINE_TEST_DATABASE_URL")
    if configured:
        return normalise_database_url(configured)
    return embedded_database_url(REPO_ROOT / ".ai_pipeline")


@contextmanager
def fresh_database(prefix: str = "aip_test") -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    admin_url = make_url(server_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_database() -> Iterator[str]:
    """A fresh database migrated to the newest schema; yields its URL, drops it afterwards."""
    from ai_pipeline.db.engine import engine_for_url
    from ai_pipeline.db.migrate import upgrade_database

    with fresh_database() as url:
        engine = engine_for_url(url)
        upgrade_database(engine)
        yield url
        engine.dispose()
