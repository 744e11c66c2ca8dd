"""The TimescaleDB sink against a real PostgreSQL (no TimescaleDB here, so the plain-table path)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg2
import pytest
from psycopg2 import sql

from etl.config import Settings
from etl.dev import servers
from etl.errors import SinkDataError, SinkMisconfigured, SinkUnavailable, TransientError
from etl.pipeline.events import parse_event
from etl.sinks.postgres import statement_timeout_ms, translate_error
from etl.sinks.timescale import TimescaleSink
from etl.sinks.timescale_pool import APPLICATION_NAME
from tests.waiting import wait_for

BASE_MS = 1704110400000  # 2024-01-01T12:00:00Z
PAYLOAD = b"\x00\x01binary\\\t\n\xff"


def make_event(i: int, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"event-{i}",
        "type": "connect",
        "source": "/usr/bin/psql",
        "timestamp": BASE_MS + i,
        "metadata": {"host_id": f"host-{i % 3:03d}", "host_ip": "10.1.2.3", "pid": "1234", "uid": 1001,
                     "user": "alice", "enriched_at": "2024-01-01T12:00:00.123Z", "enrichment_version": "1"},
        "payload": base64.b64encode(PAYLOAD).decode(),
        "args": None,
        "env": "dev",
        "rdns": "host-3.local",
        "unknown_extra": {"kept": "but not stored"},
    }
    return {**event, **overrides}


def query(settings: Settings, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                            dbname=settings.pg_db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(table=sql.Identifier(settings.pg_table)), params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def count(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM {table}")[0][0])


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def sink(settings: Settings) -> Iterator[TimescaleSink]:
    sink = TimescaleSink(settings, pool_size=4)
    sink.open()
    yield sink
    sink.close()


def test_batch_lands_with_every_column(sink: TimescaleSink, settings: Settings) -> None:
    events = [make_event(0, rdns=None), make_event(1, payload={"cmd": "ls"}, dst_rdns="db.example.net"),
              make_event(2, payload=None)]
    assert sink.write(events) == 3
    assert query(settings, "SELECT dst_rdns FROM {table} ORDER BY id") == [(None,), ("db.example.net",), (None,)]

    rows = query(settings, """SELECT id, "time", "timestamp", type, source, host_id, env, rdns,
                                     metadata->>'enriched_at', metadata->>'uid', payload, created_at
                              FROM {table} ORDER BY id""")
    first = rows[0]
    assert first[:8] == ("event-0", datetime(2024, 1, 1, 12, tzinfo=UTC), BASE_MS, "connect",
                         "/usr/bin/psql", "host-000", "dev", None)
    assert first[8:10] == ("2024-01-01T12:00:00.123Z", "1001")
    assert bytes(first[10]) == PAYLOAD
    assert first[11] is not None
    assert rows[1][1] == datetime(2024, 1, 1, 12, 0, 0, 1000, tzinfo=UTC)  # +1 ms
    assert rows[1][7] == "host-3.local"
    assert bytes(rows[1][10]) == b'{"cmd":"ls"}'
    assert rows[2][10] is None


def test_replay_inserts_nothing(sink: TimescaleSink, settings: Settings) -> None:
    batch = [make_event(i) for i in range(10)]
    assert sink.write(batch) == 10
    assert sink.write(batch) == 0
    assert sink.write(batch[3:7] + [make_event(10)]) == 1
    assert count(settings) == 11


def test_duplicates_inside_a_batch_are_stored_once(sink: TimescaleSink, settings: Settings) -> None:
    assert sink.write([make_event(1), make_event(2), make_event(1)]) == 2
    assert count(settings) == 2


def test_empty_batch_touches_nothing(settings: Settings) -> None:
    sink = TimescaleSink(Settings(pg_port=servers.free_port()))
    assert sink.write([]) == 0


def test_migrate_is_idempotent_and_logs_the_plain_table(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    sink = TimescaleSink(settings, pool_size=2)
    try:
        with caplog.at_level(logging.WARNING, logger="etl.sinks.timescale_schema"):
            sink.open()
            assert len(caplog.records) == 1
            sink.migrate()
        assert len(caplog.records) == 2
        assert all("plain PostgreSQL table" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        assert sink.write([make_event(1)]) == 1
    finally:
        sink.close()
    primary_key = query(settings, """SELECT pg_get_constraintdef(oid) FROM pg_constraint
                                     WHERE conrelid = %s::regclass AND contype = 'p'""", (settings.pg_table,))
    assert primary_key == [('PRIMARY KEY (id, "time")',)]


# The table as versions before dst_rdns made it.
_OLD_TABLE = """CREATE TABLE {table} (
    id TEXT NOT NULL, "time" TIMESTAMPTZ NOT NULL, "timestamp" BIGINT NOT NULL, type TEXT NOT NULL,
    source TEXT NOT NULL, host_id TEXT, env TEXT, rdns TEXT, metadata JSONB NOT NULL DEFAULT '{{}}', payload BYTEA,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (id, "time"))"""


def make_old_table(settings: Settings, create: str) -> None:
    """The events table as an older version made it (``create``, its ``{table}`` left to fill), with one row
    ``old``: what a migration must keep."""
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                            dbname=settings.pg_db)
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL(create).format(table=sql.Identifier(settings.pg_table)))
        cur.execute(sql.SQL("""INSERT INTO {} (id, "time", "timestamp", type, source)
                               VALUES ('old', now(), 1, 't', 's')""").format(sql.Identifier(settings.pg_table)))
    conn.close()


def test_migrate_adds_dst_rdns_to_a_table_made_before_it(settings: Settings) -> None:
    make_old_table(settings, _OLD_TABLE)
    sink = TimescaleSink(settings, pool_size=2)
    try:
        sink.open()
        sink.migrate()
        assert sink.write([make_event(1, dst_rdns="db.example.net"), make_event(2)]) == 2
    finally:
        sink.close()
    rows = query(settings, "SELECT id, rdns, dst_rdns FROM {table} ORDER BY id")
    assert rows == [("event-1", "host-3.local", "db.example.net"), ("event-2", "host-3.local", None),
                    ("old", None, None)]
    primary_key = query(settings, """SELECT pg_get_constraintdef(oid) FROM pg_constraint
                                     WHERE conrelid = %s::regclass AND contype = 'p'""", (settings.pg_table,))
    assert primary_key == [('PRIMARY KEY (id, "time")',)]


def test_concurrent_open_from_many_sessions(settings: Settings) -> None:
    sinks = [TimescaleSink(settings, pool_size=1) for _ in range(6)]
    try:
        with ThreadPoolExecutor(len(sinks)) as pool:
            for future in [pool.submit(s.open) for s in sinks]:
                future.result()
    finally:
        for s in sinks:
            s.close()
    assert count(settings) == 0


def test_nul_in_text_is_a_data_error_and_nothing_is_stored(sink: TimescaleSink, settings: Settings) -> None:
    with pytest.raises(SinkDataError, match="0x00"):
        sink.write([make_event(1), make_event(2, source="/usr/bin/p\x00sql")])
    with pytest.raises(SinkDataError, match="Unicode escape"):
        sink.write([make_event(3, metadata={"user": "nul\x00"})])
    assert count(settings) == 0
    assert sink.write([make_event(1)]) == 1  # the pooled connections still work


def test_payload_bytes_the_contract_keeps_opaque_are_stored_as_they_are(sink: TimescaleSink,
                                                                         settings: Settings) -> None:
    """Bytes that begin with "{" but are no JSON object within the contract's limits (a NUL escape, a NUL, deep
    nesting) stay the event's opaque payload: the events are parsed as enrich does, then stored."""
    opaque = [b"{not json \\u0000", orjson.dumps({"dst_ip": "1.2.3.4\x00"}), b'{"a":' * 200 + b"1" + b"}" * 200]
    # As the agent sends them: without args, which only the contract sets (from a payload it can read).
    sent = [{key: value for key, value in make_event(i).items() if key != "args"} for i in range(len(opaque))]
    raws = [orjson.dumps({**event, "payload": base64.b64encode(data).decode()})
            for event, data in zip(sent, opaque, strict=True)]
    events = [parse_event(raw, max_bytes=len(raw)) for raw in raws]
    assert ["args" in e for e in events] == [False] * len(opaque)  # not read from the payload
    assert sink.write(events) == len(opaque)
    assert [bytes(row[0]) for row in query(settings, "SELECT payload FROM {table} ORDER BY id")] == opaque


