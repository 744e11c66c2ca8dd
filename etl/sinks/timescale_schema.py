"""The events table's schema: creating it (a hypertable when TimescaleDB is there), bringing a table made by an older
version up to date, and what retention needs. Every statement is idempotent; each worker migrates at start.

A server that cannot give the sink its table fails clearly, once: any failure to create the TimescaleDB extension
leaves a plain table and one warning naming the cause; a table of the same name but not of the sink's columns is
``SinkMisconfigured``, never altered.
"""

from __future__ import annotations

import logging

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from etl.config import Settings
from etl.errors import SinkMisconfigured
from etl.sinks import timescale_retention
from etl.sinks.postgres import SESSION_FAILURE_CLASSES, describe_error, rolled_back

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
    intel       JSONB,
    src_asset   JSONB,
    dst_asset   JSONB,
    dst_geo     JSONB,
    intel_match BOOLEAN     NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "time")
)"""
# The columns the sink writes, with the types its binary COPY data has (as format_type names them).
COLUMN_TYPES = {"id": "text", "time": "timestamp with time zone", "timestamp": "bigint", "type": "text",
                "source": "text", "host_id": "text", "env": "text", "rdns": "text", "dst_rdns": "text",
                "metadata": "jsonb", "payload": "bytea", "intel": "jsonb", "src_asset": "jsonb", "dst_asset": "jsonb",
                "dst_geo": "jsonb", "intel_match": "boolean"}
_COLUMNS_OF = ("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
               "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped")
# Columns a table made by an older version lacks, with their definitions: migrate adds the missing ones, in one
# ALTER TABLE. Only when missing: ALTER TABLE locks the table out even when it changes nothing, and every worker
# migrates at start. intel_match's constant default fills old rows without rewriting the table.
ADDED_LATER: dict[str, str] = {
    "dst_rdns": "TEXT", "intel": "JSONB", "src_asset": "JSONB", "dst_asset": "JSONB", "dst_geo": "JSONB",
    "intel_match": "BOOLEAN NOT NULL DEFAULT false"}
_CREATE_INDEX = 'CREATE INDEX IF NOT EXISTS {index} ON {table} (host_id, "time" DESC)'
# "Show me every hit", newest first: a partial index holds only the matched rows, so it stays small and its
# scan reads no row that did not match.
_CREATE_INTEL_INDEX = 'CREATE INDEX IF NOT EXISTS {index} ON {table} ("time" DESC) WHERE intel_match'
HOST_INDEX_SUFFIX = "_host_id_time_idx"
INTEL_INDEX_SUFFIX = "_intel_match_idx"
# The pre-2.13 signature: still documented, and the one every TimescaleDB 2.x accepts.
_CREATE_HYPERTABLE = (
    "SELECT create_hypertable(%s::regclass, 'time', if_not_exists => TRUE, migrate_data => TRUE)")


def index_name(table: str, suffix: str = HOST_INDEX_SUFFIX) -> str:
    """The name of one of ``table``'s indexes (by default its (host_id, time) one), within PostgreSQL's 63-byte
    limit."""
    return table[: 63 - len(suffix)] + suffix  # PostgreSQL truncates names to 63 bytes


def migrate(cur: psycopg2.extensions.cursor, settings: Settings, *, hypertable: bool) -> None:
    """In the cursor's transaction (the caller commits): create the table, its indexes and (when ``hypertable``, the
    extension being installed: ``enable_timescaledb``) the hypertable, if missing, and add the columns a table made
    by an older version lacks (``ADDED_LATER``); then what retention needs (``retention_schema``). Concurrent callers
    in other processes wait on an advisory lock. Raises ``SinkMisconfigured`` when a table of that name has other
    columns (``column_mismatches``), ``psycopg2.Error`` when a statement fails."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    table = sql.Identifier(settings.pg_table)
    cur.execute(sql.SQL(_CREATE_TABLE).format(table=table))
    cur.execute(_COLUMNS_OF, (table.as_string(cur),))
    columns = dict(cur.fetchall())
    mismatches = column_mismatches(columns)
    if mismatches:
        raise SinkMisconfigured(f"timescale table {settings.pg_table} exists but is not the sink's: "
                                f"{'; '.join(mismatches)}. Rename or drop it, or set PG_TABLE to another name")
    add_missing_columns(cur, table, columns)
    for statement, suffix in ((_CREATE_INDEX, HOST_INDEX_SUFFIX), (_CREATE_INTEL_INDEX, INTEL_INDEX_SUFFIX)):
        index = sql.Identifier(index_name(settings.pg_table, suffix))
        cur.execute(sql.SQL(statement).format(table=table, index=index))
    if hypertable:
        cur.execute(_CREATE_HYPERTABLE, (table.as_string(cur),))
    retention_schema(cur, settings, hypertable)


