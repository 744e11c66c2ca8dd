"""Retention of the events table on a real plain PostgreSQL (no TimescaleDB here: the policies' statements are
unit-tested, ``tests/unit/test_retention.py``): expired rows are deleted in bounded batches through an index on
their event time, new rows stay, runs are counted, and inserts go on while a large deletion runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import redis
from prometheus_client import REGISTRY
from psycopg2 import sql

from etl.broker import redis_client
from etl.config import Settings
from etl.retention.runs import expire
from etl.retention.task import RetentionTask
from etl.sinks import timescale_schema
from etl.sinks.timescale import TimescaleSink
from etl.sinks.timescale_retention import TableExpiry
from tests.integration.retention_support import expiring_in_background

DAY_MS = 86_400_000
MAX_WRITES = 1000
OLD_ROWS = 150_000


def now_ms() -> int:
    return int(time.time() * 1000)


def event(event_id: str, timestamp: int) -> dict[str, Any]:
    return {"id": event_id, "type": "connect", "source": "/usr/bin/psql", "timestamp": timestamp, "env": "test",
            "rdns": None, "metadata": {"host_id": "h1"}, "payload": None}


def query(settings: Settings, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user, dbname=settings.pg_db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(table=sql.Identifier(settings.pg_table)),
                        {"table": settings.pg_table})
            return cur.fetchall()
    finally:
        conn.close()


def ids(settings: Settings) -> set[str]:
    return {row[0] for row in query(settings, "SELECT id FROM {table}")}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(TIMESCALE_RETENTION="1d", TIMESCALE_RETENTION_BATCH="10", RETENTION_INTERVAL="1m")


@pytest.fixture
def sink(settings: Settings) -> Iterator[TimescaleSink]:
    s = TimescaleSink(settings, pool_size=2)
    s.open()
    yield s
    s.close()


@pytest.fixture
def expiry(settings: Settings) -> Iterator[TableExpiry]:
    e = TableExpiry(settings)
    yield e
    e.close()


def old_and_new(sink: TimescaleSink, old: int, new: int) -> set[str]:
    sink.write([event(f"old-{i}", now_ms() - 2 * DAY_MS - i) for i in range(old)])
    fresh = [event(f"new-{i}", now_ms() - i) for i in range(new)]
    sink.write(fresh)
    return {e["id"] for e in fresh}


def test_migrate_indexes_the_event_time_when_retention_is_on(sink: TimescaleSink, settings: Settings) -> None:
    indexes = query(settings, "SELECT indexdef FROM pg_indexes WHERE tablename = %(table)s")
    assert any(row[0].endswith('USING btree ("time")') for row in indexes), indexes


def test_expired_rows_are_deleted_in_bounded_batches(sink: TimescaleSink, expiry: TableExpiry,
                                                     settings: Settings) -> None:
    new = old_and_new(sink, old=35, new=5)

    run = expire(expiry, time.time() - expiry.retention_s, budget_s=60)

    assert (run.removed, run.statements, run.complete) == (35, 4, True)
    assert ids(settings) == new
    assert expire(expiry, time.time() - expiry.retention_s, budget_s=0).removed == 0


def test_no_table_yet_is_nothing_to_delete(make_settings: Callable[..., Settings]) -> None:
    expiry = TableExpiry(make_settings(TIMESCALE_RETENTION="1d"))
    try:
        assert expiry.remove_before(time.time()) == 0
    finally:
        expiry.close()


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": "timescale"}) or 0.0


def test_a_run_is_counted_and_one_process_runs_at_a_time(sink: TimescaleSink, expiry: TableExpiry,
                                                          settings: Settings) -> None:
    old_and_new(sink, old=12, new=3)
    removed_before = sample("etl_retention_removed_total")
    started = time.time()
    client: redis.Redis = redis_client(settings)
    try:
        task, other = (RetentionTask([expiry], client, settings.retention_interval_s) for _ in range(2))
        run = task.run_once(expiry)
        assert other.run_once(expiry) is None
    finally:
        client.close()

    assert run is not None and run.removed == 12
    assert sample("etl_retention_removed_total") - removed_before == 12
    assert sample("etl_retention_last_run_timestamp_seconds") >= started
    assert len(ids(settings)) == 3


def test_inserts_go_on_while_a_large_deletion_runs(sink: TimescaleSink, settings: Settings,
                                                   make_settings: Callable[..., Settings]) -> None:
    for start in range(0, OLD_ROWS, 10_000):
        sink.write([event(f"old-{i}", now_ms() - 2 * DAY_MS - i) for i in range(start, start + 10_000)])
    big = TableExpiry(make_settings(TIMESCALE_RETENTION="1d", TIMESCALE_RETENTION_BATCH="5000",
                                    PG_TABLE=settings.pg_table))
    with expiring_in_background(big) as (running, _):
        took: list[float] = []
        while not running.done() and len(took) < MAX_WRITES:
            started = time.monotonic()
            sink.write([event(f"new-{len(took)}-{j}", now_ms()) for j in range(50)])
            took.append(time.monotonic() - started)
        run = running.result(timeout=120)

    assert (run.removed, run.statements) == (OLD_ROWS, 31)
    # No insert waited for the deletion: each took a small part of it (a deletion that locked the table out would
    # hold one insert for about as long as itself).
    assert len(took) >= 5 and max(took) < run.seconds / 4, (run.seconds, sorted(took)[-3:], len(took))
    assert len(ids(settings)) == 50 * len(took)


def test_policies_a_server_refuses_leave_the_migration_standing(sink: TimescaleSink, settings: Settings,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # The hypertable branch, on a server without TimescaleDB's views: its statements fail, the transaction does
    # not (the one path of the policies that can run here).
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user, dbname=settings.pg_db)
    try:
        with conn.cursor() as cur:
            timescale_schema.retention_schema(cur, settings, hypertable=True)
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.commit()
    finally:
        conn.close()
    assert "policies of" in caplog.text and "not applied" in caplog.text
