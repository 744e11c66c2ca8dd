"""The Dockerfile, docker-compose.yml and deploy/ stay in step with the code, without Docker.

Nothing here builds or runs an image. What is checked is what drifts when the code changes under the deployment
files: the commands they run, the queues they name, the environment they set and the ports they expect. The
dashboard's queries are checked in ``test_dashboard.py``, the alert rules in ``test_alert_rules.py``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from dramatiq.cli import make_argument_parser

from etl import cli
from etl.config import ENV_VARS, SECRET_FILE_VARS, Settings
from etl.pools import dramatiq_command
from etl.stages import BY_NAME, QUEUES, STAGES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
PROMETHEUS_FILE = ROOT / "deploy/prometheus/prometheus.yml"
# Where Docker mounts a service's secrets, and where the compose file takes each secret's file from.
SECRETS_MOUNT = "/run/secrets/"
SECRETS_SOURCE = "${SECRETS_DIR:-./secrets}/"

# The servers of the stack: compose service -> the port its clients connect to (each image's default).
SERVER_PORTS = {"nats": 4222, "redis": 6379, "timescaledb": 5432, "neo4j": 7687}
URL_SETTINGS = ("NATS_URL", "REDIS_URL", "NEO4J_URI")
SCHEME_PORTS = {"nats": 4222, "redis": 6379, "bolt": 7687, "neo4j": 7687}
# Variables our processes read besides the settings (the pool launcher's are settings too): Dramatiq's own.
DRAMATIQ_VAR_PREFIX = "dramatiq_"
# What each process talks to, so must start after (role -> compose services).
NEEDS = {"bridge": {"nats", "redis"}, "enrich": {"redis"}, "publish": {"redis", "nats"},
         "timescale": {"redis", "timescaledb", "migrate"}, "graph": {"redis", "neo4j", "migrate"},
         "etl migrate": {"timescaledb", "neo4j"}}
ONE_SHOT = "migrate"
_INTERPOLATION = re.compile(r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
                            r"|(?P<bare>[A-Za-z_]\w*))")


# --- reading the files --------------------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def our_services() -> dict[str, dict[str, Any]]:
    """The services that run our image: built from the Dockerfile, or naming the image a built one tags."""
    services = compose()["services"]
    ours = {s["image"] for s in services.values() if s.get("build") and s.get("image")}
    found = {name: s for name, s in services.items() if s.get("build") or s.get("image") in ours}
    assert found, "docker-compose.yml builds our image for some service"
    return found


def resolve(value: Any) -> str:
    """A compose value as the container sees it when no variable is set: defaults applied, ``$$`` unescaped."""
    def substitute(m: re.Match[str]) -> str:
        return m["arg"] if m["op"] in (":-", "-") else ""

    return _INTERPOLATION.sub(substitute, str(value)).replace("$$", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as its container gets it when no variable is set: a key without a value (passed
    through only when set) is left out."""
    return {key: resolve(value) for key, value in (service.get("environment") or {}).items() if value is not None}


@functools.cache
def declared_secrets() -> frozenset[str]:
    return frozenset(compose().get("secrets", {}))


def mounted_secret(service: dict[str, Any], path: str) -> str:
    """The name of the secret mounted at ``path``, which ``service`` must be given and the file must declare."""
    assert path.startswith(SECRETS_MOUNT), f"{path} is not a Docker secret"
    name = path.removeprefix(SECRETS_MOUNT)
    assert name in declared_secrets(), f"no secret {name} in the compose file"
    assert name in service.get("secrets", []), f"{path}: the service is not given the secret {name}"
    return name


def process_env(service: dict[str, Any]) -> dict[str, str]:
    """``environment(service)`` as our processes read it in the container, where each secret's ``_FILE`` names a
    mounted Docker secret: here the secret's variable, set to a stand-in that is no default password."""
    env = environment(service)
    for var in SECRET_FILE_VARS:
        if var in env:
            name = mounted_secret(service, env.pop(var))
            env[var.removesuffix("_FILE")] = f"stand-in-for-{name}"
    return env


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(i.upper(), rest.strip()) for i, _, rest in (ln.strip().partition(" ") for ln in joined.splitlines())
            if i]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def exec_form(arguments: str) -> list[str]:
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), f"not exec form: {arguments}"
    return argv


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service.get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] == "CMD", f"healthcheck is not ['CMD', ...]: {test!r}"
    return list(test[1:])


