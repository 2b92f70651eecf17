"""Running short database transactions from asyncio code without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
log = logging.getLogger(__name__)


def run_in_transaction(
    engine: Engine, fn: Callable[..., T], *args: Any, reconnect_attempts: int = 5, **kwargs: Any
) -> T:
    """Run `fn(conn, *args, **kwargs)` in a transaction, again on a fresh connection if it dropped.

    A transaction whose connection dropped (a restarted server, a terminated backend) rolled back as a
    whole; every state change in it is a compare-and-set, so running it again is safe.
    """

    def once() -> T:
        with engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    return _again_on_lost_connection(once, fn, reconnect_attempts)


def _again_on_lost_connection(
    once: Callable[[], T], fn: Callable[..., Any], attempts: int, on_lost: Callable[[], None] | None = None
) -> T:
    """`once()`, run again (after `on_lost()` and a short backoff) while it fails on a dropped connection."""
    for attempt in range(attempts + 1):
        try:
            return once()
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == attempts:
                raise
            if on_lost is not None:
                on_lost()
            delay = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)
            log.warning("database connection lost in %s; retrying in %.2fs", fn.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class TransactionRunner:
    """Runs `fn(conn, *args)` in its own transaction on a small thread pool.

    Each worker thread keeps its connections (one for transactions, one for single statements) for the
    runner's life: a run makes a few database calls per request, and checking a connection out of the
    pool and back for each costs about as much CPU as the statements themselves. A transaction that
    fails because its connection dropped (a restarted server, a terminated backend) is run again on a
    fresh connection: it rolled back as a whole, and every state change it makes is a compare-and-set,
    so running it again is safe.
    """

    def __init__(self, engine: Engine, *, threads: int = 4, reconnect_attempts: int = 5) -> None:
        self.engine = engine
        self.reconnect_attempts = reconnect_attempts
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")
        self._local = threading.local()
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in a transaction on this thread's connection, again on a fresh
        connection if it dropped."""

        def once() -> T:
            conn = self._thread_connection()
            with conn.begin():
                return fn(conn, *args, **kwargs)

        return _again_on_lost_connection(once, fn, self.reconnect_attempts, self._drop_thread_connection)

    def statement_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)`, a transition marked `one_statement`, outside a transaction,
        again on a fresh connection if it dropped.

        One statement is atomic on its own; without BEGIN and COMMIT it is one round trip, not three.
        """
        if not getattr(fn, "one_statement", False):
            raise TypeError(f"{fn.__name__} is not marked one_statement; run it in a transaction")

        def once() -> T:
            return fn(self._thread_connection(autocommit=True), *args, **kwargs)

        return _again_on_lost_connection(
            once,
            fn,
            self.reconnect_attempts,
            functools.partial(self._drop_thread_connection, autocommit=True),
        )

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
