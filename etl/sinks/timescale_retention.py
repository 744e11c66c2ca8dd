"""Retention of the events table: ``TIMESCALE_RETENTION`` and ``TIMESCALE_COMPRESS_AFTER``.

With TimescaleDB (the table is a hypertable, see ``etl.sinks.timescale_schema``), the server does it: ``migrate``
brings a retention policy (whole chunks older than the retention are dropped) and a compression policy to the
settings, by ``policy_changes``, and the retention task leaves the table alone. On plain PostgreSQL, ``TableExpiry``
deletes the rows whose ``"time"`` (event time) is older, a bounded batch per statement and transaction, found
through an index on ``"time"`` that ``migrate`` makes there; there is no compression.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from etl.config import Settings
from etl.sinks.postgres import (
    connect_timeout,
    connection_params,
    keepalive_options,
    statement_timeout_ms,
    translate_error,
)

log = logging.getLogger(__name__)

APPLICATION_NAME = "etl-retention"
# Segments by host (queries filter on it), ordered by time; the key's id is in the order too, so TimescaleDB can
# check the primary key (id, "time") on compressed chunks without a warning.
COMPRESSION_OPTIONS = ("ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'host_id', "
                       "timescaledb.compress_orderby = '\"time\" DESC, id')")
_POLICY_STATE = """
SELECT proc_name, extract(epoch FROM coalesce((config->>'drop_after')::interval,
                                              (config->>'compress_after')::interval))::bigint
FROM timescaledb_information.jobs
WHERE hypertable_schema = current_schema() AND hypertable_name = %s
  AND proc_name IN ('policy_retention', 'policy_compression')"""
_COMPRESSION_ENABLED = """
SELECT compression_enabled FROM timescaledb_information.hypertables
WHERE hypertable_schema = current_schema() AND hypertable_name = %s"""
_TIME_INDEX = 'CREATE INDEX IF NOT EXISTS {index} ON {table} ("time")'
# ctids found through the time index, then deleted by a TID scan: one short statement, which locks only the rows it
# deletes (inserts take no lock it waits for).
_DELETE_BATCH = ('DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE "time" < to_timestamp(%s) '
                 "LIMIT %s))")


@dataclass(frozen=True)
class Policies:
    """A hypertable's policies, in seconds (0: none), and whether compression is enabled on it."""

    retention_s: int
    compress_after_s: int
    compression_enabled: bool = False


Statement = tuple[str, tuple[Any, ...]]


def quoted(table: str) -> str:
    """``table`` as a quoted SQL identifier (what ``sql.Identifier`` writes), also the text of its ``regclass``."""
    return '"' + table.replace('"', '""') + '"'


def policy_changes(table: str, wanted: Policies, have: Policies) -> list[Statement]:
    """The statements (text and parameters) that bring the hypertable ``table`` from the policies it ``have`` to
    those ``wanted``: a policy whose age changed is removed, then added again; one no longer wanted is removed.
    Compression, once enabled, stays so (its chunks stay compressed); only its policy goes."""
    name = (quoted(table),)
    out: list[Statement] = []
    if wanted.retention_s != have.retention_s:
        if have.retention_s:
            out.append(("SELECT remove_retention_policy(%s::regclass, if_exists => true)", name))
        if wanted.retention_s:
            out.append(("SELECT add_retention_policy(%s::regclass, drop_after => make_interval(secs => %s), "
                        "if_not_exists => true)", (*name, wanted.retention_s)))
    if wanted.compress_after_s and not have.compression_enabled:
        out.append((COMPRESSION_OPTIONS.format(table=quoted(table)), ()))
    if wanted.compress_after_s != have.compress_after_s:
        if have.compress_after_s:
            out.append(("SELECT remove_compression_policy(%s::regclass, if_exists => true)", name))
        if wanted.compress_after_s:
            out.append(("SELECT add_compression_policy(%s::regclass, compress_after => make_interval(secs => %s), "
                        "if_not_exists => true)", (*name, wanted.compress_after_s)))
    return out


