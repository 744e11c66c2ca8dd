"""Settings: defaults, parsing, one-line errors, redaction."""

from __future__ import annotations

import pytest

from etl.config import ENV_VARS, Settings
from etl.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.max_batch_size, s.pg_db, s.af_env, s.fake_rdns, s.processing_timeout_s) == (100, "aegisflux", "dev",
                                                                                          False, 30)
    assert s.max_event_bytes == 1024 * 1024


@pytest.mark.parametrize(("env", "message"), [
    ({"MAX_BATCH_SIZE": "abc"}, "MAX_BATCH_SIZE must be a positive integer, got 'abc'"),
    ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE must be a positive integer, got '0'"),
    ({"AF_FAKE_RDNS": "maybe"}, "AF_FAKE_RDNS must be true or false, got 'maybe'"),
    ({"PG_TABLE": "events; drop"}, "PG_TABLE must be an identifier"),
    ({"NATS_URL": "http://x"}, "NATS_URL must be a URL with scheme"),
    ({"NEO4J_URI": "falkor://h:notaport"}, "NEO4J_URI has an invalid port"),
    ({"NATS_SUBJECT_RAW": "events.>"}, "NATS_SUBJECT_RAW must be a literal NATS subject"),
    ({"RETRY_MIN_BACKOFF_MS": "9", "RETRY_MAX_BACKOFF_MS": "5"}, "must not exceed"),
])
def test_bad_values_fail_with_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_secrets_are_redacted() -> None:
    s = Settings.from_env({"PG_PASSWORD": "hunter2", "NEO4J_PASSWORD": "pw2", "NATS_URL": "nats://u:tok@h:4222"})
    text = repr(s)
    assert "hunter2" not in text and "pw2" not in text and "tok" not in text
    assert s.redacted()["NATS_URL"] == "nats://u:***@h:4222"
    assert set(s.redacted()) == set(ENV_VARS)


def test_to_env_round_trips() -> None:
    s = Settings.from_env({"PG_PASSWORD": "pw", "AF_FAKE_RDNS": "yes", "MAX_BATCH_SIZE": "7"})
    assert Settings.from_env(s.to_env()) == s