def test_timestamp_out_of_range_is_a_data_error(sink: TimescaleSink) -> None:
    with pytest.raises(SinkDataError, match="out of range"):
        sink.write([make_event(1, timestamp=10**17)])
    with pytest.raises(SinkDataError, match="out of range"):
        sink.write([make_event(1, timestamp=2**63)])  # beyond BIGINT


def test_check_and_unreachable_server(sink: TimescaleSink, make_settings: Callable[..., Settings]) -> None:
    sink.check()
    down = TimescaleSink(make_settings(PG_PORT=str(servers.free_port())))
    try:
        with pytest.raises(SinkUnavailable, match="refused"):
            down.check()
        with pytest.raises(SinkUnavailable):
            down.write([make_event(1)])
        with pytest.raises(SinkUnavailable):
            down.open()
    finally:
        down.close()


def test_dropped_connections_are_discarded(sink: TimescaleSink, settings: Settings) -> None:
    assert sink.write([make_event(1)]) == 1
    killed = query(settings, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = %s AND datname = %s", (APPLICATION_NAME, settings.pg_db))
    assert killed
    assert sink.write([make_event(2)]) == 1
    sink.check()


def connect(settings: Settings) -> psycopg2.extensions.connection:
    return psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                            dbname=settings.pg_db)


