"""Dagster's Postgres storages (runs, event log, schedules), keeping a connection open between calls.

dagster-postgres opens a new Postgres connection for every storage call (`NullPool`), so that a process
creating many `DagsterInstance`s does not pile up connections. Each of our processes (daemon, code
server, run worker, webserver) builds one instance and calls its storage several times a second; in
the idle daemon the connects were about a third of its CPU (py-spy). These classes are the stock ones
with a small pool instead: one connection kept per storage, a few more while busy, recycled hourly and
pinged before use, so a restarted server costs a reconnect, not a failed tick. `dagster.yaml` names them.
"""

from __future__ import annotations

from typing import Any

from dagster._core.storage.config import PostgresStorageConfig
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

POOL = {"pool_size": 1, "max_overflow": 4, "pool_recycle": 3600, "pool_pre_ping": True}


def _keep_connections(storage: Any) -> None:
    storage._engine.dispose()
    storage._engine = create_pg_engine(
        storage.postgres_url, storage._token_provider, isolation_level="AUTOCOMMIT", **POOL
    )


# (storage class, URL) whose tables this process has already checked or created.
_TABLES_CHECKED: set[tuple[str, str]] = set()


def _build(cls: Any, inst_data: ConfigurableClassData | None, config_value: Any) -> Any:
    """The stock constructor, with the table check (an inspection of the catalogue on a fresh
    connection) only the first time in a process: Dagster builds an instance for every run-status
    sensor tick in the code server."""
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


class PooledPostgresRunStorage(PostgresRunStorage):
    """`PostgresRunStorage` with a kept connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_connections(self)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> PooledPostgresRunStorage:
        return _build(cls, inst_data, config_value)


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage` with a kept connection (its LISTEN connection is its own, as before)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_connections(self)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> PooledPostgresEventLogStorage:
        return _build(cls, inst_data, config_value)


class PooledPostgresScheduleStorage(PostgresScheduleStorage):
    """`PostgresScheduleStorage` with a kept connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_connections(self)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> PooledPostgresScheduleStorage:
        return _build(cls, inst_data, config_value)
