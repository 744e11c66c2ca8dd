"""The whole pipeline, as production runs it: the real bridge process and real Dramatiq worker processes
between real NATS, Redis, PostgreSQL and FalkorDB. Every event published is accounted for."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
from falkordb import FalkorDB

from etl import report
from etl.bridge import ensure_raw_stream
from etl.config import Settings
from etl.devstack import migrate
from etl.dlq import DeadLetterStore
from etl.generator import generate
from etl.nats_conn import connect
from etl.rdns import fake_name
from etl.supervisor import Pipeline
from tests.waiting import wait_for

VALID = 2000
DUPLICATES = 300
MAX_EVENT_BYTES = 64 * 1024
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def malformed_events() -> list[bytes]:
    """Every kind of bad input the contract names, each distinct."""
    out = [raw for raw in generate(700, malformed_every=10) if not raw.startswith(b'{"id":"event-')]
    out += [os.urandom(64) + bytes([i]) for i in range(10)]
    out += [b'{"id": "huge-%d", "type": "t", "source": "s", "timestamp": 1, "x": "%s"}'
            % (i, b"a" * MAX_EVENT_BYTES) for i in range(3)]
    out += [b"[" * 2000 + b"%d" % i + b"]" * 2000 for i in range(3)]
    out += [b'{"id": "wrong-%d", "type": 5, "source": "s", "timestamp": 1}' % i for i in range(5)]
    return out


async def publish_all(settings: Settings, events: list[bytes]) -> None:
    nc = await connect(settings, name="test-publisher")
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        for start in range(0, len(events), 500):
            await asyncio.gather(*(js.publish(settings.nats_subject_raw, e) for e in events[start:start + 500]))
    finally:
        await nc.close()


async def read_enriched(settings: Settings) -> list[tuple[dict[str, Any], dict[str, str]]]:
    nc = await connect(settings, name="test-reader")
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(settings.nats_subject_enriched, stream=settings.nats_enriched_stream)
        out = []
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1)
            except asyncio.TimeoutError:
                return out
            for msg in msgs:
                out.append((orjson.loads(msg.data), dict(msg.headers or {})))
                await msg.ack()
    finally:
        await nc.close()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(MAX_EVENT_BYTES=MAX_EVENT_BYTES, MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20,
                         RETRY_MIN_BACKOFF_MS=100, RETRY_MAX_BACKOFF_MS=2000)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    migrate(settings)
    running = Pipeline(settings.to_env(), tmp_path / "logs").start()
    yield running
    codes = running.stop()
    assert all(code == 0 for code in codes.values()), {n: running.log_tail(n) for n in codes}


def settled(settings: Settings, valid: int, dead: int) -> Callable[[], report.Counts | None]:
    def probe() -> report.Counts | None:
        counts = report.collect(settings)
        ok = (counts.stored, counts.merged, counts.published) == (valid, valid, valid)
        ok = ok and counts.dead_lettered.get("enrich", 0) == dead and not any(counts.queued.values())
        return counts if ok else None

    return probe


def test_every_event_is_stored_merged_published_or_dead_lettered(settings: Settings, pipeline: Pipeline) -> None:
    valid = list(generate(VALID, hosts=25, seed=7))
    bad = malformed_events()
    published = valid + valid[:DUPLICATES] + bad
    asyncio.run(publish_all(settings, published))

    counts = wait_for(settled(settings, VALID, len(bad)), timeout_s=90,
                      describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    assert len(set(published)) == counts.stored + sum(counts.dead_lettered.values())

    by_id = {e["id"]: e for e in map(orjson.loads, valid)}
    check_postgres(settings, by_id)
    check_graph(settings, by_id)
    check_enriched_stream(settings, by_id)
    check_dead_letters(settings, bad)


def check_postgres(settings: Settings, by_id: dict[str, dict[str, Any]]) -> None:
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, env, rdns, metadata, host_id, payload FROM {settings.pg_table}")
        rows = cur.fetchall()
    conn.close()
    assert sorted(r[0] for r in rows) == sorted(by_id), "every valid event exactly once"
    for event_id, env, rdns, metadata, host_id, payload in rows:
        source = by_id[event_id]
        assert env == "test"
        assert rdns == fake_name(source["metadata"]["host_ip"])
        assert ISO_MS.match(metadata["enriched_at"]) and metadata["enrichment_version"]
        assert host_id == source["metadata"]["host_id"]
        assert bytes(payload) == base64.b64decode(source["payload"])


def check_graph(settings: Settings, by_id: dict[str, dict[str, Any]]) -> None:
    port = int(settings.neo4j_uri.rsplit(":", 1)[1])
    graph = FalkorDB(host="127.0.0.1", port=port).select_graph(settings.graph_name)

    def scalar(query: str) -> int:
        return int(graph.ro_query(query).result_set[0][0])

    assert scalar("MATCH (e:Event) RETURN count(e)") == len(by_id)
    assert scalar("MATCH (e:Event) RETURN count(DISTINCT e.id)") == len(by_id)
    assert scalar("MATCH (:Host)-[r:GENERATED]->(:Event) RETURN count(r)") == len(by_id)
    assert scalar("MATCH (:User)-[r:EXECUTED]->(:Event) RETURN count(r)") == len(by_id)
    assert scalar("MATCH (:Process)-[r:EXECUTED]->(:Event) RETURN count(r)") == len(by_id)
    with_container = sum(1 for e in by_id.values() if "container_id" in e["metadata"])
    assert scalar("MATCH (:Container)-[r:GENERATED]->(:Event) RETURN count(r)") == with_container
    hosts = {e["metadata"]["host_id"] for e in by_id.values()}
    assert scalar("MATCH (h:Host) RETURN count(h)") == len(hosts)
    sample = next(iter(by_id.values()))
    found = graph.ro_query("MATCH (h:Host)-[:GENERATED]->(e:Event {id: $id}) RETURN h.host_id",
                           {"id": sample["id"]}).result_set
    assert found == [[sample["metadata"]["host_id"]]]


def check_enriched_stream(settings: Settings, by_id: dict[str, dict[str, Any]]) -> None:
    messages = asyncio.run(read_enriched(settings))
    assert sorted(m["id"] for m, _ in messages) == sorted(by_id), "each valid event once on events.enriched"
    for event, headers in messages:
        source = by_id[event["id"]]
        assert event["env"] == "test" and event["rdns"] == fake_name(source["metadata"]["host_ip"])
        assert ISO_MS.match(event["metadata"]["enriched_at"])
        assert event["args"] and event["payload"] == source["payload"]
        assert headers["Nats-Msg-Id"] == event["id"]
        assert headers["x-host-id"] == source["metadata"]["host_id"]
        assert headers["x-event-type"] == source["type"]
        assert headers["x-timestamp"] == str(source["timestamp"])


def check_dead_letters(settings: Settings, bad: list[bytes]) -> None:
    from etl.broker import redis_client

    store = DeadLetterStore(redis_client(settings), retention_s=3600)
    letters = list(store.iter_all())
    assert sorted(letter.raw_bytes() for letter in letters) == sorted(bad)
    assert all(letter.stage == "enrich" and letter.reason.startswith("BadEvent: ") for letter in letters)
    reasons = " | ".join(letter.reason for letter in letters)
    for expected in ("not valid JSON", "over the limit MAX_EVENT_BYTES", "must be a JSON object",
                     "field 'type' must be a string", "missing required field 'source'"):
        assert expected in reasons


def test_a_poison_event_is_isolated_and_only_it_is_dead_lettered(settings: Settings, pipeline: Pipeline) -> None:
    valid = [orjson.loads(raw) for raw in generate(99, hosts=5, seed=11)]
    poison = dict(valid[40], id="poison-nul", source="/usr/bin/\u0000evil")
    events = valid + [poison]
    asyncio.run(publish_all(settings, [orjson.dumps(e) for e in events]))

    def done() -> bool:
        counts = report.collect(settings)
        # PostgreSQL text cannot hold NUL, and FalkorDB's query text cannot either: both isolate the event.
        return (counts.stored == counts.merged == len(valid) and counts.published == len(events)
                and counts.dead_lettered == {"timescale": 1, "graph": 1} and not any(counts.queued.values()))

    wait_for(done, timeout_s=60, describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    from etl.broker import redis_client

    for letter in DeadLetterStore(redis_client(settings), retention_s=3600).iter_all():
        assert letter.event["id"] == "poison-nul" and letter.event["env"] == "test"
        assert letter.reason.startswith("SinkDataError: ") and letter.attempts == 1
        assert letter.first_failure <= letter.last_failure


def test_dead_letters_replay_to_their_stage_once_the_cause_is_fixed(settings: Settings, pipeline: Pipeline) -> None:
    """A raw event rejected at enrich and an enriched event that a sink gave up on (say, after an outage that
    outlasted the retries) go back to where they failed, and land."""
    from datetime import datetime, timezone

    from etl.broker import redis_client
    from etl.dlq import DeadLetter
    from etl.enrich import enrich_batch
    from etl.rdns import FakeResolver

    raw_a, raw_b = generate(2, hosts=2, seed=21)
    enriched_b = enrich_batch([orjson.loads(raw_b)], env="test", resolver=FakeResolver(),
                              now=datetime.now(timezone.utc))[0]
    store = DeadLetterStore(redis_client(settings), retention_s=3600)
    store.add([DeadLetter.for_raw("enrich", "BadEvent: event is too big (since raised)", raw_a),
               DeadLetter("timescale", "SinkUnavailable: connection refused", enriched_b, attempts=9)])

    done = subprocess.run([sys.executable, "-m", "etl.cli", "dlq", "replay", "--all"], capture_output=True,
                          text=True, env={**os.environ, **settings.to_env()})
    assert done.returncode == 0, done.stderr
    assert "replayed 2 dead letter(s)" in done.stdout
    wait_for(lambda: report.collect(settings).stored == 2 and store.count() == 0, timeout_s=60,
             describe=lambda: f"{report.collect(settings)}")
    counts = report.collect(settings)
    assert counts.merged == 1 and counts.published == 1, "the sink-stage entry went to its sink only"
