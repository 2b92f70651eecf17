"""Running short database transactions from asyncio code without blocking the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine
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
    for attempt in range(reconnect_attempts + 1):
        try:
            with engine.begin() as conn:
                return fn(conn, *args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == reconnect_attempts:
                raise
            delay = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)
            log.warning("database connection lost in %s; retrying in %.2fs", fn.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class TransactionRunner:
    """Runs `fn(conn, *args)` in its own transaction on a small thread pool.

    A transaction that fails because its connection dropped (a restarted server, a terminated backend)
    is run again on a fresh connection: it rolled back as a whole, and every state change it makes is a
    compare-and-set, so running it again is safe.
    """

    def __init__(self, engine: Engine, *, threads: int = 4, reconnect_attempts: int = 5) -> None:
        self.engine = engine
        self.reconnect_attempts = reconnect_attempts
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in a transaction, retrying it on a dropped connection."""
        return run_in_transaction(
            self.engine, fn, *args, reconnect_attempts=self.reconnect_attempts, **kwargs
        )

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(self.run_sync, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
