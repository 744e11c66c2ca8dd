"""How a failed ``etl`` command is told: one line and an exit code for a server's or a setting's failure, nothing
(so the traceback stays) for a bug."""

from __future__ import annotations

import redis

from etl.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError, SinkDataError, SinkUnavailable
from etl.ops.failures import Failure, failure_of, one_line

REDIS_WHERE = "redis://etl:***@10.0.0.5:6379/0"


def where() -> str:
    return REDIS_WHERE


def test_a_setting_is_exit_2_and_a_server_exit_1() -> None:
    assert failure_of(ConfigError("NATS refused stream X"), where) == Failure(
        "configuration error: NATS refused stream X", EXIT_CONFIG)
    assert failure_of(SinkUnavailable("FalkorDB connect: refused"), where) == Failure(
        "error: FalkorDB connect: refused", EXIT_FAILURE)
    assert failure_of(SinkDataError("timescale table t: rejected"), where) == Failure(
        "error: timescale table t: rejected", EXIT_FAILURE)


def test_a_driver_hint_on_its_own_line_joins_the_line() -> None:
    text = 'connection to server at "127.0.0.1", port 1 failed: refused\n\tIs the server running?\n'
    assert one_line(text) == 'connection to server at "127.0.0.1", port 1 failed: refused; Is the server running?'
    failure = failure_of(SinkUnavailable(f"timescale table t: {text}"), where)
    assert failure is not None and "\n" not in failure.message


def test_redis_is_named_by_its_redacted_url() -> None:
    for error in (redis.ConnectionError("Error 111 connecting"), redis.AuthenticationError("invalid password"),
                  redis.TimeoutError("Timeout reading"), redis.exceptions.NoPermissionError("NOPERM"),
                  redis.exceptions.OutOfMemoryError("OOM command not allowed")):
        failure = failure_of(error, where)
        assert failure is not None and failure.exit_code == EXIT_FAILURE
        assert failure.message.startswith(f"error: cannot use Redis at {REDIS_WHERE}: {type(error).__name__}: ")


def test_a_bug_keeps_its_traceback() -> None:
    def unused() -> str:
        raise AssertionError("only a Redis failure names Redis")

    for error in (ValueError("bad"), KeyError("x"), redis.ResponseError("WRONGTYPE"), SystemExit(3)):
        assert failure_of(error, unused) is None
