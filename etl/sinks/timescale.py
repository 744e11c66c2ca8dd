"""The TimescaleDB sink: batches of enriched events into one table, a hypertable when TimescaleDB is there.

A batch is one transaction, written in binary COPY format (``etl.sinks.copy_format``):

- first straight into the table: the fast path, taken by every batch whose events are all new;
- when a key is already there (a replayed event, same ``id`` and time, or the same event twice in the batch), or
  an overlapping batch holds a lock in the other order: rolled back, then COPY into a per-session TEMP staging
  table and one sorted ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, so a replayed event is skipped and a
  replayed batch changes nothing.

A write ends within the sink's budget (``Settings.sink_budget_s``; see ``etl.sinks.base``). It waits for a free
pooled connection only until its deadline. The session's ``statement_timeout`` leaves a write
``CONNECTION_WAIT_SHARE`` of the budget to get its connection, so the fast path's COPY needs no other; a write that
waited longer first sets its COPY's timeout to the time left (``SET LOCAL``, one more round trip), and the slow
path does so before each of its statements, ``STATEMENT_TIMEOUT_GRACE_S`` before the deadline. No statement starts
once the deadline has passed: that raises ``TransientError``. Not bounded by the deadline: checking that a pooled
connection is alive (``SELECT 1``, under the session's timeout), connecting the pool (the first write, or after
``close``), and a server that stopped answering, which TCP keepalives notice.

Driver errors are translated as they leave a borrowed connection, by ``etl.sinks.postgres``, which also holds the
connection options and time-outs.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool
from psycopg2 import sql

from etl.config import Settings
from etl.errors import EtlError, SinkUnavailable
from etl.sinks import timescale_retention
from etl.sinks.base import Event, time_left_s, write_deadline
from etl.sinks.copy_format import COLUMNS, format_batch
from etl.sinks.postgres import (
    DEFAULT_CONNECT_TIMEOUT_S,
    SESSION_FAILURE_CLASSES,
    connect_timeout,
    connection_params,
    copy_timeout_ms,
    describe_error,
    keepalive_options,
    local_timeout_ms,
    recover,
    rolled_back,
    statement_timeout_ms,
    translate_error,
)

log = logging.getLogger(__name__)

# One key for every migration in the database: CREATE EXTENSION and CREATE TABLE are not safe to race.
MIGRATION_LOCK_KEY = 0x6574_6C5F_6D69_6772  # "etl_migr"
APPLICATION_NAME = "etl-timescale-sink"
STAGING_TABLE = "etl_staging_events"
# How much of a batch's COPY data psycopg2 hands to libpq at a time (its default is 8 KiB: 30 calls a batch).
COPY_CHUNK_BYTES = 1 << 20
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id          TEXT        NOT NULL,
    "time"      TIMESTAMPTZ NOT NULL,
    "timestamp" BIGINT      NOT NULL,
    type        TEXT        NOT NULL,
    source      TEXT        NOT NULL,
    host_id     TEXT,
    env         TEXT,
    rdns        TEXT,
    dst_rdns    TEXT,
    metadata    JSONB       NOT NULL DEFAULT '{{}}',
    payload     BYTEA,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "time")
)"""
# Tables made before dst_rdns existed get it. Only when missing: ALTER TABLE locks the table out even when it
# changes nothing, and every worker migrates at start.
_HAS_COLUMN = ("SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
               "AND attnum > 0 AND NOT attisdropped")