# --- what a command runs ------------------------------------------------------------------------------------------

def role(argv: list[str]) -> str:
    """What ``argv`` runs in our image, checked against the code: 'bridge', a pool, 'etl <command>' or queues.

    Raises ``AssertionError`` naming what does not exist.
    """
    if argv[:2] == ["python", "-m"] and len(argv) > 2:
        module, args = argv[2], argv[3:]
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        if module == "workers.bridge" and not args:
            return "bridge"
        if module == "workers.run":
            assert len(args) == 1 and args[0] in BY_NAME, f"workers.run needs one of {sorted(BY_NAME)}: {args}"
            return args[0]
        if module == "dramatiq":
            return dramatiq_role(args)
    if argv[:1] == ["dramatiq"]:
        return dramatiq_role(argv[1:])
    if argv[:1] == ["etl"]:
        return etl_role(argv[1:])
    raise AssertionError(f"not a command of our image: {argv}")


def etl_role(args: list[str]) -> str:
    command: click.Command = cli.main
    path = ["etl"]
    while isinstance(command, click.Group) and args and args[0] in command.commands:
        command, path, args = command.commands[args[0]], [*path, args[0]], args[1:]
    assert not isinstance(command, click.Group), f"no such command: {' '.join(path + args[:1])}"
    try:
        command.make_context(" ".join(path), list(args))  # parses and validates, runs nothing
    except click.ClickException as e:
        raise AssertionError(f"{' '.join(path)}: {e.format_message()}") from None
    return " ".join(path)


def dramatiq_role(args: list[str]) -> str:
    try:
        parsed = make_argument_parser().parse_args(args)
    except SystemExit:
        raise AssertionError(f"dramatiq rejects its arguments: {args}") from None
    for module in [parsed.broker, *parsed.modules]:
        assert importlib.util.find_spec(module.partition(":")[0]) is not None, f"no module {module}"
    assert parsed.queues, "a worker without --queues would consume every queue"
    unknown = set(parsed.queues) - set(QUEUES)
    assert not unknown, f"not queues of etl.broker.QUEUES: {unknown}"
    return "queues " + " ".join(parsed.queues)


def service_roles() -> Iterator[tuple[str, dict[str, Any], str]]:
    for name, service in our_services().items():
        yield name, service, role(service["command"])


# --- commands and queues ------------------------------------------------------------------------------------------

def test_every_command_of_the_compose_file_exists_and_its_healthcheck_checks_that_process() -> None:
    for name, service, what in service_roles():
        if name == ONE_SHOT:
            assert what == "etl migrate" and service["healthcheck"] == {"disable": True}, name
            continue
        argv = healthcheck_argv(service)
        assert role(argv) == "etl health", f"{name}: {argv}"
        assert argv[argv.index("--pool") + 1] == what, f"{name} runs {what} but its healthcheck checks {argv}"


def test_the_image_runs_the_bridge_and_checks_the_bridge() -> None:
    stage = dict(final_stage())
    assert role(exec_form(stage["CMD"])) == "bridge"
    check = stage["HEALTHCHECK"]
    argv = exec_form(check[check.index("CMD ") + 4:])
    assert role(argv) == "etl health" and argv[-2:] == ["--pool", "bridge"]


def test_the_image_has_the_etl_and_dramatiq_commands() -> None:
    script = re.search(r'^etl\s*=\s*"([\w.]+):(\w+)"', pyproject(), flags=re.M)
    assert script, "pyproject.toml installs the etl command"
    assert getattr(importlib.import_module(script[1]), script[2]) is cli.main
    assert re.search(r"^dramatiq(\[[^]]*\])?==", (ROOT / "requirements.txt").read_text(), flags=re.M)


