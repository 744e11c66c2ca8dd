"""Secrets: from a variable or its ``_FILE``, refused in production when well known, and never echoed."""

from __future__ import annotations

import pytest

from etl.config import Settings
from etl.envvalues import redact_url
from etl.errors import ConfigError

SECRET = "Xy-s3cr3t-9"  # found nowhere in a message or the redacted settings


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert "\n" not in message
    return message


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
    s = Settings.from_env({"REDIS_URL": f"redis://r:6379/0?password={SECRET}"})
    assert s.redacted()["REDIS_URL"] == "redis://r:6379/0?password=***"
    assert SECRET not in repr(s)