def lock_table(conn: psycopg2.extensions.connection, settings: Settings) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(settings.pg_table)))


def sink_statements_waiting_on_a_lock(settings: Settings, statement: str = "", for_s: float = 0.0) -> int:
    """The sink's statements on ``settings.pg_table`` (and holding ``statement``) that wait for a lock, and have run
    for ``for_s`` seconds at least."""
    return int(query(settings, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                     "AND wait_event_type = 'Lock' AND position(%s in query) > 0 AND position(%s in query) > 0 "
                     "AND clock_timestamp() - query_start >= %s * interval '1 s'",
                     (APPLICATION_NAME, settings.pg_table, statement, for_s))[0][0])


Stalled = tuple[Settings, TimescaleSink, psycopg2.extensions.connection]


@pytest.fixture
def stalled(make_settings: Callable[..., Settings]) -> Iterator[Stalled]:
    """A sink of one pooled connection (``PROCESSING_TIMEOUT`` 3 s) whose table another session holds locked:
    (settings, sink, that session)."""
    settings = make_settings(PROCESSING_TIMEOUT="3")
    sink = TimescaleSink(settings, pool_size=1)
    blocker = connect(settings)
    try:
        sink.open()
        lock_table(blocker, settings)
        yield settings, sink, blocker
    finally:
        blocker.close()
        sink.close()


def test_statement_timeout_is_unavailable(stalled: Stalled) -> None:
    """A table locked by another session stalls the COPY: the server cancels it at the session's statement timeout,
    within the sink's budget and so before Dramatiq's time limit (``PROCESSING_TIMEOUT``) would interrupt the
    actor."""
    settings, sink, blocker = stalled
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match="57014"):
        sink.write([make_event(1)])
    elapsed_s = time.monotonic() - started
    assert statement_timeout_ms(settings) / 1000 <= elapsed_s <= settings.sink_budget_s
    blocker.rollback()
    assert sink.write([make_event(1)]) == 1


def test_a_write_that_waited_for_a_connection_gives_its_copy_only_the_time_left(stalled: Stalled) -> None:
    """The fast path after a long wait for a connection: the pool's only one is held by a write stalled on a table
    lock until the session's statement timeout, and the next write, stalled on it too once it has the connection,
    gives up at its deadline, not a whole statement timeout after getting the connection."""
    settings, sink, blocker = stalled
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(sink.write, [make_event(1)])
        wait_for(lambda: sink_statements_waiting_on_a_lock(settings), timeout_s=5)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="57014"):
            sink.write([make_event(2)])
        elapsed_s = time.monotonic() - started
        with pytest.raises(SinkUnavailable, match="57014"):
            first.result(timeout=10)
    assert elapsed_s <= settings.sink_budget_s
    blocker.rollback()
    assert sink.write([make_event(2)]) == 1