def test_every_pool_has_a_service_whose_launcher_runs_dramatiq_on_the_pool_queue() -> None:
    pools = {what: (name, service) for name, service, what in service_roles() if what in BY_NAME}
    assert pools.keys() == BY_NAME.keys()
    for pool, (name, service) in pools.items():
        assert name == f"worker-{pool}"
        argv, _ = dramatiq_command(pool, process_env(service))
        assert role(["python", *argv[1:]]) == f"queues {BY_NAME[pool].queue}", name


# --- environment and variables ------------------------------------------------------------------------------------

def test_our_services_set_only_variables_our_processes_read_and_valid_values() -> None:
    for name, service, what in service_roles():
        raw = service.get("environment") or {}
        unknown = {k for k in raw if k not in ENV_VARS + SECRET_FILE_VARS and not k.startswith(DRAMATIQ_VAR_PREFIX)}
        assert not unknown, f"{name} sets variables no settings read: {unknown}"
        assert all(isinstance(v, str) or v is None for v in raw.values()), \
            f"{name}: quote values, YAML would retype them (a key alone passes the variable through when set)"
        Settings.from_env(process_env(service))  # raises ConfigError on a bad value
        if what in BY_NAME:
            dramatiq_command(what, process_env(service))


def strings(node: Any) -> Iterator[str]:
    """Every string of a parsed YAML document, keys included (comments are not interpolated, so not read)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def compose_variables() -> dict[str, set[str | None]]:
    """Each variable the compose file interpolates or passes through (a key alone) -> its defaults (None where it
    has none)."""
    found: dict[str, set[str | None]] = {}
    for m in (m for text in strings(compose()) for m in _INTERPOLATION.finditer(text)):
        name = m["braced"] or m["bare"]
        found.setdefault(name, set()).add(m["arg"] if m["op"] in (":-", "-") else None)
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if value is None:
                found.setdefault(name, set()).add(None)
    return found


def test_every_compose_variable_has_one_default_and_is_documented_in_the_readme() -> None:
    readme = README.read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|")]
    for name, defaults in compose_variables().items():
        assert len(defaults) == 1, f"${{{name}}} has different defaults: {defaults}"
        (default,) = defaults
        assert f"`{name}`" in readme, f"${{{name}}} is not documented in README.md"
        if default is not None:
            assert any(f"`{name}`" in row and f"`{default}`" in row for row in rows), \
                f"README.md has no table row for {name} with its default `{default}`"


def test_pool_scaling_variables_default_to_the_pools_of_the_code() -> None:
    raw = compose()["services"]
    for stage in STAGES:
        pool, spec = stage.name, stage.pool
        service, prefix = raw[f"worker-{pool}"], pool.upper()
        env = service["environment"]
        assert service["deploy"]["replicas"] == f"${{{prefix}_REPLICAS:-1}}"
        assert env["WORKER_PROCESSES"] == f"${{{prefix}_PROCESSES:-{spec.processes}}}"
        assert env["WORKER_THREADS"] == f"${{{prefix}_THREADS:-{spec.threads}}}"


def test_no_password_is_written_in_the_compose_file() -> None:
    """Each password reaches its containers as a Docker secret, a file of SECRETS_DIR: no variable holds one,
    none has a default, and a secret's path is one the service is given."""
    for name, spec in compose()["secrets"].items():
        assert spec == {"file": f"{SECRETS_SOURCE}{name}"}, name
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_AUTH$", key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret; give it as a file of a secret"
                mounted_secret(service, value)


def shell(service: dict[str, Any], key: str) -> str:
    """A service's entrypoint or healthcheck as one text, as the container's shell gets it (``$$`` is ``$``)."""
    value = service[key]["test"] if key == "healthcheck" else service[key]
    return " ".join(value).replace("$$", "$")


