"""Every sink gives up within one time budget (``Settings.sink_budget_s``), which ends before Dramatiq's time limit
interrupts the actor: each sink's time-outs, as it sets them, against that budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
from dramatiq.middleware import TimeLimit

from etl.broker import build_broker, time_limit_ms
from etl.config import Settings
from etl.defaults import MIN_SINK_BUDGET_SHARE, SINK_TIME_MARGIN_S
from etl.errors import SinkUnavailable, TransientError
from etl.sinks import nats_publish, postgres
from etl.sinks.graph import falkordb_backend, neo4j_backend

SINKS_DIR = Path(__file__).resolve().parents[2] / "etl" / "sinks"
TIMEOUTS_S = [1, 2, 5, 8, 9, 10, 11, 25, 30, 300]


def settings(timeout_s: int) -> Settings:
    return Settings.from_env({"PROCESSING_TIMEOUT": str(timeout_s)})


@pytest.mark.parametrize("timeout_s", TIMEOUTS_S)
def test_the_budget_ends_before_the_time_limit(timeout_s: int) -> None:
    s = settings(timeout_s)
    assert timeout_s * MIN_SINK_BUDGET_SHARE <= s.sink_budget_s < time_limit_ms(s) / 1000
    assert s.sink_budget_s == max(timeout_s - SINK_TIME_MARGIN_S, timeout_s * MIN_SINK_BUDGET_SHARE)


def test_the_default_budget_leaves_the_margin() -> None:
    s = Settings()
    assert s.sink_budget_s == s.processing_timeout_s - SINK_TIME_MARGIN_S


def test_the_actors_time_limit_is_the_processing_timeout() -> None:
    s = settings(7)
    broker = build_broker(s)  # connects to nothing yet
    assert [m.time_limit for m in broker.middleware if isinstance(m, TimeLimit)] == [time_limit_ms(s)] == [7000]


def test_no_sink_derives_a_timeout_from_processing_timeout_itself() -> None:
    readers = [p.relative_to(SINKS_DIR) for p in SINKS_DIR.rglob("*.py") if "processing_timeout" in p.read_text()]
    assert not readers, f"use Settings.sink_budget_s: {readers}"


@pytest.mark.parametrize("timeout_s", TIMEOUTS_S)
def test_timescale_waits_within_the_budget(timeout_s: int) -> None:
    s = settings(timeout_s)
    budget_s = s.sink_budget_s
    # A write that waited its share of the budget for a connection still ends its fast path within the budget.
    waited_s = budget_s * postgres.CONNECTION_WAIT_SHARE
    assert waited_s + postgres.statement_timeout_ms(s) / 1000 <= budget_s
    # libpq's connect_timeout and keepalives are whole seconds, at least 1 (libpq waits at least 2 to connect).
    assert postgres.connect_timeout(s) <= max(1.0, budget_s)
    keepalive = postgres.keepalive_options(s)
    noticed_s = keepalive["keepalives_idle"] + keepalive["keepalives_interval"] * keepalive["keepalives_count"]
    assert noticed_s <= budget_s or budget_s < 6


@pytest.mark.parametrize("timeout_s", TIMEOUTS_S)
def test_publisher_calls_end_within_the_budget(timeout_s: int) -> None:
    s = settings(timeout_s)
    coroutine_s, wait_s = nats_publish.call_timeouts_s(s)
    assert 0 < coroutine_s < wait_s <= s.sink_budget_s


def test_a_publisher_call_that_hangs_gives_up_within_the_budget() -> None:
    publisher = nats_publish.NatsPublisher(settings(2))
    publisher._start_loop()
    try:
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="did not answer"):
            publisher._call(asyncio.sleep(60))
        assert time.monotonic() - started < settings(2).sink_budget_s
    finally:
        publisher._stop_loop()


@pytest.mark.parametrize("timeout_s", TIMEOUTS_S)
def test_falkordb_commands_end_within_the_budget(timeout_s: int) -> None:
    s = settings(timeout_s)
    options = falkordb_backend.client_options(s)
    # A command on a new connection: the connect, then the reply.
    assert options["socket_connect_timeout"] + options["socket_timeout"] <= s.sink_budget_s
    assert 0 < falkordb_backend.query_timeout_ms(s) / 1000 < options["socket_timeout"]


def test_falkordb_retries_a_dropped_connection_but_not_a_timed_out_command() -> None:
    retry = falkordb_backend.client_options(settings(30))["retry"]
    for error, calls_expected in ((redis.TimeoutError, 1), (redis.ConnectionError, 2)):
        calls: list[int] = []

        def fail(error: type[Exception] = error, calls: list[int] = calls) -> None:
            calls.append(1)
            raise error("no")

        with pytest.raises(error):
            retry.call_with_retry(fail, lambda _: None)
        assert len(calls) == calls_expected, error


@pytest.mark.parametrize("timeout_s", TIMEOUTS_S)
def test_neo4j_connection_and_attempt_fit_in_the_budget(timeout_s: int) -> None:
    s = settings(timeout_s)
    options, attempt_s = neo4j_backend.driver_options(s), neo4j_backend.attempt_timeout_s(s)
    assert options["connection_timeout"] <= options["connection_acquisition_timeout"]
    assert options["connection_acquisition_timeout"] + attempt_s <= s.sink_budget_s
    assert options["max_transaction_retry_time"] + attempt_s <= s.sink_budget_s


def attempts_until(left_s: float, attempt_s: float = 5.0) -> neo4j_backend._Attempts:
    return neo4j_backend._Attempts(time.monotonic() + left_s, attempt_s, "write")


def test_neo4j_refuses_a_rerun_that_could_not_end_within_the_deadline() -> None:
    attempts = attempts_until(10.0)
    assert attempts.start() == 0
    attempts.failed[0] = "Neo.TransientError.Transaction.DeadlockDetected"
    assert attempts.start() == 1  # 5 s still fit in what is left
    late = attempts_until(10.0)
    late.start()
    late._deadline = time.monotonic() + 4.9
    late.failed[0] = "Neo.TransientError.Transaction.DeadlockDetected"
    with pytest.raises(TransientError, match="DeadlockDetected.*no time left before the write's deadline"):
        with neo4j_backend._translated("write"):
            late.start()
    assert late.made == 1
    lost = attempts_until(10.0)
    lost.start()
    lost._deadline = time.monotonic()
    with pytest.raises(SinkUnavailable, match="gave up after other"):
        with neo4j_backend._translated("write"):
            lost.start()
