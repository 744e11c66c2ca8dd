"""The lookup fields in the TimescaleDB table, against a real PostgreSQL: the JSON columns, ``intel_match`` and
its partial index for "every hit", on the fast and the staging path; a table made before them gains them; an event
enriched before them still stores."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg2
from psycopg2 import sql

from etl.config import Settings
from etl.sinks.timescale import TimescaleSink
from etl.sinks.timescale_schema import INTEL_INDEX_SUFFIX, index_name
from tests.integration import test_timescale_sink as base
from tests.integration.test_timescale_sink import make_event, make_old_table, query

# The suite's fixtures (pytest finds them by these names).
settings, sink = base.settings, base.sink

LOOKUP_COLUMNS = "intel, src_asset, dst_asset, dst_geo, intel_match"
ASSET = {"site": "dc-1", "owner": "db-team", "criticality": "high", "internal": True}
EXTERNAL = {"site": None, "owner": None, "criticality": None, "internal": False}
GEO = {"country": "NL", "asn": 64500, "organization": "Example Net"}


def hit(value: str, severity: str = "high") -> dict[str, Any]:
    return {"type": "ip", "value": value, "source": "feed-a", "severity": severity, "field": "destination",
            "observed": value}


def enriched(i: int, intel: list[dict[str, Any]]) -> dict[str, Any]:
    """An event as enrichment version 5 makes it."""
    return make_event(i, intel=intel, src_asset=ASSET, dst_asset=EXTERNAL, dst_geo=GEO)


def hits(settings: Settings) -> list[str]:
    return [row[0] for row in query(settings, 'SELECT id FROM {table} WHERE intel_match ORDER BY "time" DESC')]


def test_rows_carry_the_lookup_json_and_whether_intel_matched(sink: TimescaleSink, settings: Settings) -> None:
    older = make_event(2)  # enriched before the lookups existed: a dead letter replayed after the upgrade
    assert sink.write([enriched(0, [hit("203.0.113.9")]), enriched(1, []), older]) == 3

    rows = query(settings, f"SELECT id, {LOOKUP_COLUMNS} FROM {{table}} ORDER BY id")
    assert rows == [("event-0", [hit("203.0.113.9")], ASSET, EXTERNAL, GEO, True),
                    ("event-1", [], ASSET, EXTERNAL, GEO, False),
                    ("event-2", None, None, None, None, False)]
    assert query(settings, "SELECT dst_geo->>'asn', src_asset->>'site' FROM {table} WHERE id = 'event-0'") == [
        ("64500", "dc-1")]


def test_every_hit_is_exactly_the_matched_events_through_the_partial_index(
        sink: TimescaleSink, settings: Settings) -> None:
    events = [enriched(i, [hit(f"203.0.113.{i}")] if i % 7 == 0 else []) for i in range(50)]
    assert sink.write(events) == 50

    assert hits(settings) == [f"event-{i}" for i in range(49, -1, -1) if i % 7 == 0]
    index = index_name(settings.pg_table, INTEL_INDEX_SUFFIX)
    [(definition,)] = query(settings, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,))
    assert definition.endswith('("time" DESC) WHERE intel_match')
    assert index in planned_index(settings, 'SELECT id FROM {table} WHERE intel_match ORDER BY "time" DESC')


def planned_index(settings: Settings, statement: str) -> str:
    """The plan of ``statement`` as text, sequential scans disabled: which index it can use (50 rows would
    otherwise always be read whole)."""
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                            dbname=settings.pg_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) " + statement).format(table=sql.Identifier(settings.pg_table)))
            return orjson.dumps(cur.fetchone()[0]).decode()  # type: ignore[index]
    finally:
        conn.close()


def test_the_staging_path_stores_the_lookup_columns_too(sink: TimescaleSink, settings: Settings) -> None:
    first = enriched(0, [hit("203.0.113.9")])
    assert sink.write([first]) == 1
    # An event already stored sends the batch through the staging table.
    assert sink.write([first, enriched(1, [hit("198.51.100.1", "low")]), enriched(2, []), make_event(3)]) == 3

    rows = query(settings, f"SELECT id, {LOOKUP_COLUMNS} FROM {{table}} ORDER BY id")
    assert rows[1:] == [("event-1", [hit("198.51.100.1", "low")], ASSET, EXTERNAL, GEO, True),
                        ("event-2", [], ASSET, EXTERNAL, GEO, False),
                        ("event-3", None, None, None, None, False)]
    assert hits(settings) == ["event-1", "event-0"]


# The table as versions before the lookup columns made it.
_TABLE_BEFORE_LOOKUPS = """CREATE TABLE {table} (
    id TEXT NOT NULL, "time" TIMESTAMPTZ NOT NULL, "timestamp" BIGINT NOT NULL, type TEXT NOT NULL,
    source TEXT NOT NULL, host_id TEXT, env TEXT, rdns TEXT, dst_rdns TEXT, metadata JSONB NOT NULL DEFAULT '{{}}',
    payload BYTEA, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (id, "time"))"""


def test_a_table_made_before_the_lookup_columns_gains_them_and_its_index(settings: Settings) -> None:
    make_old_table(settings, _TABLE_BEFORE_LOOKUPS)
    sink = TimescaleSink(settings, pool_size=2)
    try:
        sink.open()
        sink.migrate()  # twice: the second finds them all and adds nothing
        assert sink.write([enriched(1, [hit("203.0.113.9")]), make_event(2)]) == 2
    finally:
        sink.close()

    rows = query(settings, "SELECT id, intel IS NULL, dst_geo, intel_match FROM {table} ORDER BY id")
    assert rows == [("event-1", False, GEO, True), ("event-2", True, None, False), ("old", True, None, False)]
    assert hits(settings) == ["event-1"]
    index = index_name(settings.pg_table, INTEL_INDEX_SUFFIX)
    assert query(settings, "SELECT count(*) FROM pg_indexes WHERE indexname = %s", (index,)) == [(1,)]
