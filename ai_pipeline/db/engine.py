"""Engines: one per database URL per process, with connection checks that survive dropped connections."""

from __future__ import annotations

import functools
import threading

from sqlalchemy import Engine, create_engine

from ai_pipeline.db.embedded import embedded_database_url
from ai_pipeline.db.urls import normalise_database_url
from ai_pipeline.settings import Settings

_engines: dict[tuple[str, bool], Engine] = {}
_lock = threading.Lock()


def resolve_database_url(settings: Settings) -> str:
    """The configured database URL, or the embedded Postgres's when none is configured."""
    if settings.database_url:
        return normalise_database_url(settings.database_url)
    return embedded_database_url(settings.home)


def engine_for_url(url: str, *, pool_size: int = 5, pre_ping: bool = True) -> Engine:
    """A shared engine for `url`: pre-ping drops dead connections (a restarted or killed backend).

    `pre_ping=False` is for callers that run every transaction through `run_in_transaction` (which runs
    it again on a fresh connection when its connection was dead): the ping is a round trip per checkout.
    """
    url = normalise_database_url(url)
    with _lock:
        engine = _engines.get((url, pre_ping))
        if engine is None:
            engine = create_engine(
                url,
                pool_pre_ping=pre_ping,
                pool_size=pool_size,
                max_overflow=10,
                pool_recycle=1800,
                connect_args={"application_name": "ai_pipeline"},
            )
            _engines[(url, pre_ping)] = engine
        return engine


class Database:
    """The configured Postgres, found (or started, when embedded) on first use, not when made: the Dagster
    code location makes one at import, and only what touches the database should wait for it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @functools.cached_property
    def url(self) -> str:
        return resolve_database_url(self._settings)

    def engine(self, *, pre_ping: bool = True) -> Engine:
        """The shared engine; see `engine_for_url` for when `pre_ping=False` is safe."""
        return engine_for_url(self.url, pre_ping=pre_ping)


def get_engine(settings: Settings) -> Engine:
    """The engine for the configured database."""
    return Database(settings).engine()
