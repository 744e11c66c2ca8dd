"""Secrets: from a variable or its ``_FILE``, refused in production when well known, and never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import SECRET_FILE_VARS, Settings
from etl.credentials import MAX_SECRET_FILE_BYTES, is_production, url_password
from etl.envvalues import redact_url
from etl.errors import ConfigError

SECRET = "Xy-s3cr3t-9"  # found nowhere in a message or the redacted settings
STRONG = {"PG_PASSWORD": "pg-" + SECRET, "NEO4J_PASSWORD": "neo-" + SECRET}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- from a file ----------------------------------------------------------------------------------------------------

def test_every_secret_can_come_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    assert set(SECRET_FILE_VARS) >= {"PG_PASSWORD_FILE", "NEO4J_PASSWORD_FILE", "REDIS_PASSWORD_FILE",
                                     "NATS_PASSWORD_FILE"}
    env = {}
    for var in SECRET_FILE_VARS:
        path = tmp_path / var
        path.write_text(f"{var}-{SECRET}\n")
        env[var] = str(path)
    s = Settings.from_env({**env, "NATS_URL": "nats://etl@n1:4222"})
    assert (s.pg_password, s.neo4j_password) == (f"PG_PASSWORD_FILE-{SECRET}", f"NEO4J_PASSWORD_FILE-{SECRET}")
    assert (s.redis_password, s.nats_password) == (f"REDIS_PASSWORD_FILE-{SECRET}", f"NATS_PASSWORD_FILE-{SECRET}")
    assert SECRET not in repr(s)


def test_a_secret_file_keeps_inner_blanks_and_an_empty_file_var_means_none(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(" a b \r\n")
    assert Settings.from_env({"PG_PASSWORD_FILE": str(path)}).pg_password == " a b "
    assert Settings.from_env({"PG_PASSWORD_FILE": "", "PG_PASSWORD": "x"}).pg_password == "x"


def test_a_secret_and_its_file_together_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET)
    message = config_error({"PG_PASSWORD": "other", "PG_PASSWORD_FILE": str(path)})
    assert message == "PG_PASSWORD and PG_PASSWORD_FILE are both set: set one of them"


def unreadable(kind: str, directory: Path) -> Path:
    """A path that ``PG_PASSWORD_FILE`` and the like cannot use, of one ``kind``."""
    path = directory / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "too big":
        path.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    elif kind == "not UTF-8":
        path.write_bytes(b"\xff\xfe")
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "too big", "not UTF-8"])
def test_an_unreadable_secret_file_is_one_line_naming_the_variable(tmp_path: Path, kind: str) -> None:
    path = unreadable(kind, tmp_path)
    message = config_error({"NEO4J_PASSWORD_FILE": str(path)})
    assert message.startswith("NEO4J_PASSWORD_FILE names a file ") and message.endswith(repr(str(path)))


# --- production -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "production"), [
    ("prod", True), ("production", True), ("PROD", True), (" Production ", True), ("prod-eu", True),
    ("production_2", True), ("prod.us", True),
    ("dev", False), ("", False), ("test", False), ("staging", False), ("preprod", False), ("products", False),
    ("prodx", False),
])
def test_which_af_env_values_mean_production(value: str, production: bool) -> None:
    assert is_production(value) is production


@pytest.mark.parametrize(("env", "named"), [
    ({}, "PG_PASSWORD is a well-known default"),
    ({"PG_PASSWORD": "postgres"}, "PG_PASSWORD is a well-known default"),
    ({"PG_PASSWORD": ""}, "PG_PASSWORD is empty"),
    ({"PG_PASSWORD": STRONG["PG_PASSWORD"]}, "NEO4J_PASSWORD is a well-known default"),
    ({**STRONG, "NEO4J_PASSWORD": "Neo4j"}, "NEO4J_PASSWORD is a well-known default"),
    ({**STRONG, "NEO4J_PASSWORD": " "}, "NEO4J_PASSWORD is empty"),
    ({**STRONG, "REDIS_URL": "redis://:redis@r:6379/0"}, "the password in REDIS_URL is a well-known default"),
    ({**STRONG, "REDIS_URL": "redis://r:6379/0?password=password"}, "the password in REDIS_URL is a well-known"),
    ({**STRONG, "REDIS_URL": "redis://etl:@r:6379/0"}, "the password in REDIS_URL is empty"),
    ({**STRONG, "REDIS_PASSWORD": "changeme"}, "REDIS_PASSWORD is a well-known default"),
    ({**STRONG, "NATS_URL": f"nats://a:{SECRET}@n1,nats://a:nats@n2"}, "the password in NATS_URL is a well-known"),
    ({"PG_PASSWORD": STRONG["PG_PASSWORD"], "NEO4J_URI": "falkor://:falkordb@g:6379"},
     "the password in NEO4J_URI is a well-known"),
    ({**STRONG, "NEO4J_URI": "falkor://g:6379", "NEO4J_PASSWORD": "falkordb"}, "NEO4J_PASSWORD is a well-known"),
    ({**STRONG, "NEO4J_URI": "bolt://g:7687", "NEO4J_PASSWORD": ""}, "NEO4J_PASSWORD is empty"),
])
def test_production_refuses_an_empty_or_well_known_password_naming_its_variable(env: dict[str, str],
                                                                                named: str) -> None:
    message = config_error({**env, "AF_ENV": "prod"})
    assert message.startswith(named) and "AF_ENV=prod" in message
    assert SECRET not in message
    Settings.from_env({**env, "AF_ENV": "staging"})  # outside production, the same settings start


@pytest.mark.parametrize("env", [
    STRONG,
    {"PG_PASSWORD": STRONG["PG_PASSWORD"], "NEO4J_URI": "falkor://g:6379"},  # Neo4j's password is not used
    {**STRONG, "PG_PASSWORD": "", "PG_SSLCERT": __file__, "PG_SSLKEY": __file__},  # a client certificate instead
    {**STRONG, "REDIS_URL": "redis://etl@r:6379/0", "REDIS_PASSWORD": SECRET},
    {**STRONG, "REDIS_URL": "redis://r:6379/0", "NATS_URL": "nats://t0ken-only@n1:4222"},
])
def test_production_starts_with_secrets_of_its_own(env: dict[str, str]) -> None:
    Settings.from_env({**env, "AF_ENV": "production"})


def test_production_reads_a_weak_secret_from_its_file_too(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("password\n")
    assert config_error({"AF_ENV": "prod", "PG_PASSWORD_FILE": str(path)}).startswith("PG_PASSWORD is a well-known")


@pytest.mark.parametrize(("env", "sent"), [
    ({}, "password"),  # the original AegisFlux's Neo4j default
    ({"NEO4J_URI": "falkor://g:6379"}, ""),  # a local FalkorDB has none: nothing is sent
    ({"NEO4J_URI": "falkor://g:6379", "NEO4J_PASSWORD": SECRET}, SECRET),
    ({"NEO4J_URI": "bolt://g:7687", "NEO4J_PASSWORD": ""}, ""),
])
def test_the_graph_password_defaults_by_backend(env: dict[str, str], sent: str) -> None:
    s = Settings.from_env(env)
    assert s.graph_password == sent
    assert Settings.from_env(s.to_env()).graph_password == sent, "a child process resolves it alike"


def test_a_falkordb_password_from_its_file_is_checked_in_production(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(f"{SECRET}\n")
    env = {"PG_PASSWORD": STRONG["PG_PASSWORD"], "NEO4J_URI": "falkor://g:6379", "NEO4J_PASSWORD_FILE": str(path)}
    assert Settings.from_env({**env, "AF_ENV": "prod"}).graph_password == SECRET
    path.write_text("falkordb\n")
    assert config_error({**env, "AF_ENV": "prod"}).startswith("NEO4J_PASSWORD is a well-known default")


# --- passwords beside URLs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_PASSWORD": "a", "REDIS_URL": "redis://:b@r:6379/0"}, "REDIS_PASSWORD is set and REDIS_URL carries"),
    ({"REDIS_PASSWORD": "a", "REDIS_URL": "redis://r/0?password=b"}, "REDIS_PASSWORD is set and REDIS_URL carries"),
    ({"NATS_PASSWORD": "a", "NATS_URL": "nats://u:b@n1"}, "NATS_PASSWORD is set and NATS_URL carries"),
    ({"NATS_PASSWORD": "a", "NATS_URL": "nats://u@n1,nats://v@n2"}, "NATS_PASSWORD needs every URL"),
    ({"NEO4J_PASSWORD": "a", "NEO4J_URI": "falkor://:b@g:6379"}, "NEO4J_PASSWORD is set and NEO4J_URI carries"),
])
def test_a_password_setting_and_one_in_its_url_are_an_error(env: dict[str, str], message: str) -> None:
    assert config_error(env).startswith(message)


@pytest.mark.parametrize(("url", "password"), [
    ("redis://u:p%40w@h/0", "p@w"), ("redis://h/0?password=q", "q"), ("redis://:@h/0", ""), ("redis://u@h/0", None),
    ("redis://h/0", None),
])
def test_url_password(url: str, password: str | None) -> None:
    assert url_password(url) == password


# --- redaction ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env", [
    {"REDIS_URL": f"redis://u:{SECRET}@h:notaport/0"},
    {"REDIS_URL": f"redis://u:{SECRET}@[::1:6379/0"},  # urlsplit itself refuses it
    {"REDIS_URL": f"http://u:{SECRET}@h:6379/0"},
    {"REDIS_URL": f"redis://u:pa/{SECRET}@h:6379:x"},  # a slash in the password
    {"NATS_URL": f"nats://u:{SECRET}@n1:4222,nats://u:{SECRET}@n2:bad"},
    {"NATS_URL": f"nats://{SECRET}@n1:4222,ws://n2:80"},
    {"NEO4J_URI": f"falkor://:{SECRET}@g:x"},
    {"NEO4J_URI": f"bolt:/{SECRET}@g"},
    {"STATUS_METRICS_URLS": f"ftp://u:{SECRET}@h/metrics"},
])
def test_a_bad_url_is_not_echoed_with_its_credentials(env: dict[str, str]) -> None:
    message = config_error(env)
    assert SECRET not in message and "***" in message


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://h:6379/0?password={SECRET}", "redis://h:6379/0?password=***"),
    (f"redis://h/0?db=1&PASSWORD={SECRET}&ssl_cert_reqs=none", "redis://h/0?db=1&PASSWORD=***&ssl_cert_reqs=none"),
    (f"rediss://etl:{SECRET}@h:6380/0", "rediss://etl:***@h:6380/0"),
    (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock?password=***"),
    (f"nats://{SECRET}@n1:4222,nats://u:{SECRET}@n2:4222", "nats://***@n1:4222,nats://u:***@n2:4222"),
    ("nats://n1:4222", "nats://n1:4222"),
])
def test_redact_url_hides_userinfo_and_query_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_etl_config_view_hides_a_query_string_password() -> None:
    s = Settings.from_env({"REDIS_URL": f"redis://r:6379/0?password={SECRET}", "NATS_PASSWORD": SECRET})
    shown = s.redacted()
    assert shown["REDIS_URL"] == "redis://r:6379/0?password=***" and shown["NATS_PASSWORD"] == "***"
    assert SECRET not in repr(s)