def insert_uncommitted(conn: psycopg2.extensions.connection, settings: Settings, i: int) -> None:
    """Insert the key of ``make_event(i)`` in ``conn``'s transaction, left open: a write of it waits for that."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("""INSERT INTO {} (id, "time", "timestamp", type, source)
                               VALUES (%s, 'epoch'::timestamptz + %s * interval '1 ms', %s, 't', 's')""").format(
            sql.Identifier(settings.pg_table)), (f"event-{i}", BASE_MS + i, BASE_MS + i))


def test_a_replayed_batch_stalled_on_the_slow_path_gives_up_at_its_deadline(
        make_settings: Callable[..., Settings]) -> None:
    """The slow path's statements share the write's deadline. The batch's first event is being stored by another
    session: the fast path's COPY waits for it for a good part of the budget, and fails once it is stored (a
    replay). The slow path's sorted INSERT then waits on the second event, which a third session inserted and does
    not commit: it is cancelled within the budget of the write's start, not a statement timeout after it began."""
    settings = make_settings(PROCESSING_TIMEOUT="3")
    sink = TimescaleSink(settings, pool_size=1)
    stored_meanwhile, holder = connect(settings), connect(settings)
    try:
        sink.open()
        insert_uncommitted(stored_meanwhile, settings, 1)
        insert_uncommitted(holder, settings, 2)
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            replay = pool.submit(sink.write, [make_event(1), make_event(2)])
            copy_waited_s = settings.sink_budget_s * 0.4
            wait_for(lambda: sink_statements_waiting_on_a_lock(settings, "COPY", copy_waited_s), timeout_s=5)
            stored_meanwhile.commit()
            wait_for(lambda: sink_statements_waiting_on_a_lock(settings, "INSERT INTO"), timeout_s=5)
            with pytest.raises(SinkUnavailable, match="57014"):
                replay.result(timeout=10)
            elapsed_s = time.monotonic() - started
        assert elapsed_s <= settings.sink_budget_s
        holder.rollback()
        assert sink.write([make_event(1), make_event(2)]) == 1
    finally:
        stored_meanwhile.close()
        holder.close()
        sink.close()


def test_close_twice_then_write_is_unavailable(settings: Settings) -> None:
    sink = TimescaleSink(settings, pool_size=1)
    sink.open()
    sink.close()
    sink.close()
    with pytest.raises(SinkUnavailable, match="closed"):
        sink.write([make_event(1)])


def test_concurrent_overlapping_batches_store_each_id_once(sink: TimescaleSink, settings: Settings) -> None:
    # Four threads write overlapping windows of 200 ids, some batches in reverse order, each batch twice.
    batches = [[make_event(i) for i in range(start, start + 100)] for start in range(0, 101, 20)]
    batches += [list(reversed(b)) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        inserted = sum(pool.map(sink.write, batches * 2))
    assert inserted == 200
    assert query(settings, "SELECT count(*), count(DISTINCT id) FROM {table}") == [(200, 200)]


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("40P01", TransientError),  # deadlock_detected
        ("40001", TransientError),  # serialization_failure
        ("57014", SinkUnavailable),  # query_canceled
        ("57P01", SinkUnavailable),  # admin_shutdown
        ("22021", SinkDataError),  # character_not_in_repertoire
        ("22008", SinkDataError),  # datetime_field_overflow
        ("23502", SinkDataError),  # not_null_violation
        ("42P01", SinkMisconfigured),  # undefined_table: dropped after the sink made it
        ("42501", SinkMisconfigured),  # insufficient_privilege
        ("25006", SinkMisconfigured),  # read_only_sql_transaction: a standby, or default_transaction_read_only
        ("XX000", TransientError),  # internal_error: unexpected, retried
    ],
)
def test_error_translation(settings: Settings, sqlstate: str, expected: type[Exception]) -> None:
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                            dbname=settings.pg_db)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.Error) as caught:
            cur.execute(f"DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '{sqlstate}'; END $$")
    finally:
        conn.close()
    error = translate_error(caught.value, "t")
    assert type(error) is expected
    assert sqlstate in str(error) and "boom" in str(error)


def test_the_pool_opens_pg_pool_size_connections(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(PG_POOL_SIZE="3")
    sink = TimescaleSink(settings)
    try:
        sink.open()
        sessions = query(settings, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                         (APPLICATION_NAME,))
        assert sessions == [(3,)]
    finally:
        sink.close()
