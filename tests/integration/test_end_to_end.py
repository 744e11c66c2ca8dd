"""The whole pipeline, as production runs it: the real bridge process and real Dramatiq worker processes
between real NATS, Redis, PostgreSQL and a graph server, FalkorDB and Neo4j in turn (``graph_env``). Every event
published is accounted for."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC

import orjson
import psycopg2
import pytest

from etl.config import Settings
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.pipeline.dlq import DeadLetterStore
from tests.graphs import open_probe
from tests.integration.accounting import (
    by_id,
    check_dead_letters,
    check_enriched_stream,
    check_graph,
    check_postgres,
    publish_all,
)
from tests.producers import OMISSIBLE, grpc_event, without
from tests.waiting import wait_for

VALID = 2000
DUPLICATES = 300
MAX_EVENT_BYTES = 64 * 1024


def malformed_events() -> list[bytes]:
    """Every kind of bad input the contract names, each distinct."""
    out = [raw for raw in generate(700, malformed_every=10) if not raw.startswith(b'{"id":"event-')]
    out += [os.urandom(64) + bytes([i]) for i in range(10)]
    out += [b'{"id": "huge-%d", "type": "t", "source": "s", "timestamp": 1, "x": "%s"}'
            % (i, b"a" * MAX_EVENT_BYTES) for i in range(3)]
    out += [b"[" * 2000 + b"%d" % i + b"]" * 2000 for i in range(3)]
    out += [b'{"id": "wrong-%d", "type": 5, "source": "s", "timestamp": 1}' % i for i in range(5)]
    return out


@pytest.fixture
def settings(make_settings: Callable[..., Settings], graph_env: dict[str, str]) -> Settings:
    return make_settings(**graph_env, MAX_EVENT_BYTES=MAX_EVENT_BYTES, MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20,
                         RETRY_MIN_BACKOFF_MS=100, RETRY_MAX_BACKOFF_MS=2000)


@pytest.fixture
def pipeline(settings: Settings, start_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return start_pipeline(settings)


def settled(settings: Settings, valid: int, dead: int) -> Callable[[], report.Counts | None]:
    def probe() -> report.Counts | None:
        counts = report.collect(settings)
        ok = (counts.totals["stored"], counts.totals["merged"], counts.totals["published"]) == (valid, valid, valid)
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
    assert len(set(published)) == counts.totals["stored"] + sum(counts.dead_lettered.values())

    expected = by_id(valid)
    check_postgres(settings, expected)
    check_graph(settings, expected)
    check_enriched_stream(settings, expected)
    check_dead_letters(settings, bad)


def test_events_without_their_empty_fields_are_stored_not_dead_lettered(settings: Settings,
                                                                       pipeline: Pipeline) -> None:
    """The ingest leaves an empty type, source, metadata or payload out of its JSON: such events, each field left
    out alone and all at once, reach PostgreSQL, the graph and events.enriched, and none is dead-lettered."""
    events = [without(grpc_event(), name, event_id=f"no-{name}") for name in OMISSIBLE]
    events.append(without(grpc_event(), *OMISSIBLE, event_id="bare"))
    asyncio.run(publish_all(settings, [orjson.dumps(e) for e in events]))

    counts = wait_for(settled(settings, len(events), 0), timeout_s=60,
                      describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    assert not any(counts.dead_lettered.values()), counts.dead_lettered
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, type, source, host_id, metadata ? 'pid', payload IS NULL FROM {settings.pg_table}")
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    full = ("process_exec", "/usr/bin/curl", "host-001", True, False)
    assert rows == {"no-type": ("", *full[1:]), "no-source": (full[0], "", *full[2:]),
                    "no-metadata": (*full[:2], None, False, False), "no-payload": (*full[:4], True),
                    "bare": ("", "", None, False, True)}
    probe = open_probe(settings)
    try:
        nodes = probe.rows("MATCH (e:Event) OPTIONAL MATCH (h:Host)-[:GENERATED]->(e) "
                           "RETURN e.id, e.type, e.source, h.host_id")
    finally:
        probe.close()
    assert {r[0]: tuple(r[1:]) for r in nodes} == {k: (*v[:3],) for k, v in rows.items()}


def test_a_poison_event_is_isolated_and_only_it_is_dead_lettered(settings: Settings, pipeline: Pipeline) -> None:
    """What the contract lets through but one sink refuses is found by that sink splitting its batch: here a peer
    port past 65,535, which the graph cannot make an endpoint of (the event contract does not know ports)."""
    valid = [orjson.loads(raw) for raw in generate(99, hosts=5, seed=11)]
    args = base64.b64encode(orjson.dumps({"dst_ip": "203.0.113.9", "dst_port": 70_000})).decode()
    poison = dict(valid[40], id="poison-port", payload=args)
    events = valid + [poison]
    asyncio.run(publish_all(settings, [orjson.dumps(e) for e in events]))

    def done() -> bool:
        counts = report.collect(settings)
        return (counts.totals == {"published": len(events), "stored": len(events), "merged": len(valid)}
                and counts.dead_lettered == {"graph": 1} and not any(counts.queued.values()))

    wait_for(done, timeout_s=60, describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    from etl.broker import redis_client

    for letter in DeadLetterStore(redis_client(settings), retention_s=3600).iter_all():
        assert letter.event["id"] == "poison-port" and letter.event["env"] == "test"
        assert letter.reason.startswith("PeerDataError: ") and letter.attempts == 1
        assert letter.first_failure <= letter.last_failure


def test_dead_letters_replay_to_their_stage_once_the_cause_is_fixed(settings: Settings, pipeline: Pipeline) -> None:
    """A raw event rejected at enrich and an enriched event that a sink gave up on (say, after an outage that
    outlasted the retries) go back to where they failed, and land."""
    from datetime import datetime

    from etl.broker import redis_client
    from etl.pipeline.dlq import DeadLetter
    from etl.pipeline.enrich import enrich_batch
    from etl.rdns.strategies import FakeResolver

    raw_a, raw_b = generate(2, hosts=2, seed=21)
    enriched_b = enrich_batch([orjson.loads(raw_b)], env="test", resolver=FakeResolver(),
                              now=datetime.now(UTC))[0]
    store = DeadLetterStore(redis_client(settings), retention_s=3600)
    store.add([DeadLetter.for_raw("enrich", "BadEvent: event is too big (since raised)", raw_a),
               DeadLetter("timescale", "SinkUnavailable: connection refused", enriched_b, attempts=9)])

    done = subprocess.run([sys.executable, "-m", "etl.cli", "dlq", "replay", "--all"], capture_output=True,
                          text=True, env={**os.environ, **settings.to_env()})
    assert done.returncode == 0, done.stderr
    assert "replayed 2 dead letter(s)" in done.stdout
    def replayed() -> bool:
        counts = report.collect(settings)
        return counts.totals["stored"] == 2 and store.count() == 0 and not any(counts.queued.values())

    wait_for(replayed, timeout_s=60, describe=lambda: f"{report.collect(settings)}")
    counts = report.collect(settings)
    assert (counts.totals["merged"], counts.totals["published"]) == (1, 1), "the sink-stage entry went to its sink only"
