"""The raw ceilings: what each server takes from the thinnest possible client, on the same rows.

- NATS: a nats-py pull consumer that fetches batches and acks each message (the bridge's job, minus the bridge);
  and JetStream publishes of pre-encoded enriched events, each batch sent as one run of HPUB frames and its acks
  counted on one reply subject (the publish sink's job, minus the sink).
- PostgreSQL: ``COPY`` of pre-formatted rows (the sink's binary format) straight into the events table, one
  transaction per batch.
- FalkorDB: the graph sink's ``UNWIND`` merge (``MERGE_CYPHER``) with its query text (parameters included, as
  the sink writes them) built beforehand, sent as a bare ``GRAPH.QUERY``. This is the ceiling the issue asks
  for; the sink itself creates a batch of new events with ``CREATE_CYPHER``, which is cheaper, so it can pass 1.
- Neo4j: the same merge statement through the official driver, its rows built beforehand and its plan cached,
  one auto-commit transaction per batch on one session.

Only the server round trips are timed; whatever can be prepared is prepared before the clock starts.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import redis
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from bench import load
from etl.config import Settings
from etl.natsio.conn import connect
from etl.natsio.internals import publish_with_headers
from etl.natsio.js_acks import AckInbox
from etl.sinks.copy_format import COLUMNS, format_batch
from etl.sinks.graph.backend import FALKOR_SCHEME
from etl.sinks.graph.cypher import MERGE_CYPHER
from etl.sinks.graph.falkordb_backend import query_text
from etl.sinks.graph.rows import as_lists, build_rows
from etl.sinks.nats_publish import encode, publish_headers

CEILING_STREAM = "BENCH_CEILING"
CEILING_SUBJECT = "bench.ceiling"
CEILING_CONSUMER = "bench-ceiling"

Event = dict[str, Any]


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def nats_fetch_ack(settings: Settings, payloads: Sequence[bytes], batch: int) -> float:
    """Events/s one nats-py client fetches from a stream and acks (each message, one flush per batch)."""
    nc = await connect(settings, "etl-bench-ceiling")
    js = nc.jetstream()
    try:
        await _fresh_stream(js)
        await load.publish(js, CEILING_SUBJECT, payloads)
        await js.add_consumer(CEILING_STREAM, js_api.ConsumerConfig(
            durable_name=CEILING_CONSUMER, ack_policy=js_api.AckPolicy.EXPLICIT, max_ack_pending=10 * batch))
        sub = await js.pull_subscribe_bind(consumer=CEILING_CONSUMER, stream=CEILING_STREAM)
        got = 0
        start = time.monotonic()
        while got < len(payloads):
            msgs = await sub.fetch(batch, timeout=5)
            for m in msgs:
                await m.ack()
            await nc.flush()
            got += len(msgs)
        return got / (time.monotonic() - start)
    finally:
        await _drop_stream(js)
        await nc.close()


async def nats_publish(settings: Settings, events: Sequence[Event], batch: int) -> float:
    """Events/s one nats-py client publishes to a stream, pre-encoded, each batch as one run of frames on one
    reply subject and awaited once for all its acks (the way the publish sink does it, minus the sink)."""
    headers, extra = publish_headers(CEILING_STREAM)
    messages = [encode(e, extra) for e in events]
    nc = await connect(settings, "etl-bench-ceiling")
    js = nc.jetstream()
    inbox = AckInbox()
    try:
        await _fresh_stream(js)
        await inbox.start(nc)
        start = time.monotonic()
        for chunk in batches(messages, batch):
            reply, _, done = inbox.expect(len(chunk))
            await publish_with_headers(nc, CEILING_SUBJECT, reply, headers, chunk)
            await done
            inbox.close_batch(reply)
        return len(messages) / (time.monotonic() - start)
    finally:
        await _drop_stream(js)
        await nc.close()


async def _fresh_stream(js: Any) -> None:
    await _drop_stream(js)
    await js.add_stream(name=CEILING_STREAM, subjects=[CEILING_SUBJECT], storage=js_api.StorageType.FILE)


async def _drop_stream(js: Any) -> None:
    try:
        await js.delete_stream(CEILING_STREAM)
    except NotFoundError:
        pass


def bare_copy(settings: Settings, events: Sequence[Event], batch: int) -> float:
    """Events/s of ``COPY`` straight into the events table, the data formatted beforehand in the sink's own binary
    format (the cheapest for the server to read), one transaction per batch, on one connection. The table is
    emptied afterwards."""
    data = [format_batch(chunk) for chunk in batches(events, batch)]
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    table = f'"{settings.pg_table}"'
    try:
        with conn.cursor() as cur:
            start = time.monotonic()
            for block in data:
                cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)", io.BytesIO(block))
                conn.commit()
            rate = len(events) / (time.monotonic() - start)
            cur.execute(f"TRUNCATE {table}")
            conn.commit()
        return rate
    finally:
        conn.close()


def bare_merge(settings: Settings, events: Sequence[Event], batch: int) -> float:
    """Events/s of the graph sink's merge statement with everything prepared beforehand, into the empty graph
    with the sink's indexes and constraints (the caller resets it), on the backend NEO4J_URI names."""
    if urlsplit(settings.neo4j_uri).scheme != FALKOR_SCHEME:
        return _bare_merge_neo4j(settings, events, batch)
    from falkordb import FalkorDB

    port = int(settings.neo4j_uri.rsplit(":", 1)[1])
    name = settings.graph_name
    graph = FalkorDB(host="127.0.0.1", port=port).select_graph(name)
    queries = [_merge_text(graph, as_lists(build_rows(chunk))) for chunk in batches(events, batch)]
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        start = time.monotonic()
        for query in queries:
            client.execute_command("GRAPH.QUERY", name, query, "--compact")
        return len(events) / (time.monotonic() - start)
    finally:
        client.close()


def _bare_merge_neo4j(settings: Settings, events: Sequence[Event], batch: int) -> float:
    from neo4j import GraphDatabase

    rows = [as_lists(build_rows(chunk)) for chunk in batches(events, batch)]
    with GraphDatabase.driver(settings.neo4j_uri, auth=(settings.neo4j_user, settings.graph_password)) as driver, \
            driver.session() as session:
        session.run("EXPLAIN " + MERGE_CYPHER, rows=rows[0]).consume()  # planned and cached before the clock
        start = time.monotonic()
        for chunk in rows:
            session.run(MERGE_CYPHER, rows=chunk).consume()
        return len(events) / (time.monotonic() - start)


def _merge_text(graph: Any, rows: list[list[Any]]) -> str:
    """The query text the sink sends for ``rows`` when it merges them."""
    return query_text(MERGE_CYPHER, rows) or graph._build_params_header({"rows": rows}) + MERGE_CYPHER  # noqa: SLF001


def enriched(payloads: Sequence[bytes]) -> list[Event]:
    """The raw events as the enrich pool makes them (pure code, no server)."""
    from etl.pipeline.enrich import enrich_batch
    from etl.pipeline.validate import validate_batch
    from etl.rdns.strategies import FakeResolver

    good = [v.event for v in validate_batch(payloads, max_bytes=2**20)[0]]
    return enrich_batch(good, env="bench", resolver=FakeResolver(), now=datetime.now(UTC))

