"""Poison isolation on each real sink: in a batch of 100 with bad events, the good ones are written and only the
bad ones are rejected. The bad events: a NUL byte in a text field, a value out of range, an oversized property;
for the graph (on FalkorDB and Neo4j) also a list of maps, a map, and a key too long for an index.

The queue is played by a local deque, exactly as the actors use ``write_or_split`` with ``actor.send``.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import orjson
import psycopg2
import pytest

from etl.config import Settings
from etl.dev.generator import generate
from etl.errors import SinkDataError
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.isolation import write_or_split
from etl.pipeline.limits import GRAPH_KEY_BYTES
from etl.rdns.strategies import FakeResolver
from etl.sinks.base import Sink
from etl.sinks.graph.sink import GraphSink
from etl.sinks.nats_publish import NatsPublisher
from etl.sinks.timescale import TimescaleSink
from tests.integration.accounting import read_enriched

Event = dict[str, Any]


def good_events(n: int) -> list[Event]:
    from datetime import datetime

    raw = [orjson.loads(r) for r in generate(n, hosts=5, seed=3)]
    return enrich_batch(raw, env="test", resolver=FakeResolver(), now=datetime.now(UTC))


def drain(sink: Sink, batch: list[Event]) -> tuple[int, list[Event]]:
    """Run the batch to completion the way the pool does; return (batches written, rejected events)."""
    queue: deque[list[Event]] = deque([batch])
    written, rejected = 0, []
    while queue:
        events = queue.popleft()
        try:
            written += write_or_split(sink, events, queue.append, stage="test")
        except SinkDataError:
            rejected.extend(events)
    return written, rejected


def with_poison(poison: list[Event]) -> list[Event]:
    batch = good_events(100 - len(poison))
    for i, bad in enumerate(poison):
        batch.insert(10 + 30 * i, bad)
    return batch


def poison_for(template: Event, **changes: Any) -> Event:
    event = dict(template, **{k: v for k, v in changes.items() if k != "metadata"})
    event["metadata"] = {**template["metadata"], **changes.get("metadata", {})}
    return event


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def graph_settings(make_settings: Callable[..., Settings], graph_env: dict[str, str]) -> Settings:
    return make_settings(**graph_env)


def opened(sink: Sink) -> Iterator[Any]:
    sink.open()
    yield sink
    sink.close()


@pytest.fixture
def timescale(settings: Settings) -> Iterator[TimescaleSink]:
    yield from opened(TimescaleSink(settings))


@pytest.fixture
def graph(graph_settings: Settings) -> Iterator[GraphSink]:
    yield from opened(GraphSink(graph_settings))


@pytest.fixture
def publisher(settings: Settings) -> Iterator[NatsPublisher]:
    yield from opened(NatsPublisher(settings))


def test_timescale_isolates_nul_out_of_range_and_oversized(settings: Settings, timescale: TimescaleSink) -> None:
    t = good_events(1)[0]
    poison = [poison_for(t, id="nul", source="/bin/\x00sh"),
              poison_for(t, id="range", timestamp=10**17),
              poison_for(t, id="huge-key-" + secrets.token_hex(4500))]  # incompressible: over the btree row limit
    written, rejected = drain(timescale, with_poison(poison))
    assert sorted(e["id"][:9] for e in rejected) == ["huge-key-", "nul", "range"]
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {settings.pg_table}")
        assert cur.fetchone() == (97,)
    conn.close()
    assert written < 100, "whole good halves were written, not event by event"


def test_graph_isolates_every_value_a_graph_refuses(graph: GraphSink) -> None:
    t = good_events(1)[0]
    poison = [poison_for(t, id="nul", source="/bin/\x00sh"),
              poison_for(t, id="range", timestamp=2**70),
              poison_for(t, id="huge", metadata={"hostname": "h" * 100_000}),
              poison_for(t, id="list-of-maps", metadata={"user": [{"name": "alice"}]}),
              poison_for(t, id="map", metadata={"hostname": {"fqdn": "db-1"}}),
              poison_for(t, id="key", metadata={"host_id": "h" * (GRAPH_KEY_BYTES + 1)})]
    _, rejected = drain(graph, with_poison(poison))
    assert sorted(e["id"] for e in rejected) == ["huge", "key", "list-of-maps", "map", "nul", "range"]
    assert graph.count_events() == 94


def test_publisher_isolates_unrepresentable_and_oversized(settings: Settings, publisher: NatsPublisher) -> None:
    t = good_events(1)[0]
    poison = [poison_for(t, id="range", timestamp=2**70),  # no JSON encoder carries a 70-bit integer
              poison_for(t, id="huge", payload="A" * (2 * 1024 * 1024))]  # over NATS max_payload
    _, rejected = drain(publisher, with_poison(poison))
    assert sorted(e["id"] for e in rejected) == ["huge", "range"]
    import asyncio

    messages = asyncio.run(read_enriched(settings))
    assert len({m["id"] for m, _ in messages}) == 98
