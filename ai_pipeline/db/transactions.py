"""Running the transitions: each in a transaction of its own, again on a fresh connection if it dropped.

A transaction whose connection dropped (a restarted server, a terminated backend) rolled back as a
whole, and every state change in `db/` is a compare-and-set on the request's own row, so running it
again is safe. `run_in_transaction` is for blocking callers (the CLI, sensors, the sweeper);
`TransactionRunner` runs them for asyncio code (a run) on a small thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ai_pipeline.retry import Backoff, retry_sync

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

# Tries of one transaction whose connection keeps dropping: 0.1 s growing to 5 s apart.
RECONNECT = Backoff(attempts=6, base_seconds=0.1, max_seconds=5.0)


# The attribute `one_statement` sets on a transition; `TransactionRunner.statement` and a test look for it.
ONE_STATEMENT_MARK = "one_statement"


def one_statement(fn: F) -> F:
    """Mark a transition that sends exactly one SQL statement, so it is atomic on its own and may run
    outside a transaction (`TransactionRunner.statement`, which saves a run the BEGIN and COMMIT round
    trips on its hottest writes). A test holds every marked transition to it."""
    setattr(fn, ONE_STATEMENT_MARK, True)
    return fn


def connection_lost(exc: Exception) -> bool:
    """Whether `exc` says the connection dropped (the transaction rolled back whole)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _again_on_lost_connection(
    once: Callable[[], T], fn: Callable[..., Any], on_lost: Callable[[], None] | None = None
) -> T:
    def before_retry(exc: Exception) -> None:
        log.warning("database connection lost in %s; trying again", fn.__name__)
        if on_lost is not None:
            on_lost()

    return retry_sync(once, RECONNECT, retry_if=connection_lost, before_retry=before_retry)


def run_in_transaction(engine: Engine, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(conn, *args, **kwargs)` in a transaction, again on a fresh connection if it dropped."""

    def once() -> T:
        with engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    return _again_on_lost_connection(once, fn)


class TransactionRunner:
    """Runs `fn(conn, *args)` in its own transaction on a small thread pool.

    Each worker thread keeps its connections (one for transactions, one for single statements) for the
    runner's life: a run makes a few database calls per request, and checking a connection out of the
    pool and back for each costs about as much CPU as the statements themselves. A dropped connection is
    replaced and the call run again (see the module docstring).
    """

    def __init__(self, engine: Engine, *, threads: int = 4) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")
        self._local = threading.local()
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in a transaction on this thread's connection."""

        def once() -> T:
            conn = self._thread_connection()
            with conn.begin():
                return fn(conn, *args, **kwargs)

        return _again_on_lost_connection(once, fn, self._drop_thread_connection)

    def statement_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)`, a transition marked `one_statement`, outside a transaction.

        One statement is atomic on its own; without BEGIN and COMMIT it is one round trip, not three.
        """
        if not getattr(fn, ONE_STATEMENT_MARK, False):
            raise TypeError(f"{fn.__name__} is not marked one_statement; run it in a transaction")

        def once() -> T:
            return fn(self._thread_connection(autocommit=True), *args, **kwargs)

        return _again_on_lost_connection(
            once, fn, functools.partial(self._drop_thread_connection, autocommit=True)
        )

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`run_sync` on the thread pool."""
        call = functools.partial(self.run_sync, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def statement(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`statement_sync` on the thread pool."""
        call = functools.partial(self.statement_sync, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _thread_connection(self, *, autocommit: bool = False) -> Connection:
        attribute = "autocommit_conn" if autocommit else "conn"
        conn: Connection | None = getattr(self._local, attribute, None)
        if conn is None:
            conn = self.engine.connect()
            if autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            setattr(self._local, attribute, conn)
            with self._lock:
                self._connections.add(conn)
        return conn

    def _drop_thread_connection(self, *, autocommit: bool = False) -> None:
        attribute = "autocommit_conn" if autocommit else "conn"
        conn: Connection | None = getattr(self._local, attribute, None)
        setattr(self._local, attribute, None)
        if conn is not None:
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Wait for running transactions, then give every thread's connection back to the pool."""
        self._pool.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
