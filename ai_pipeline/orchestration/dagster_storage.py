"""Dagster's Postgres storages (runs, event log, schedules), keeping a connection open between calls.

dagster-postgres opens a new Postgres connection for every storage call (`NullPool`), so that a process
creating many `DagsterInstance`s does not pile up connections. Each of our processes (daemon, code
server, run worker, webserver) keeps one instance and calls its storage several times a second (the
code server also builds a short-lived one per run-status sensor tick); in the idle daemon the connects
were about a third of its CPU (py-spy). These classes are the stock ones
with a small pool instead: one connection kept per storage, a few more while busy, recycled hourly and
pinged before use, so a restarted server costs a reconnect, not a failed tick. `dagster.yaml` names them.

They also remember what they learnt about the schema. The stock storages ask the catalogue ("is there
an `instigators` table?", "does `runs` have `start_time`?") on most calls, each an inspection query:
a sensor tick or a dequeue in the idle daemon made several (py-spy). A "yes" cannot turn into "no"
while the process lives (migrations add tables and columns), so a "yes" is kept for the process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

POOL = {"pool_size": 1, "max_overflow": 4, "pool_recycle": 3600, "pool_pre_ping": True}


# (storage class, URL) whose tables this process has already checked or created.
_TABLES_CHECKED: set[tuple[str, str]] = set()
# (storage class, URL, question, its text arguments) answered "yes" in this process.
_SCHEMA_YES: set[tuple[str, ...]] = set()


def _remember_yes(question: Callable[..., bool]) -> Callable[..., bool]:
    """A schema question whose "yes" is asked only once per storage class, database and arguments
    (connections passed in are not part of the question)."""

    @functools.wraps(question)
    def ask(self: Any, *args: Any) -> bool:
        key: tuple[str, ...] = (type(self).__name__, self.postgres_url, question.__name__)
        key += tuple(arg for arg in args if isinstance(arg, str))
        if key in _SCHEMA_YES:
            return True
        answer = question(self, *args)
        if answer:
            _SCHEMA_YES.add(key)
        return answer

    return ask


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


def _remembering(cls: type, *questions: str) -> None:
    for name in questions:
        setattr(cls, name, _remember_yes(getattr(cls, name)))


class PooledPostgresRunStorage(_KeepsConnections, PostgresRunStorage):
    """`PostgresRunStorage` with a kept connection."""


class PooledPostgresEventLogStorage(_KeepsConnections, PostgresEventLogStorage):
    """`PostgresEventLogStorage` with a kept connection (its LISTEN connection is its own, as before)."""


class PooledPostgresScheduleStorage(_KeepsConnections, PostgresScheduleStorage):
    """`PostgresScheduleStorage` with a kept connection."""


_remembering(
    PooledPostgresRunStorage,
    "has_built_index",
    "has_run_stats_index_cols",
    "has_bulk_actions_selector_cols",
    "has_backfill_id_column",
    "has_bulk_action_job_name_column",
    "has_backfill_tags_table",
)
_remembering(
    PooledPostgresEventLogStorage,
    "has_table",
    "has_secondary_index",
    "_has_asset_key_col_on_connection",
)
_remembering(
    PooledPostgresScheduleStorage,
    "has_built_index",
    "has_secondary_index_table",
    "_has_instigators_table",
    "_has_asset_daemon_asset_evaluations_table",
)
