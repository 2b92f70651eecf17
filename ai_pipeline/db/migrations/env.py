"""Alembic environment: runs migrations on the connection or URL handed over by `ai_pipeline.db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text

# Any fixed number: every process that migrates takes the same advisory lock, so two migrations
# started at once (the CLI and a Dagster run, say) run one after the other.
MIGRATION_LOCK_ID = 7_240_114_001


def _run(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    try:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
