"""Every ``etl`` command that a server fails ends with one line on stderr naming the server and the cause, and the
exit code ``etl --help`` documents, never a traceback: a server nobody listens for, a login PostgreSQL refuses, a
database that is not there. Run as an operator runs it, in a process of its own, so a traceback would show.

The other servers are the session's, up: each case fails on the one server it names. Passwords on the failing
server's URL must not reach the output. A refused Redis or FalkorDB password: ``test_redis_auth``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from click.testing import CliRunner
from psycopg2 import sql

from etl.cli import main
from etl.config import Settings
from etl.dev.servers import free_port
from etl.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from etl.sinks.postgres import connection_params

HIDDEN = "Hidden-pw-4q"
# Every command that talks to a server, with its arguments.
DLQ_COMMANDS = (("dlq", "list"), ("dlq", "show", "0-1"), ("dlq", "replay", "--all"), ("dlq", "purge"))


def run_etl(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env, "PYTHONPATH": os.getcwd()})


def assert_one_line(done: subprocess.CompletedProcess[str], exit_code: int, *named: str,
                    warned: str | None = None, prefix: str = "error: ") -> str:
    """The command ended with ``exit_code`` and one line on stderr holding each of ``named``; returns the line.
    ``warned``: the command logs one warning holding it first (``etl migrate``'s fallback to a plain table);
    ``prefix``: how the line starts."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    if warned is not None:
        assert len(lines) == 2 and lines[0].startswith("WARNING: ") and warned in lines[0], done.stderr
        lines = lines[1:]
    assert len(lines) == 1, done.stderr
    assert done.returncode == exit_code, done.stderr
    assert lines[0].startswith(prefix), lines[0]
    for text in named:
        assert text in lines[0], lines[0]
    assert HIDDEN not in done.stderr + done.stdout
    return lines[0]


def down(server: str, port: int) -> dict[str, str]:
    """Settings that point ``server`` at ``port``, where nobody listens, with a password that must stay hidden."""
    return {
        "redis": {"REDIS_URL": f"redis://etl:{HIDDEN}@127.0.0.1:{port}/0"},
        "nats": {"NATS_URL": f"nats://etl:{HIDDEN}@127.0.0.1:{port}"},
        "postgresql": {"PG_PORT": str(port), "PG_PASSWORD": HIDDEN},
        "graph": {"NEO4J_URI": f"falkor://:{HIDDEN}@127.0.0.1:{port}"},
        "neo4j": {"NEO4J_URI": f"bolt://127.0.0.1:{port}", "NEO4J_PASSWORD": HIDDEN},
    }[server]


# What names the server in the line: its URL, credentials redacted, or its address.
NAMED = {"redis": "redis://etl:***@127.0.0.1:{port}/0", "nats": "127.0.0.1:{port}",
         "postgresql": "port {port}", "graph": "127.0.0.1:{port}", "neo4j": "127.0.0.1:{port}"}


@pytest.mark.parametrize(("args", "server"), [
    *((args, "redis") for args in DLQ_COMMANDS),
    (("report",), "redis"), (("report",), "nats"), (("report",), "postgresql"), (("report",), "graph"),
    (("report",), "neo4j"), (("migrate",), "postgresql"), (("migrate",), "graph"), (("migrate",), "neo4j"),
])
def test_a_server_nobody_listens_for_is_one_line(args: tuple[str, ...], server: str,
                                                 make_settings: Callable[..., Settings]) -> None:
    port = free_port()
    done = run_etl(args, make_settings(**down(server, port)).to_env())
    # The test servers' PostgreSQL has no TimescaleDB: `etl migrate` says so before it reaches the graph.
    warned = "TimescaleDB" if args == ("migrate",) and server in ("graph", "neo4j") else None
    assert_one_line(done, EXIT_FAILURE, NAMED[server].format(port=port), warned=warned)


def test_a_login_postgresql_refuses_is_one_line(make_settings: Callable[..., Settings]) -> None:
    env = make_settings(PG_USER="nobody_here", PG_PASSWORD=HIDDEN).to_env()
    for args in (("report",), ("migrate",)):
        assert_one_line(run_etl(args, env), EXIT_FAILURE, 'role "nobody_here" does not exist')


def test_a_database_that_is_not_there_is_one_line(make_settings: Callable[..., Settings]) -> None:
    env = make_settings(PG_DB="no_such_db").to_env()
    for args in (("report",), ("migrate",)):
        assert_one_line(run_etl(args, env), EXIT_FAILURE, 'database "no_such_db" does not exist')


def test_a_table_not_created_yet_counts_zero(make_settings: Callable[..., Settings]) -> None:
    """Before ``etl migrate``, ``etl report`` reads without writing: no table yet is nothing stored, not a failure."""
    done = run_etl(("report",), make_settings().to_env())
    assert done.returncode == EXIT_OK and done.stderr == "", done.stderr
    assert '"stored": 0' in done.stdout


@pytest.fixture
def role_without_rights(make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    """Settings logging in as a role that may connect but not read the events table, which exists."""
    admin = make_settings()
    role, table = sql.Identifier(f"etl_noread_{admin.pg_table[-8:]}"), sql.Identifier(admin.pg_table)
    conn = psycopg2.connect(**connection_params(admin))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            cur.execute(sql.SQL("CREATE TABLE {} (id TEXT)").format(table))
        yield make_settings(PG_USER=role.string)
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE {}").format(table))
            cur.execute(sql.SQL("DROP ROLE {}").format(role))
    finally:
        conn.close()


def test_a_table_the_role_may_not_read_is_one_line(role_without_rights: Settings) -> None:
    done = run_etl(("report",), role_without_rights.to_env())
    assert_one_line(done, EXIT_FAILURE, f"timescale table {role_without_rights.pg_table}", "permission denied")


def test_health_and_status_name_what_they_cannot_reach(make_settings: Callable[..., Settings]) -> None:
    """Already so before the command group did it: checked here with the others, so that every command is."""
    port = free_port()
    closed = {"HEALTH_PORT": str(port), "METRICS_PORT": str(port)}
    for pool in ("bridge", "enrich"):
        line = assert_one_line(run_etl(("health", "--pool", pool), make_settings(**closed).to_env()), EXIT_FAILURE,
                               prefix=f"{pool}: unhealthy: ")
        assert "Connection refused" in line, line
    env = make_settings(**{k: v for server in ("redis", "nats", "postgresql", "graph")
                           for k, v in down(server, port).items()}).to_env()
    done = run_etl(("status", "--once", "--interval", "0.1"), env)
    assert (done.returncode, done.stderr) == (EXIT_FAILURE, ""), done.stderr
    shown = [line for line in done.stdout.splitlines() if line.startswith("! ")]
    assert sorted(line.split(":")[0] for line in shown) == ["! graph", "! nats", "! postgresql", "! redis"], shown
    assert HIDDEN not in done.stdout


@pytest.mark.parametrize("scheme", ["bolt", "neo4j+s"])
def test_credentials_in_a_neo4j_uri_are_a_configuration_error_that_hides_them(scheme: str) -> None:
    """The Neo4j driver refuses them, repeating the URI with the password: refused before, by name only."""
    done = run_etl(("migrate",), {"NEO4J_URI": f"{scheme}://neo4j:{HIDDEN}@127.0.0.1:7687"})
    assert_one_line(done, EXIT_CONFIG, "NEO4J_URI carries credentials", prefix="configuration error: ")


def test_help_lists_the_exit_codes() -> None:
    shown = CliRunner().invoke(main, ["--help"])
    assert shown.exit_code == EXIT_OK
    lines = [" ".join(line.split()) for line in shown.output.splitlines()]
    assert "Exit codes:" in lines
    for code in (EXIT_OK, EXIT_FAILURE, EXIT_CONFIG):
        assert any(line.startswith(f"{code} ") for line in lines), shown.output
