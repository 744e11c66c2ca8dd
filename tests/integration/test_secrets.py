"""Secrets end to end: every entry point refuses a default password in production with one line and exit code 2,
passwords read from files reach real NATS and Redis servers, and the compose file's servers, started from its own
entrypoints, let in only the password of their secret."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from etl.broker import redis_client
from etl.config import Settings
from etl.dev import servers as devservers
from etl.natsio.conn import NatsUnavailable, connect
from tests.unit.test_deploy import ROOT, compose

PROCESS_TIMEOUT_S = 60
STRONG = {"PG_PASSWORD": "pg-Xy7-not-a-default", "NEO4J_PASSWORD": "neo-Xy7-not-a-default"}
VENV_BIN = str(Path(sys.executable).parent)
# Every process that reads the settings at start: the bridge, a pool by its launcher and by Dramatiq's own command
# (what users run), and etl commands that connect.
ENTRY_POINTS = {
    "bin/bridge": [str(ROOT / "bin/bridge")],
    "bin/worker": [str(ROOT / "bin/worker"), "timescale"],
    "dramatiq etl.actors": [sys.executable, "-m", "dramatiq", "etl.actors", "--processes", "1", "--threads", "1",
                            "--queues", "enrich"],
    "etl migrate": [sys.executable, "-m", "etl.cli", "migrate"],
    "etl dlq list": [sys.executable, "-m", "etl.cli", "dlq", "list"],
}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with only ``env`` (and a PATH to this Python) set, in the repository."""
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=PROCESS_TIMEOUT_S,
                          env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})


def config_errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of stderr that report a bad setting. Dramatiq's main process logs its own start-up line too."""
    return [line for line in done.stderr.splitlines() if line.startswith("configuration error: ")]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_stops_in_production_on_a_default_password(entry: str) -> None:
    done = run(ENTRY_POINTS[entry], {"AF_ENV": "prod"})
    assert done.returncode == 2, done.stderr
    assert config_errors(done) == ["configuration error: PG_PASSWORD is a well-known default, refused with "
                                   "AF_ENV=prod (production): set a secret of your own"], done.stderr
    assert "Traceback" not in done.stderr
    if entry != "dramatiq etl.actors":
        assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(("env", "named"), [
    ({"PG_PASSWORD": STRONG["PG_PASSWORD"], "NEO4J_PASSWORD": "neo4j"}, "NEO4J_PASSWORD is a well-known"),
    ({**STRONG, "REDIS_URL": "redis://127.0.0.1:1/0?password=redis"}, "the password in REDIS_URL is a well-known"),
    ({**STRONG, "NATS_URL": "nats://etl:@127.0.0.1:1"}, "the password in NATS_URL is empty"),
    ({**STRONG, "PG_PASSWORD": ""}, "PG_PASSWORD is empty"),
])
def test_the_bridge_names_the_variable_whose_password_is_refused(env: dict[str, str], named: str) -> None:
    done = run(ENTRY_POINTS["bin/bridge"], {**env, "AF_ENV": "production"})
    assert done.returncode == 2 and done.stderr.startswith(f"configuration error: {named}"), done.stderr
    assert done.stderr.count("\n") == 1


def test_a_weak_password_in_a_secret_file_is_refused_as_well(tmp_path: Path) -> None:
    (tmp_path / "neo4j").write_text("password\n")
    done = run(ENTRY_POINTS["bin/worker"], {"AF_ENV": "prod", "PG_PASSWORD": STRONG["PG_PASSWORD"],
                                            "NEO4J_PASSWORD_FILE": str(tmp_path / "neo4j")})
    assert done.returncode == 2 and done.stderr.startswith("configuration error: NEO4J_PASSWORD is a well-known")


def test_an_unreadable_secret_file_is_one_line() -> None:
    done = run(ENTRY_POINTS["etl migrate"], {"PG_PASSWORD_FILE": "/nonexistent/pg_password"})
    assert done.returncode == 2
    assert done.stderr == ("configuration error: PG_PASSWORD_FILE names a file that cannot be read (No such file or "
                           "directory): '/nonexistent/pg_password'\n")


def test_the_local_default_keeps_its_default_passwords() -> None:
    for env in ({}, {"AF_ENV": "dev"}, {"AF_ENV": "test"}):
        done = run([sys.executable, "-m", "etl.cli", "config"], env)
        assert done.returncode == 0, done.stderr


# --- redaction where URLs reach an operator ------------------------------------------------------------------------

HIDDEN = "Hidden-Xy7-pw"


def test_etl_config_and_a_configuration_error_hide_every_url_password() -> None:
    shown = run([sys.executable, "-m", "etl.cli", "config"], {
        "REDIS_URL": f"redis://127.0.0.1:6379/0?password={HIDDEN}", "NATS_URL": f"nats://u:{HIDDEN}@n1:4222",
        "NEO4J_URI": f"falkor://:{HIDDEN}@g:6379"})
    assert shown.returncode == 0 and HIDDEN not in shown.stdout and "password=***" in shown.stdout
    for var, url in (("NATS_URL", f"nats://u:{HIDDEN}@n1:bad"), ("REDIS_URL", f"redis://:{HIDDEN}@[::1/0"),
                     ("NEO4J_URI", f"bolt://u:{HIDDEN}@g:bad")):
        done = run([sys.executable, "-m", "etl.cli", "config"], {var: url})
        assert done.returncode == 2 and done.stderr.startswith(f"configuration error: {var}"), done.stderr
        assert HIDDEN not in done.stderr and "***" in done.stderr and done.stderr.count("\n") == 1