def test_every_server_and_our_services_share_one_secret_per_password() -> None:
    services = compose()["services"]
    postgres = services["timescaledb"]["environment"]
    for name, service in our_services().items():
        env = service["environment"]
        assert (env["PG_DB"], env["PG_USER"], env["PG_PASSWORD_FILE"]) == (
            postgres["POSTGRES_DB"], postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD_FILE"]), name
        read = {var: f'"$(cat {env[var]})"' for var in SECRET_FILE_VARS}
        assert f'NEO4J_AUTH="{env["NEO4J_USER"]}/$(cat {env["NEO4J_PASSWORD_FILE"]})"' in shell(
            services["neo4j"], "entrypoint"), name
        assert f"--requirepass {read['REDIS_PASSWORD_FILE']}" in shell(services["redis"], "entrypoint"), name
        user = urlsplit(env["NATS_URL"]).username
        assert f"--user {user} --pass {read['NATS_PASSWORD_FILE']}" in shell(services["nats"], "entrypoint"), name
        # The servers' own healthchecks authenticate with the same secret.
        assert f"REDISCLI_AUTH={read['REDIS_PASSWORD_FILE']} redis-cli" in shell(services["redis"], "healthcheck")
        assert f"-p {read['NEO4J_PASSWORD_FILE']}" in shell(services["neo4j"], "healthcheck")


def test_grafana_wants_a_sign_in_and_takes_its_admin_password_from_a_secret() -> None:
    grafana = compose()["services"]["grafana"]
    env = grafana["environment"]
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false" and env.get("GF_USERS_ALLOW_SIGN_UP") == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    mounted_secret(grafana, env["GF_SECURITY_ADMIN_PASSWORD__FILE"])


# --- ports ----------------------------------------------------------------------------------------------------------

def served_port(service: dict[str, Any], what: str) -> int:
    """The port a long-running service serves its metrics on, as its settings say."""
    settings = Settings.from_env(process_env(service))
    return settings.health_port if what == "bridge" else settings.metrics_port


def test_the_image_exposes_the_health_and_metrics_ports() -> None:
    exposed = {int(p.split("/")[0]) for op, args in final_stage() if op == "EXPOSE" for p in args.split()}
    defaults = Settings()
    assert exposed == {defaults.health_port, defaults.metrics_port}


def test_prometheus_scrapes_every_replica_of_every_service_on_the_port_it_serves() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_FILE.read_text())["scrape_configs"]}
    long_running = {name: (s, what) for name, s, what in service_roles() if name != ONE_SHOT}
    assert jobs.keys() == long_running.keys()
    for name, (service, what) in long_running.items():
        (sd,) = jobs[name]["dns_sd_configs"]
        assert (sd["names"], sd.get("type", "SRV")) == ([name], "A"), f"{name}: one A lookup of the service name"
        assert sd["port"] == served_port(service, what), name


def test_our_services_publish_no_host_port_so_they_can_scale() -> None:
    for name, service in our_services().items():
        assert "ports" not in service and "container_name" not in service, name


def url_port(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or SCHEME_PORTS.get(parts.scheme)


def test_our_services_reach_each_server_on_its_port() -> None:
    services = compose()["services"]
    for name, service in our_services().items():
        settings = Settings.from_env(process_env(service))
        endpoints = [url_port(getattr(settings, var.lower())) for var in URL_SETTINGS]
        for host, port in [*endpoints, (settings.pg_host, settings.pg_port)]:
            assert host in SERVER_PORTS and host in services, f"{name}: {host} is not a server of the stack"
            assert port == SERVER_PORTS[host], f"{name}: {host}:{port}, the server listens on {SERVER_PORTS[host]}"


def test_server_healthchecks_and_commands_use_the_same_ports() -> None:
    services = compose()["services"]
    for server in ("redis", "timescaledb", "neo4j"):
        check = " ".join(services[server]["healthcheck"]["test"])
        assert re.search(rf"[\s:]{SERVER_PORTS[server]}\b", check), f"{server} healthcheck: {check}"
    assert "--port" not in services["redis"]["command"]
    nats = services["nats"]["command"]
    assert "-p" not in nats and "--port" not in nats
    monitor = nats[nats.index("-m") + 1]
    assert f"127.0.0.1:{monitor}/" in " ".join(services["nats"]["healthcheck"]["test"])


# --- servers and start order --------------------------------------------------------------------------------------

def test_redis_persists_every_queued_batch_with_aof() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    fsync = command[command.index("--appendfsync") + 1]
    assert fsync in ("always", "everysec")
    # The bridge acks NATS only once Redis has a batch on disk: with everysec too (group commit shares the wait).
    assert all(environment(s)["REDIS_WAIT_AOF"] != "false" for s in our_services().values())
    major, minor = (int(x) for x in re.match(r"redis:(\d+)\.(\d+)", redis["image"]).groups())
    assert (major, minor) >= (7, 2), "WAITAOF needs Redis 7.2"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_stateful_servers_keep_their_data_in_volumes() -> None:
    services = compose()["services"]
    nats = services["nats"]["command"]
    assert "-js" in nats or "--jetstream" in nats
    data_dirs = {"nats": nats[nats.index("-sd") + 1], "timescaledb": "/var/lib/postgresql/data", "neo4j": "/data"}
    for server, directory in data_dirs.items():
        assert any(v.split(":")[1] == directory for v in services[server]["volumes"]), server


def test_each_process_starts_after_what_it_needs_is_healthy_or_done() -> None:
    services = compose()["services"]
    for name, service, what in service_roles():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict) and NEEDS[what] <= depends.keys(), f"{name} waits for {NEEDS[what]}"
        for dependency, spec in depends.items():
            if dependency == ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", name
            else:
                assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"
                assert "test" in services[dependency]["healthcheck"], f"{dependency} has no healthcheck"


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(float(n) * units[u] for n, u in parts)


