"""The TimescaleDB sink against a misconfigured PostgreSQL: it fails clearly, once, instead of retrying forever.

A PostgreSQL server of this module's own holds the stand-ins and roles, so no other test sees them. A stand-in
``timescaledb`` extension is a control file and an install script that fails, found through
``extension_control_path`` (PostgreSQL 18), set per database: each test's database sees only its own stand-in.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from click.testing import CliRunner
from psycopg2 import sql

from etl.cli import main
from etl.config import Settings
from etl.dev import servers
from etl.errors import SinkMisconfigured
from etl.sinks.registry import Sinks
from etl.sinks.timescale import TimescaleSink
from tests.integration.test_timescale_sink import make_event
from tests.waiting import wait_for

SCHEMA_LOGGER = "etl.sinks.timescale_schema"
_CONTROL = """comment = 'a stand-in for TimescaleDB whose install fails (tests only)'
default_version = '0.0.1'
relocatable = false
"""
# Each install script fails as CREATE EXTENSION can where TimescaleDB is installed but not preloaded: its loader
# ends the session with FATAL, which "ends_session" does too (transaction_timeout ends the session; the client
# sees only the connection closed); "errors" raises an ERROR with the loader's message and hint.
STANDIN_SCRIPTS = {
    "ends_session": "SET LOCAL transaction_timeout = '20ms';\nSELECT pg_sleep(60);\n",
    "errors": """DO $$ BEGIN
    RAISE EXCEPTION 'extension "timescaledb" must be preloaded'
        USING HINT = 'Please preload the timescaledb library via shared_preload_libraries.';
