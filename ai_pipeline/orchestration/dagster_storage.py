"""Dagster's Postgres storages (runs, event log, schedules), keeping a connection open between calls.

dagster-postgres opens a new Postgres connection for every storage call (`NullPool`), so that a process
creating many `DagsterInstance`s does not pile up connections. Each of our processes (daemon, code
server, run worker, webserver) keeps one instance and calls its storage several times a second (the
code server also builds a short-lived one per run-status sensor tick); in the idle daemon the connects
were about a third of its CPU (py-spy). These classes are the stock ones
with a small pool instead: one connection kept per storage, a few more while busy, recycled hourly and
pinged before use, so a restarted server costs a reconnect, not a failed tick. `dagster.yaml` names them.
"""

from __future__ import annotations

from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

POOL = {"pool_size": 1, "max_overflow": 4, "pool_recycle": 3600, "pool_pre_ping": True}


# (storage class, URL) whose tables this process has already checked or created.
_TABLES_CHECKED: set[tuple[str, str]] = set()


class _KeepsConnections:
    """Mixed in before a stock Postgres storage: its engine gets a pool, and its table check (an
    inspection of the catalogue on a fresh connection) runs only the first time in a process, since
    Dagster builds an instance for every run-status sensor tick in the code server."""

    postgres_url: str
    _token_provider: Any
    _engine: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine.dispose()
        self._engine = create_pg_engine(
            self.postgres_url, self._token_provider, isolation_level="AUTOCOMMIT", **POOL
        )

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> Any:
        url = pg_url_from_config(config_value)
        seen = (cls.__name__, url) in _TABLES_CHECKED
        storage = cls(
            inst_data=inst_data,
            postgres_url=url,
            should_autocreate_tables=config_value.get("should_autocreate_tables", True) and not seen,
            token_provider=get_token_provider_from_config(config_value),
        )
        _TABLES_CHECKED.add((cls.__name__, url))
        return storage


class PooledPostgresRunStorage(_KeepsConnections, PostgresRunStorage):
    """`PostgresRunStorage` with a kept connection."""


class PooledPostgresEventLogStorage(_KeepsConnections, PostgresEventLogStorage):
    """`PostgresEventLogStorage` with a kept connection (its LISTEN connection is its own, as before)."""


class PooledPostgresScheduleStorage(_KeepsConnections, PostgresScheduleStorage):
    """`PostgresScheduleStorage` with a kept connection."""