def test_processes_get_longer_than_a_batch_may_take_to_stop() -> None:
    for name, service, _ in service_roles():
        timeout_s = Settings.from_env(process_env(service)).processing_timeout_s
        assert duration_s(service["stop_grace_period"]) > timeout_s, name


# --- the image ----------------------------------------------------------------------------------------------------

def test_the_image_is_multi_stage_on_one_slim_base_and_runs_as_non_root() -> None:
    froms = [args.split() for op, args in dockerfile() if op == "FROM"]
    assert len(froms) >= 2 and all(len(f) == 3 and f[1].upper() == "AS" for f in froms), froms
    assert len({f[0] for f in froms}) == 1, "the venv is copied across stages: they need the same Python"
    assert froms[0][0].startswith("python:") and "slim" in froms[0][0]
    users = [args for op, args in final_stage() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(op == "HEALTHCHECK" for op, _ in final_stage())


def test_the_image_installs_the_pinned_requirements_and_the_whole_package() -> None:
    runs = [args for op, args in dockerfile() if op == "RUN"]
    copies = [args.split()[0] for op, args in dockerfile() if op == "COPY" and "--from" not in args]
    assert "requirements.txt" in copies and any("-r requirements.txt" in r for r in runs)
    assert any(re.search(r"pip install --no-deps \.$", r) for r in runs), "the package, without unpinned deps"
    requirements = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
    # Exact pins only; an environment marker may follow (a dependency only some Pythons need).
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+(; .+)?", ln.strip()) for ln in requirements), requirements
    include = re.search(r"^include\s*=\s*\[([^]]*)\]", pyproject(), flags=re.M)
    assert include, "pyproject.toml names its packages"
    for pattern in re.findall(r'"([^"]+)"', include[1]):
        assert pattern.rstrip("*") in copies, f"the image lacks package {pattern}"


@pytest.mark.parametrize("text, expected", [("${A:-x}", "x"), ("${A-}", ""), ("${A}", ""), ("$$A", "$A"),
                                            ("a/${B:-p w}", "a/p w"), ("$${A#x/}", "${A#x/}")])
def test_resolve_applies_compose_defaults(text: str, expected: str) -> None:
    assert resolve(text) == expected


def test_every_service_has_a_memory_limit_and_the_one_log_rotation() -> None:
    """One ``x-logging`` block, given to every service, and a limit on each; ``test_compose_config`` checks them
    as Docker Compose renders them, and sizes them against each other."""
    text = COMPOSE_FILE.read_text()
    assert text.count("driver: json-file") == 1 and text.count("&logging") == 1
    for name, service in compose()["services"].items():
        assert service.get("logging") == compose()["x-logging"], name
        assert re.fullmatch(r"\d+[mg]", str(service["deploy"]["resources"]["limits"]["memory"])), name