_ADD_DST_RDNS = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS dst_rdns TEXT"
_CREATE_INDEX = 'CREATE INDEX IF NOT EXISTS {index} ON {table} (host_id, "time" DESC)'
# The table's columns, in the order and types of the COPY data.
_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    id TEXT, "time" TIMESTAMPTZ, "timestamp" BIGINT, type TEXT, source TEXT, host_id TEXT, env TEXT, rdns TEXT,
    dst_rdns TEXT, metadata JSONB, payload BYTEA
) ON COMMIT DELETE ROWS"""
# Sorted, so concurrent overlapping batches take their key locks in one order and cannot deadlock.
_INSERT = """
INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ORDER BY id, "time" ON CONFLICT DO NOTHING"""
_COPY = "COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)"
_SET_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = %s"  # in milliseconds; until the transaction ends
# The fast path's COPY met a row already there, or a lock cycle with an overlapping batch's COPY.
_TAKE_STAGING_PATH = (psycopg2.errors.UniqueViolation, psycopg2.errors.DeadlockDetected)
# The pre-2.13 signature: still documented, and the one every TimescaleDB 2.x accepts.
_CREATE_HYPERTABLE = (
    "SELECT create_hypertable(%s::regclass, 'time', if_not_exists => TRUE, migrate_data => TRUE)")


class _Connection(psycopg2.extensions.connection):
    """A connection that remembers whether its session has the staging table yet."""

    staging_ready = False


def _index_name(table: str) -> str:
    suffix = "_host_id_time_idx"
    return table[: 63 - len(suffix)] + suffix  # PostgreSQL truncates names to 63 bytes


class TimescaleSink:
    """Stores batches of enriched events in ``settings.pg_table``. Safe to share between threads.

    Nothing connects before the first call that needs the server (``open``, ``migrate``, ``write``,
    ``check``). Each call borrows one pooled connection; ``close`` ends them all and is final.
    """


    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self._settings = settings
        self._table = settings.pg_table
        self._pool_size = settings.pg_pool_size if pool_size is None else pool_size
        self._slots = threading.BoundedSemaphore(self._pool_size)
        self._lock = threading.Lock()
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._closed = False
        self._session_timeout_ms = statement_timeout_ms(settings)
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        table, staging = sql.Identifier(self._table), sql.Identifier(STAGING_TABLE)
        self._sql_insert = sql.SQL(_INSERT).format(table=table, staging=staging, columns=columns)
        self._sql_copy = sql.SQL(_COPY).format(table=table, columns=columns)
        self._sql_copy_staging = sql.SQL(_COPY).format(table=staging, columns=columns)

    def open(self) -> None:
        """Connect and apply the schema. Raises ``SinkUnavailable`` when the server cannot be reached."""
        self.migrate()

    def migrate(self) -> None:
        """Create the table, its index and (with TimescaleDB) the hypertable, if missing, and add the columns a
        table made by an older version lacks (``dst_rdns``); then what retention needs (``_retention_schema``).
        Idempotent.

        Concurrent callers in other processes wait on an advisory lock. Raises ``SinkUnavailable``,
        ``TransientError`` or ``SinkDataError`` as ``write`` does.
        """
        with self._borrow() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            hypertable = self._enable_timescaledb(cur)
            table = sql.Identifier(self._table)
            cur.execute(sql.SQL(_CREATE_TABLE).format(table=table))
            cur.execute(_HAS_COLUMN, (table.as_string(conn), "dst_rdns"))
            if cur.fetchone() is None:
                cur.execute(sql.SQL(_ADD_DST_RDNS).format(table=table))
            index = sql.Identifier(_index_name(self._table))
            cur.execute(sql.SQL(_CREATE_INDEX).format(table=table, index=index))
            if hypertable:
                cur.execute(_CREATE_HYPERTABLE, (table.as_string(conn),))
            self._retention_schema(cur, hypertable)
            conn.commit()

    def _retention_schema(self, cur: psycopg2.extensions.cursor, hypertable: bool) -> None:
        """TimescaleDB's policies as the settings say; on plain PostgreSQL, the index retention's batches use."""
        if hypertable:
            # Not run in this project's tests (no extension): a policy statement a server refuses is logged, and
            # the sink opens without it rather than not at all.
            cur.execute("SAVEPOINT etl_policies")
            try:
                timescale_retention.apply_policies(cur, self._settings)
            except psycopg2.DatabaseError as e:
                if (e.pgcode or "")[:2] in SESSION_FAILURE_CLASSES:
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT etl_policies")
                log.warning("TimescaleDB retention and compression policies of %s not applied: %s", self._table,
                            describe_error(e))
            return
        if self._settings.timescale_retention_s:
            timescale_retention.create_time_index(cur, self._table)
        if self._settings.timescale_compress_after_s:
            log.warning("TIMESCALE_COMPRESS_AFTER needs TimescaleDB: %s is not compressed", self._table)

    def _enable_timescaledb(self, cur: psycopg2.extensions.cursor) -> bool:
        """True when the timescaledb extension is (now) installed; otherwise logs the fallback once."""
        cur.execute("SELECT installed_version FROM pg_available_extensions WHERE name = 'timescaledb'")
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            return True
        reason = "is not available on this server"
        if row is not None:
            cur.execute("SAVEPOINT etl_timescaledb")
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                cur.execute("RELEASE SAVEPOINT etl_timescaledb")
                return True
            except psycopg2.DatabaseError as e:
                # e.g. not in shared_preload_libraries, its library missing, or no privilege to create it
                if (e.pgcode or "")[:2] in SESSION_FAILURE_CLASSES:
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT etl_timescaledb")
                reason = f"could not be created ({describe_error(e)})"
        log.warning("TimescaleDB extension %s; %s is a plain PostgreSQL table", reason, self._table)
        return False

    def write(self, events: Sequence[Event]) -> int:
        """Store ``events`` in one transaction; returns how many rows were new (a replay returns 0).

        An empty batch returns 0 without touching the server. Ends within the sink's budget, as the module's
        docstring says. Raises ``SinkUnavailable`` (server unreachable, connection lost, every connection busy
        until the deadline, statement timeout), ``TransientError`` (deadlock, serialization failure, no time left
        for the next statement) or ``SinkDataError`` (the batch holds a value the table cannot take; nothing of it
        is stored).
        """
        if not events:
            return 0
        deadline = write_deadline(self._settings.sink_budget_s)
        data = format_batch(events)
        with self._borrow(deadline) as conn:
            try:
                with conn.cursor() as cur:
                    timeout_ms = copy_timeout_ms(deadline, self._session_timeout_ms, self._where)
                    if timeout_ms is not None:  # the wait for a connection took more than its share
                        cur.execute(_SET_STATEMENT_TIMEOUT, (timeout_ms,))
                    cur.copy_expert(self._sql_copy, io.BytesIO(data), size=COPY_CHUNK_BYTES)
                    inserted = cur.rowcount
                conn.commit()
                return inserted
            except _TAKE_STAGING_PATH:
                conn.rollback()
            return self._write_through_staging(conn, data, deadline)

    def _write_through_staging(self, conn: _Connection, data: bytes, deadline: float) -> int:
        """The slow path: only the rows whose key is not in the table yet, taken in key order; each statement
        cancelled by the server at ``deadline`` (``time.monotonic()`` seconds)."""
        with conn.cursor() as cur:
            if not conn.staging_ready:
                cur.execute(_SET_STATEMENT_TIMEOUT, (local_timeout_ms(deadline, self._where),))
                cur.execute(_CREATE_STAGING)
            cur.execute(_SET_STATEMENT_TIMEOUT, (local_timeout_ms(deadline, self._where),))
            cur.copy_expert(self._sql_copy_staging, io.BytesIO(data), size=COPY_CHUNK_BYTES)
            cur.execute(_SET_STATEMENT_TIMEOUT, (local_timeout_ms(deadline, self._where),))
            cur.execute(self._sql_insert)
            inserted = cur.rowcount
        conn.commit()
        conn.staging_ready = True  # only now: a rolled-back CREATE TEMP TABLE leaves no table
        return inserted

    def check(self) -> None:
        """Run ``SELECT 1`` on a pooled connection. Raises ``SinkUnavailable`` when that fails."""
        try:
            with self._borrow() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                conn.rollback()
        except SinkUnavailable:
            raise
        except EtlError as e:
            raise SinkUnavailable(str(e)) from e

    def close(self) -> None:
        """Close every connection. Safe to call twice; the sink cannot be used afterwards."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None and not pool.closed:
            pool.closeall()

    @property
    def _where(self) -> str:
        return f"timescale table {self._table}"

    @contextmanager
    def _borrow(self, deadline: float | None = None) -> Iterator[_Connection]:
        """A live pooled connection for one transaction, waited for until ``deadline`` (``time.monotonic()``
        seconds; by default the sink's budget from now); driver errors inside are translated.

        A connection whose session may be broken is closed, never handed out again. Raises ``TransientError``
        when the deadline has passed already, ``SinkUnavailable`` when no connection is free by then.
        """
        if deadline is None:
            deadline = write_deadline(self._settings.sink_budget_s)
        wait_s = time_left_s(deadline, self._where)
        if not self._slots.acquire(timeout=wait_s):
            raise SinkUnavailable(f"{self._where}: all {self._pool_size} connections busy for {wait_s:.3g}s")
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

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._closed:
                raise SinkUnavailable(f"timescale table {self._table}: the sink is closed")
            if self._pool is None:
                try:
                    # minconn == maxconn: the pool keeps every connection it makes instead of closing extras
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        self._pool_size, self._pool_size, **self._connect_kwargs())
                except psycopg2.Error as e:
                    raise translate_error(e, self._table) from e
            return self._pool

    def _checkout(self, pool: psycopg2.pool.ThreadedConnectionPool) -> _Connection:
        """A pooled connection that answers ``SELECT 1``; dead ones (a server restart) are discarded."""
        for _ in range(self._pool_size + 1):
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
        raise SinkUnavailable(f"timescale table {self._table}: no live connection after "
                              f"{self._pool_size + 1} attempts")

    def _connect_kwargs(self) -> dict[str, Any]:
        s = self._settings
        return {
            **connection_params(s),
            "connect_timeout": connect_timeout(s),
            "application_name": APPLICATION_NAME,
            "options": f"-c statement_timeout={statement_timeout_ms(s)}",
            **keepalive_options(s),
            "connection_factory": _Connection,
        }


def _give_back(pool: psycopg2.pool.ThreadedConnectionPool, conn: _Connection, healthy: bool) -> None:
    try:
        pool.putconn(conn, close=not healthy)
    except psycopg2.pool.PoolError:  # the sink was closed meanwhile
        conn.close()


def count_stored(settings: Settings) -> int:
    """Rows in the events table (0 before it exists), read without the sink's migration: looking must not write.
    Raises ``psycopg2.Error`` when PostgreSQL cannot be read."""
    conn = psycopg2.connect(**connection_params(settings), connect_timeout=DEFAULT_CONNECT_TIMEOUT_S)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (settings.pg_table,))
            row = cur.fetchone()
            if row is None or row[0] is None:
                return 0
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(settings.pg_table)))
            result = cur.fetchone()
            return int(result[0]) if result else 0
    finally:
        conn.close()