def test_a_server_that_cannot_be_reached_is_named_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    port = devservers.free_port()  # nobody listens there
    settings = Settings.from_env({"NATS_URL": f"nats://etl:{HIDDEN}@127.0.0.1:{port}",
                                  "REDIS_URL": f"redis://etl:{HIDDEN}@127.0.0.1:{port}/0"})

    async def attempt() -> str:
        with pytest.raises(NatsUnavailable) as info:
            await connect(settings, name="secrets-test")
        return str(info.value)

    assert f"nats://etl:***@127.0.0.1:{port}" in asyncio.run(attempt())
    with pytest.raises(redis.ConnectionError) as failed:
        redis_client(settings).ping()
    assert HIDDEN not in str(failed.value)
    assert HIDDEN not in caplog.text


# --- passwords from files, against real servers --------------------------------------------------------------------

def nats_connects(settings: Settings) -> bool:
    async def attempt() -> bool:
        try:
            nc = await connect(settings, name="secrets-test")
        except NatsUnavailable:
            return False
        await nc.close()
        return True

    return asyncio.run(attempt())


def test_nats_password_file_authenticates_the_user_nats_url_names(tmp_path: Path) -> None:
    (tmp_path / "nats_password").write_text("nats-Xy7-secret\n")
    server = devservers.nats_server(tmp_path / "nats", extra_args=["--user", "etl", "--pass", "nats-Xy7-secret"])
    server.start()
    try:
        url = f"nats://etl@127.0.0.1:{server.port}"
        password_file = str(tmp_path / "nats_password")
        assert nats_connects(Settings.from_env({"NATS_URL": url, "NATS_PASSWORD_FILE": password_file}))
        assert not nats_connects(Settings.from_env({"NATS_URL": url})), "no password, no entry"
        assert not nats_connects(Settings.from_env({"NATS_URL": url, "NATS_PASSWORD": "wrong"}))
    finally:
        server.stop()


def test_redis_password_file_authenticates_every_client(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text("redis-Xy7-secret\n")
    server = devservers.redis_server(tmp_path / "redis", aof=False).start()
    try:
        with redis.Redis(port=server.port) as admin:
            admin.config_set("requirepass", "redis-Xy7-secret")
        url = f"redis://127.0.0.1:{server.port}/0"
        client = redis_client(Settings.from_env({"REDIS_URL": url,
                                                 "REDIS_PASSWORD_FILE": str(tmp_path / "redis_password")}))
        assert client.ping()
        client.close()
        with pytest.raises(redis.AuthenticationError):
            redis_client(Settings.from_env({"REDIS_URL": url})).ping()
    finally:
        server.stop()


# --- the compose file's servers, started by its own entrypoints -----------------------------------------------------

def compose_argv(service: str, secrets_dir: Path, data_dir: Path) -> list[str]:
    """The entrypoint and command of a compose service, as the container's shell gets them (``$$`` is ``$``), with
    its secrets under ``secrets_dir`` and its data under ``data_dir``."""
    spec: dict[str, Any] = compose()["services"][service]
    argv = [*spec["entrypoint"], *spec["command"]]
    argv = [a.replace("$$", "$").replace("/run/secrets/", f"{secrets_dir}/") for a in argv]
    return [str(data_dir) if a == "/data" else a for a in argv]


def test_the_compose_nats_lets_in_only_its_secrets_user_and_answers_its_healthcheck(tmp_path: Path) -> None:
    (tmp_path / "nats_password").write_text("nats-Xy7-compose\n")
    port, monitor = devservers.free_port(), devservers.free_port()
    argv = compose_argv("nats", tmp_path, tmp_path / "data")
    argv[argv.index("-m") + 1] = str(monitor)  # the container's ports, moved to free ones here
    server = devservers.Server("nats", [*argv, "-a", "127.0.0.1", "-p", str(port)], port, tmp_path,
                               env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}).start()
    try:
        url = f"nats://etl@127.0.0.1:{port}"
        assert nats_connects(Settings.from_env({"NATS_URL": url,
                                                "NATS_PASSWORD_FILE": str(tmp_path / "nats_password")}))
        assert not nats_connects(Settings.from_env({"NATS_URL": f"nats://127.0.0.1:{port}"}))
        check = compose()["services"]["nats"]["healthcheck"]["test"][-1].replace("8222", str(monitor))
        with urllib.request.urlopen(check, timeout=5) as reply:  # noqa: S310 - our own server
            assert reply.status == 200
    finally:
        server.stop()


def test_the_compose_redis_requires_the_password_of_its_secret(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text("redis-Xy7-compose\n")
    shims = tmp_path / "bin"  # the image's entrypoint script and server, as the compose file calls them
    shims.mkdir()
    (shims / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "docker-entrypoint.sh").chmod(0o755)
    (shims / "redis-server").symlink_to(devservers.redis_server(tmp_path / "probe").argv[0])
    port = devservers.free_port()
    argv = [*compose_argv("redis", tmp_path, tmp_path), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(tmp_path)]  # the image's working directory is its /data volume
    server = devservers.Server("redis", argv, port, tmp_path, env={"PATH": f"{shims}:{os.environ['PATH']}"}).start()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis_client(Settings.from_env({"REDIS_URL": url,
                                                 "REDIS_PASSWORD_FILE": str(tmp_path / "redis_password")}))
        assert client.ping() and client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()
        with pytest.raises(redis.AuthenticationError):
            redis_client(Settings.from_env({"REDIS_URL": url})).ping()
    finally:
        server.stop()
