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

Connections are borrowed from ``etl.sinks.timescale_pool``; the schema is ``etl.sinks.timescale_schema``'s. Driver
errors are translated as they leave a borrowed connection, by ``etl.sinks.postgres``, which also holds the
connection options and time-outs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from etl.config import Settings
from etl.errors import EtlError, SinkUnavailable
from etl.sinks import timescale_schema
from etl.sinks.base import Event, write_deadline
from etl.sinks.copy_format import COLUMNS, format_batch
from etl.sinks.postgres import (
    DEFAULT_CONNECT_TIMEOUT_S,
    connection_params,
    copy_timeout_ms,
    local_timeout_ms,
    statement_timeout_ms,
    translate_error,
)
from etl.sinks.timescale_pool import Connection, ConnectionPool

STAGING_TABLE = "etl_staging_events"
# How much of a batch's COPY data psycopg2 hands to libpq at a time (its default is 8 KiB: 30 calls a batch).
COPY_CHUNK_BYTES = 1 << 20
# The table's columns, in the order and types of the COPY data.
_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    id TEXT, "time" TIMESTAMPTZ, "timestamp" BIGINT, type TEXT, source TEXT, host_id TEXT, env TEXT, rdns TEXT,
    dst_rdns TEXT, metadata JSONB, payload BYTEA, intel JSONB, src_asset JSONB, dst_asset JSONB, dst_geo JSONB,
    intel_match BOOLEAN
) ON COMMIT DELETE ROWS"""
# Sorted, so concurrent overlapping batches take their key locks in one order and cannot deadlock.
_INSERT = """
INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ORDER BY id, "time" ON CONFLICT DO NOTHING"""
_COPY = "COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)"
_SET_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = %s"  # in milliseconds; until the transaction ends
# The fast path's COPY met a row already there, or a lock cycle with an overlapping batch's COPY.
_TAKE_STAGING_PATH = (psycopg2.errors.UniqueViolation, psycopg2.errors.DeadlockDetected)


class TimescaleSink:
    """Stores batches of enriched events in ``settings.pg_table``. Safe to share between threads.

    Nothing connects before the first call that needs the server (``open``, ``migrate``, ``write``,
    ``check``). Each call borrows one pooled connection; ``close`` ends them all and is final.
    """

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self._settings = settings
        self._pool = ConnectionPool(settings, settings.pg_pool_size if pool_size is None else pool_size)
        self._session_timeout_ms = statement_timeout_ms(settings)
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        table, staging = sql.Identifier(settings.pg_table), sql.Identifier(STAGING_TABLE)
        self._sql_insert = sql.SQL(_INSERT).format(table=table, staging=staging, columns=columns)
        self._sql_copy = sql.SQL(_COPY).format(table=table, columns=columns)
        self._sql_copy_staging = sql.SQL(_COPY).format(table=staging, columns=columns)

    def open(self) -> None:
        """Connect and apply the schema. Raises ``SinkUnavailable`` when the server cannot be reached."""
        self.migrate()

    def migrate(self) -> None:
        """Apply the schema: the TimescaleDB extension, then the rest in one transaction
        (``timescale_schema``). Idempotent.

        Concurrent callers in other processes wait on an advisory lock. Raises ``SinkUnavailable``,
        ``TransientError`` or ``SinkDataError`` as ``write`` does, ``SinkMisconfigured`` when the server refuses
        the schema (a privilege, a read-only server, a table of that name with other columns).
        """
        with self._pool.borrow() as conn:  # a session that CREATE EXTENSION ended is discarded by the pool
            hypertable = timescale_schema.enable_timescaledb(conn, self._settings.pg_table)
        with self._pool.borrow() as conn, conn.cursor() as cur:
            timescale_schema.migrate(cur, self._settings, hypertable=hypertable)
            conn.commit()

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
        with self._pool.borrow(deadline) as conn:
            try:
                with conn.cursor() as cur:
                    timeout_ms = copy_timeout_ms(deadline, self._session_timeout_ms, self._pool.where)
                    if timeout_ms is not None:  # the wait for a connection took more than its share
                        cur.execute(_SET_STATEMENT_TIMEOUT, (timeout_ms,))
                    cur.copy_expert(self._sql_copy, io.BytesIO(data), size=COPY_CHUNK_BYTES)
                    inserted = cur.rowcount
                conn.commit()
                return inserted
            except _TAKE_STAGING_PATH:
                conn.rollback()
            return self._write_through_staging(conn, data, deadline)

    def _write_through_staging(self, conn: Connection, data: bytes, deadline: float) -> int:
        """The slow path: only the rows whose key is not in the table yet, taken in key order; each statement
        cancelled by the server at ``deadline`` (``time.monotonic()`` seconds)."""
        with conn.cursor() as cur:
            if not conn.staging_ready:
                cur.execute(_SET_STATEMENT_TIMEOUT, (local_timeout_ms(deadline, self._pool.where),))
                cur.execute(_CREATE_STAGING)
            cur.execute(_SET_STATEMENT_TIMEOUT, (local_timeout_ms(deadline, self._pool.where),))
            cur.copy_expert(self._sql_copy_staging, io.BytesIO(data), size=COPY_CHUNK_BYTES)
            cur.execute(_SET_STATEMENT_TIMEOUT, (local_timeout_ms(deadline, self._pool.where),))
            cur.execute(self._sql_insert)
            inserted = cur.rowcount
        conn.commit()
        conn.staging_ready = True  # only now: a rolled-back CREATE TEMP TABLE leaves no table
        return inserted

    def check(self) -> None:
        """Run ``SELECT 1`` on a pooled connection. Raises ``SinkUnavailable`` when that fails."""
        try:
            with self._pool.borrow() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                conn.rollback()
        except SinkUnavailable:
            raise
        except EtlError as e:
            raise SinkUnavailable(str(e)) from e

    def close(self) -> None:
        """Close every connection. Safe to call twice; the sink cannot be used afterwards."""
        self._pool.close()


def count_stored(settings: Settings) -> int:
    """Rows in the events table (0 before it exists), read without the sink's migration: looking must not write.
    Raises what ``translate_error`` makes of a driver error: ``SinkUnavailable`` when PostgreSQL cannot be reached
    or refuses the login, ``TransientError`` for another failure (no right to read the table...)."""
    try:
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
    except psycopg2.Error as e:
        raise translate_error(e, settings.pg_table) from e

