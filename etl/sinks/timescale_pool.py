"""The TimescaleDB sink's pooled connections: at most ``pool_size`` borrowed at once, each checked alive before it
is handed out, waited for only until the write's deadline, and closed rather than reused when its session may be
broken. Driver errors are translated as they leave a borrowed connection (``etl.sinks.postgres``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from etl.config import Settings
from etl.errors import EtlError, SinkUnavailable
from etl.sinks.base import time_left_s, write_deadline
from etl.sinks.postgres import (
    connect_timeout,
    connection_params,
    keepalive_options,
    recover,
    rolled_back,
    statement_timeout_ms,
    translate_error,
)

APPLICATION_NAME = "etl-timescale-sink"


class Connection(psycopg2.extensions.connection):
    """A connection that remembers whether its session has the staging table yet."""

    staging_ready = False


class ConnectionPool:
    """Up to ``pool_size`` connections to ``settings``' database, made on the first ``borrow``. Thread-safe."""

    def __init__(self, settings: Settings, pool_size: int) -> None:
        self._settings = settings
        self._table = settings.pg_table
        self.size = pool_size
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._closed = False

    @property
    def where(self) -> str:
        """What the errors and time-outs name."""
        return f"timescale table {self._table}"

    @contextmanager
    def borrow(self, deadline: float | None = None) -> Iterator[Connection]:
        """A live pooled connection for one transaction, waited for until ``deadline`` (``time.monotonic()``
        seconds; by default the sink's budget from now); driver errors inside are translated.

        A connection whose session may be broken is closed, never handed out again. Raises ``TransientError``
        when the deadline has passed already, ``SinkUnavailable`` when no connection is free by then.
        """
        if deadline is None:
            deadline = write_deadline(self._settings.sink_budget_s)
        wait_s = time_left_s(deadline, self.where)
        if not self._slots.acquire(timeout=wait_s):
            raise SinkUnavailable(f"{self.where}: all {self.size} connections busy for {wait_s:.3g}s")
        try:
            pool = self._get_pool()
            conn = self._checkout(pool)
            healthy = False
            try:
                yield conn
                healthy = True
            except psycopg2.Error as e:
                healthy = recover(conn, e)
                raise translate_error(e, self._table) from e
            except EtlError:  # raised between statements (no time left): the session is fine
                healthy = rolled_back(conn)
                raise
            finally:
                _give_back(pool, conn, healthy)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close every connection. Safe to call twice; the pool cannot be used afterwards."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None and not pool.closed:
            pool.closeall()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._closed:
                raise SinkUnavailable(f"timescale table {self._table}: the sink is closed")
            if self._pool is None:
                try:
                    # minconn == maxconn: the pool keeps every connection it makes instead of closing extras
                    self._pool = psycopg2.pool.ThreadedConnectionPool(self.size, self.size, **self._connect_kwargs())
                except psycopg2.Error as e:
                    raise translate_error(e, self._table) from e
            return self._pool

    def _checkout(self, pool: psycopg2.pool.ThreadedConnectionPool) -> Connection:
        """A pooled connection that answers ``SELECT 1``; dead ones (a server restart) are discarded."""
        for _ in range(self.size + 1):
            try:
                conn = pool.getconn()
            except psycopg2.Error as e:
                raise translate_error(e, self._table) from e
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return conn
            except psycopg2.Error:
                _give_back(pool, conn, healthy=False)
        raise SinkUnavailable(f"timescale table {self._table}: no live connection after {self.size + 1} attempts")

    def _connect_kwargs(self) -> dict[str, Any]:
        s = self._settings
        return {
            **connection_params(s),
            "connect_timeout": connect_timeout(s),
            "application_name": APPLICATION_NAME,
            "options": f"-c statement_timeout={statement_timeout_ms(s)}",
            **keepalive_options(s),
            "connection_factory": Connection,
        }


def _give_back(pool: psycopg2.pool.ThreadedConnectionPool, conn: Connection, healthy: bool) -> None:
    try:
        pool.putconn(conn, close=not healthy)
    except psycopg2.pool.PoolError:  # the sink was closed meanwhile
        conn.close()
