"""The events table's schema: creating it (a hypertable when TimescaleDB is there), bringing a table made by an older
version up to date, and what retention needs. Every statement is idempotent; each worker migrates at start.
"""

from __future__ import annotations

import logging

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from etl.config import Settings
from etl.sinks import timescale_retention
from etl.sinks.postgres import SESSION_FAILURE_CLASSES, describe_error

log = logging.getLogger(__name__)

# One key for every migration in the database: CREATE EXTENSION and CREATE TABLE are not safe to race.
MIGRATION_LOCK_KEY = 0x6574_6C5F_6D69_6772  # "etl_migr"
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
# The pre-2.13 signature: still documented, and the one every TimescaleDB 2.x accepts.
_CREATE_HYPERTABLE = (
    "SELECT create_hypertable(%s::regclass, 'time', if_not_exists => TRUE, migrate_data => TRUE)")


def index_name(table: str) -> str:
    """The name of ``table``'s (host_id, time) index, within PostgreSQL's 63-byte limit."""
    suffix = "_host_id_time_idx"
    return table[: 63 - len(suffix)] + suffix  # PostgreSQL truncates names to 63 bytes


def migrate(cur: psycopg2.extensions.cursor, settings: Settings) -> None:
    """In the cursor's transaction (the caller commits): create the table, its index and (with TimescaleDB) the
    hypertable, if missing, and add the columns a table made by an older version lacks (``dst_rdns``); then what
    retention needs (``retention_schema``). Concurrent callers in other processes wait on an advisory lock.
    Raises ``psycopg2.Error``."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    hypertable = _enable_timescaledb(cur, settings.pg_table)
    table = sql.Identifier(settings.pg_table)
    cur.execute(sql.SQL(_CREATE_TABLE).format(table=table))
    cur.execute(_HAS_COLUMN, (table.as_string(cur), "dst_rdns"))
    if cur.fetchone() is None:
        cur.execute(sql.SQL(_ADD_DST_RDNS).format(table=table))
    index = sql.Identifier(index_name(settings.pg_table))
    cur.execute(sql.SQL(_CREATE_INDEX).format(table=table, index=index))
    if hypertable:
        cur.execute(_CREATE_HYPERTABLE, (table.as_string(cur),))
    retention_schema(cur, settings, hypertable)


def retention_schema(cur: psycopg2.extensions.cursor, settings: Settings, hypertable: bool) -> None:
    """TimescaleDB's policies as the settings say; on plain PostgreSQL, the index retention's batches use."""
    table = settings.pg_table
    if hypertable:
        # Not run in this project's tests (no extension): a policy statement a server refuses is logged, and
        # the sink opens without it rather than not at all.
        cur.execute("SAVEPOINT etl_policies")
        try:
            timescale_retention.apply_policies(cur, settings)
        except psycopg2.DatabaseError as e:
            if (e.pgcode or "")[:2] in SESSION_FAILURE_CLASSES:
                raise
            cur.execute("ROLLBACK TO SAVEPOINT etl_policies")
            log.warning("TimescaleDB retention and compression policies of %s not applied: %s", table,
                        describe_error(e))
        return
    if settings.timescale_retention_s:
        timescale_retention.create_time_index(cur, table)
    if settings.timescale_compress_after_s:
        log.warning("TIMESCALE_COMPRESS_AFTER needs TimescaleDB: %s is not compressed", table)


def _enable_timescaledb(cur: psycopg2.extensions.cursor, table: str) -> bool:
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
    log.warning("TimescaleDB extension %s; %s is a plain PostgreSQL table", reason, table)
    return False