END $$;
""",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    root = tmp_path_factory.mktemp("misconfigured_pg")
    for name, script in STANDIN_SCRIPTS.items():
        extension = root / "standins" / name / "extension"
        extension.mkdir(parents=True)
        (extension / "timescaledb.control").write_text(_CONTROL)
        (extension / "timescaledb--0.0.1.sql").write_text(script)
    pg = servers.postgres_server(root, durable=False).start()  # owns root's files when run as root
    yield pg
    pg.stop()


def admin(server: servers.Server, dbname: str = "postgres") -> Any:
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname=dbname)
    conn.autocommit = True
    return conn


def run(server: servers.Server, dbname: str, *statements: sql.Composable | str) -> None:
    conn = admin(server, dbname)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def database(server: servers.Server) -> str:
    """A database of this test's own on the module's server."""
    name = f"etl_{uuid.uuid4().hex[:10]}"
    run(server, "postgres", sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


@pytest.fixture
def settings_for(server: servers.Server, database: str) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        return Settings.from_env({"PG_HOST": "127.0.0.1", "PG_PORT": str(server.port), "PG_DB": database,
                                  "PG_TABLE": "events", "PG_POOL_SIZE": "2", "AF_ENV": "test", **env})
    return make


def role(server: servers.Server, database: str, *grants: str) -> str:
    """A new login role (trust authentication: no password) with ``grants`` (SQL, ``{role}`` for its name)."""
    name = f"etl_{uuid.uuid4().hex[:10]}"
    statements = [f'CREATE ROLE "{name}" LOGIN', *(g.format(role=f'"{name}"') for g in grants)]
    run(server, database, *statements)
    return name


def use_standin(server: servers.Server, database: str, standin: str) -> None:
    path = Path(server.data_dir) / "standins" / standin
    run(server, "postgres", sql.SQL("ALTER DATABASE {} SET extension_control_path = {}").format(
        sql.Identifier(database), sql.Literal(f"{path}:$system")))


def relkind(server: servers.Server, database: str, table: str) -> tuple[Any, ...]:
    conn = admin(server, database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'), "
                        "(SELECT relkind FROM pg_class WHERE oid = to_regclass(%s))", (table,))
            row = cur.fetchone()
            assert row is not None
            return tuple(row)
    finally:
        conn.close()


@pytest.mark.parametrize(("standin", "cause"), [
    ("ends_session", "the server ended the session (server closed the connection unexpectedly), as TimescaleDB "
                     "does when it is not in shared_preload_libraries"),
    ("errors", "hint: Please preload the timescaledb library via shared_preload_libraries"),
])
def test_a_failing_timescaledb_extension_leaves_a_plain_table_and_one_warning(
    server: servers.Server, database: str, settings_for: Callable[..., Settings], standin: str, cause: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use_standin(server, database, standin)
    sink = TimescaleSink(settings_for())
    try:
        with caplog.at_level(logging.WARNING, logger=SCHEMA_LOGGER):
            sink.open()
        assert sink.write([make_event(1), make_event(2)]) == 2
    finally:
        sink.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == SCHEMA_LOGGER]
    assert len(warnings) == 1, warnings
    assert "TimescaleDB extension could not be created" in warnings[0]
    assert cause in warnings[0] and "events is a plain PostgreSQL table" in warnings[0]
    assert relkind(server, database, "events") == (0, "r")


def refused_at_open(settings: Settings, reason: str) -> None:
    """Opening a sink on ``settings`` raises ``SinkMisconfigured`` matching ``reason``; the sink is closed after."""
    sink = TimescaleSink(settings)
    try:
        with pytest.raises(SinkMisconfigured, match=reason):
            sink.open()
    finally:
        sink.close()


def test_no_privilege_to_create_the_table_is_misconfigured(
    server: servers.Server, database: str, settings_for: Callable[..., Settings]
) -> None:
    # Since PostgreSQL 15 only the database owner may create in schema public.
    refused_at_open(settings_for(PG_USER=role(server, database)),
                    r"permission denied for schema public \(SQLSTATE 42501")


def test_a_read_only_server_is_misconfigured(
    server: servers.Server, database: str, settings_for: Callable[..., Settings]
) -> None:
    # What a hot standby answers too; here the role's default makes every transaction read-only.
    user = role(server, database, "GRANT CREATE ON SCHEMA public TO {role}",
                "ALTER ROLE {role} SET default_transaction_read_only = on")
    refused_at_open(settings_for(PG_USER=user), r"read-only transaction \(SQLSTATE 25006")


def test_a_table_of_the_same_name_with_other_columns_is_misconfigured_and_left_alone(
    server: servers.Server, database: str, settings_for: Callable[..., Settings]
) -> None:
    run(server, database, 'CREATE TABLE events (id BIGINT PRIMARY KEY, "time" TEXT, note TEXT)')
    sink = TimescaleSink(settings_for())
    try:
        with pytest.raises(SinkMisconfigured) as caught:
            sink.open()
    finally:
        sink.close()
    assert str(caught.value) == (
        "timescale table events exists but is not the sink's: no column timestamp, type, source, host_id, env, "
        "rdns, metadata, payload; id is bigint, not text; time is text, not timestamp with time zone. Rename or "
        "drop it, or set PG_TABLE to another name")
    conn = admin(server, database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'events'::regclass AND attnum > 0")
            assert sorted(r[0] for r in cur.fetchall()) == ["id", "note", "time"]  # no dst_rdns added
    finally:
        conn.close()


def test_a_privilege_revoked_after_open_fails_each_write_as_misconfigured(
    server: servers.Server, database: str, settings_for: Callable[..., Settings]
) -> None:
    user = role(server, database, "GRANT CREATE ON SCHEMA public TO {role}")
    sink = TimescaleSink(settings_for(PG_USER=user))
    try:
        sink.open()
        assert sink.write([make_event(1)]) == 1
        run(server, database, f'REVOKE INSERT ON events FROM "{user}"')
        for _ in range(2):  # every write, not just the first: no retry can succeed
            with pytest.raises(SinkMisconfigured, match=r"permission denied for table events \(SQLSTATE 42501"):
                sink.write([make_event(2)])
    finally:
        sink.close()


def test_etl_migrate_names_the_refusal_in_one_line(server: servers.Server, database: str) -> None:
    env = {"PG_HOST": "127.0.0.1", "PG_PORT": str(server.port), "PG_DB": database, "PG_TABLE": "events",
           "PG_USER": role(server, database), "AF_ENV": "test"}
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (
        "error: timescale table events: the server refuses the sink, not retried: permission denied for schema "
        "public (SQLSTATE 42501 insufficient_privilege)")
    assert "Traceback" not in result.output


def test_a_sink_that_fails_to_open_keeps_no_connection(
    server: servers.Server, database: str, settings_for: Callable[..., Settings]
) -> None:
    user = role(server, database)
    sinks = Sinks({"timescale": lambda: TimescaleSink(settings_for(PG_USER=user))})
    # What the timescale actor does for each batch until the sink opens. The error outlives the call, as it does
    # in a worker (Dramatiq keeps it with the message), and its traceback with it: the sink must not hold its
    # connections until that is collected.
    with pytest.raises(SinkMisconfigured) as caught:
        sinks.get("timescale")

    def sessions() -> int:
        conn = admin(server)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (user,))
                row = cur.fetchone()
                return int(row[0]) if row else -1
        finally:
            conn.close()

    wait_for(lambda: sessions() == 0, timeout_s=5, describe=lambda: f"{sessions()} sessions left")
    assert "permission denied for schema public" in str(caught.value)