def wanted_policies(settings: Settings) -> Policies:
    return Policies(settings.timescale_retention_s, settings.timescale_compress_after_s)


def current_policies(cur: psycopg2.extensions.cursor, table: str) -> Policies:
    """The policies the hypertable ``table`` has now (TimescaleDB's information views)."""
    cur.execute(_POLICY_STATE, (table,))
    ages = dict(cur.fetchall())
    cur.execute(_COMPRESSION_ENABLED, (table,))
    row = cur.fetchone()
    return Policies(int(ages.get("policy_retention") or 0), int(ages.get("policy_compression") or 0),
                    bool(row and row[0]))


def apply_policies(cur: psycopg2.extensions.cursor, settings: Settings) -> None:
    """Bring the hypertable's policies to the settings, in the caller's transaction."""
    for statement, params in policy_changes(settings.pg_table, wanted_policies(settings),
                                            current_policies(cur, settings.pg_table)):
        cur.execute(statement, params)


def create_time_index(cur: psycopg2.extensions.cursor, table: str) -> None:
    """The index on ``"time"`` that plain PostgreSQL's batches find expired rows through."""
    suffix = "_time_idx"
    index = sql.Identifier(table[: 63 - len(suffix)] + suffix)  # PostgreSQL truncates names to 63 bytes
    cur.execute(sql.SQL(_TIME_INDEX).format(index=index, table=sql.Identifier(table)))


def delete_batch_sql(table: str) -> sql.Composed:
    """The statement deleting at most ``%s`` (its second parameter) rows whose ``"time"`` is before ``%s`` (Unix
    seconds, its first)."""
    return sql.SQL(_DELETE_BATCH).format(table=sql.Identifier(table))


class TableExpiry:
    """The table's ``etl.retention.runs.Expiry`` on plain PostgreSQL; with TimescaleDB it removes nothing (the
    policies do). One connection of its own, in autocommit (each statement its own transaction), made at the first
    batch and made again after a failure. One thread at a time."""

    sink = "timescale"
    removes = "rows"

    def __init__(self, settings: Settings, connect: Callable[..., Any] = psycopg2.connect) -> None:
        self._settings = settings
        self._connect = connect
        self._conn: psycopg2.extensions.connection | None = None
        self._timescaledb: bool | None = None
        self._delete = delete_batch_sql(settings.pg_table)
        self.retention_s = settings.timescale_retention_s
        self.batch = settings.timescale_retention_batch
        self.lease_key = f"timescale:{settings.pg_host}:{settings.pg_port}:{settings.pg_db}:{settings.pg_table}"

    def remove_before(self, cutoff_s: float) -> int:
        """Delete at most ``batch`` rows whose event time is before ``cutoff_s`` (Unix seconds); how many. None
        where TimescaleDB's policy does it, or before the table exists. Raises ``SinkUnavailable``,
        ``TransientError`` or ``SinkDataError``."""
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                if self._timescaledb is None:
                    self._timescaledb = self._has_timescaledb(cur)
                if self._timescaledb:
                    return 0
                cur.execute("SELECT to_regclass(%s)", (self._settings.pg_table,))
                if (cur.fetchone() or (None,))[0] is None:
                    return 0
                cur.execute(self._delete, (cutoff_s, self.batch))
                return int(cur.rowcount)
        except psycopg2.Error as e:
            self.close()
            raise translate_error(e, self._settings.pg_table) from e

    def _has_timescaledb(self, cur: psycopg2.extensions.cursor) -> bool:
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        found = cur.fetchone() is not None
        if found:
            log.info("%s is a hypertable: TimescaleDB's retention policy removes its old chunks",
                     self._settings.pg_table)
        return found

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None:
            s = self._settings
            conn = self._connect(**connection_params(s), connect_timeout=connect_timeout(s),
                                 application_name=APPLICATION_NAME,
                                 options=f"-c statement_timeout={statement_timeout_ms(s)}", **keepalive_options(s))
            conn.autocommit = True
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()