def add_missing_columns(cur: psycopg2.extensions.cursor, table: sql.Identifier, columns: dict[str, str]) -> None:
    """Add the ``ADDED_LATER`` columns missing from ``columns`` (the table's, name -> type), in one statement;
    none when nothing is missing."""
    missing = [name for name in ADDED_LATER if name not in columns]
    if not missing:
        return
    clauses = [sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(sql.Identifier(name), sql.SQL(ADDED_LATER[name]))
               for name in missing]
    cur.execute(sql.SQL("ALTER TABLE {table} ").format(table=table) + sql.SQL(", ").join(clauses))


def column_mismatches(columns: dict[str, str]) -> list[str]:
    """How a table with ``columns`` (name -> ``format_type``) differs from what the sink writes, one phrase each;
    empty when it fits. Extra columns are fine, and so is a column in ``ADDED_LATER`` missing: migrate adds it."""
    missing = [name for name in COLUMN_TYPES if name not in columns and name not in ADDED_LATER]
    found = [f"{name} is {columns[name]}, not {wanted}" for name, wanted in COLUMN_TYPES.items()
             if columns.get(name, wanted) != wanted]
    return ([f"no column {', '.join(missing)}"] if missing else []) + found


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
            if cur.connection.closed or (e.pgcode or "")[:2] in SESSION_FAILURE_CLASSES:
                raise  # no savepoint to go back to: a retry of the whole migration may succeed
            cur.execute("ROLLBACK TO SAVEPOINT etl_policies")
            log.warning("TimescaleDB retention and compression policies of %s not applied: %s", table,
                        describe_error(e))
        return
    if settings.timescale_retention_s:
        timescale_retention.create_time_index(cur, table)
    if settings.timescale_compress_after_s:
        log.warning("TIMESCALE_COMPRESS_AFTER needs TimescaleDB: %s is not compressed", table)


def enable_timescaledb(conn: psycopg2.extensions.connection, table: str) -> bool:
    """In a transaction of its own on ``conn``: create the timescaledb extension when the server has it and it is
    not installed yet. True when it is installed; otherwise logs one warning naming why ``table`` is a plain table
    and returns False.

    Any error of ``CREATE EXTENSION`` counts so, even one that ended the session: TimescaleDB installed but not in
    shared_preload_libraries ends it with FATAL. ``conn`` is then closed, and a pool discards it. A retry would
    meet the same error, and a plain table stores every event all the same. Raises ``psycopg2.Error`` when the
    server cannot be asked whether it has the extension.
    """
    with conn.cursor() as cur:
        # CREATE EXTENSION is not safe to race with another worker's
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        cur.execute("SELECT installed_version FROM pg_available_extensions WHERE name = 'timescaledb'")
        row = cur.fetchone()
        if row is None:
            why_not: str | None = "is not available on this server"
        elif row[0] is None:
            why_not = _create_extension(cur)
        else:
            why_not = None
    if why_not is None:
        conn.commit()
        return True
    rolled_back(conn)
    log.warning("TimescaleDB extension %s; %s is a plain PostgreSQL table", why_not, table)
    return False


def _create_extension(cur: psycopg2.extensions.cursor) -> str | None:
    """None when ``CREATE EXTENSION timescaledb`` worked, else why not, in one line."""
    try:
        cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg2.Error as e:
        if cur.connection.closed:
            # TimescaleDB's loader ends the session with FATAL, whose message libpq does not always pass on
            return (f"could not be created: the server ended the session ({describe_error(e)}), as TimescaleDB "
                    "does when it is not in shared_preload_libraries; the server's log says why")
        return f"could not be created ({describe_error(e)})"
    return None
