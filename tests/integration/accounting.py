"""Publishing events and accounting for every one of them in every sink: shared by the end-to-end and the
fault-injection tests.

The checks read each sink by event id, not only by count: PostgreSQL rows, graph Event nodes, messages on the
enriched stream, and the raw bytes of every dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg2

from etl.broker import redis_client
from etl.config import Settings
from etl.dev.generator import generate
from etl.natsio.conn import connect
from etl.ops import report
from etl.pipeline.dlq import DeadLetter, DeadLetterStore
from etl.pipeline.peers import destination_of
from etl.pipeline.rawstream import ensure_raw_stream
from etl.rdns.strategies import fake_name
from tests.graphs import open_probe

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PUBLISH_CHUNK = 500
ENRICHED_FETCH = 500
ENRICHED_IDLE_S = 1.0
ENRICH_REASONS = ("not valid JSON", "over the limit MAX_EVENT_BYTES", "must be a JSON object",
                  "field 'type' must be a string", "field 'source' must be a string")

EnrichedMessage = tuple[dict[str, Any], dict[str, str]]


def id_diff(found: Iterable[str], expected: Iterable[str]) -> str:
    """What differs between two multisets of ids: missing, unexpected and repeated ones (a few of each)."""
    # iter(): a mapping given as ``expected`` (ids to events) counts its keys, not its values
    found_counts = Counter(iter(found))
    wanted = Counter(iter(expected))
    missing = sorted(wanted - found_counts)
    extra = sorted(set(found_counts) - set(wanted))
    repeated = sorted(i for i, n in found_counts.items() if n > 1)
    return (f"{len(missing)} missing {missing[:5]}, {len(extra)} unexpected {extra[:5]}, "
            f"{len(repeated)} repeated {repeated[:5]}")


async def publish_all(settings: Settings, events: list[bytes]) -> None:
    """Publish ``events`` to the raw subject through JetStream, waiting for the stream's ack of each."""
    nc = await connect(settings, name="test-publisher")
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        for start in range(0, len(events), PUBLISH_CHUNK):
            chunk = events[start:start + PUBLISH_CHUNK]
            await asyncio.gather(*(js.publish(settings.nats_subject_raw, e) for e in chunk))
    finally:
        await nc.close()


async def read_enriched(settings: Settings) -> list[EnrichedMessage]:
    """Every message of the enriched stream, with its headers, read through a new ephemeral consumer."""
    nc = await connect(settings, name="test-reader")
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(settings.nats_subject_enriched, stream=settings.nats_enriched_stream)
        out = []
        while True:
            try:
                msgs = await sub.fetch(ENRICHED_FETCH, timeout=ENRICHED_IDLE_S)
            except TimeoutError:
                return out
            for msg in msgs:
                out.append((orjson.loads(msg.data), dict(msg.headers or {})))
                await msg.ack()
    finally:
        await nc.close()


def by_id(valid: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """The valid raw events, parsed, keyed by id."""
    return {e["id"]: e for e in map(orjson.loads, valid)}


def fake_peer_name(source: dict[str, Any]) -> str | None:
    """The fake ``dst_rdns`` of a raw generated event: of ``dst_ip`` in its base64 JSON payload, if any."""
    peer = destination_of({"args": orjson.loads(base64.b64decode(source["payload"]))})
    return fake_name(peer) if peer else None


def check_postgres(settings: Settings, by_id: dict[str, dict[str, Any]]) -> None:
    """Every valid event is exactly one row, enriched, and nothing else is in the table."""
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, dbname=settings.pg_db, user="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, env, rdns, dst_rdns, metadata, host_id, payload FROM {settings.pg_table}")
        rows = cur.fetchall()
    conn.close()
    ids = [r[0] for r in rows]
    assert sorted(ids) == sorted(by_id), f"every valid event exactly once: {id_diff(ids, by_id)}"
    for event_id, env, rdns, dst_rdns, metadata, host_id, payload in rows:
        source = by_id[event_id]
        assert env == "test"
        assert rdns == fake_name(source["metadata"]["host_ip"])
        assert dst_rdns == fake_peer_name(source)
        assert ISO_MS.match(metadata["enriched_at"]) and metadata["enrichment_version"]
        assert host_id == source["metadata"]["host_id"]
        assert bytes(payload) == base64.b64decode(source["payload"])


def check_graph(settings: Settings, by_id: dict[str, dict[str, Any]]) -> None:
    """Every valid event is exactly one Event node, with exactly one edge from each context node it names."""
    probe = open_probe(settings)

    def scalar(query: str) -> int:
        return int(probe.rows(query)[0][0])

    try:
        ids = [row[0] for row in probe.rows("MATCH (e:Event) RETURN e.id")]
        assert sorted(ids) == sorted(by_id), f"every valid event merged exactly once: {id_diff(ids, by_id)}"
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
        found = probe.rows("MATCH (h:Host)-[:GENERATED]->(e:Event {id: $id}) RETURN h.host_id", id=sample["id"])
        assert found == [[sample["metadata"]["host_id"]]]
    finally:
        probe.close()


def check_enriched_stream(settings: Settings, by_id: dict[str, dict[str, Any]], *, duplicates_allowed: bool = False,
                          opaque: frozenset[str] = frozenset()) -> list[EnrichedMessage]:
    """Every valid event is on the enriched stream, enriched and with its headers, and nothing else is.

    With ``duplicates_allowed`` an event may appear more than once (at-least-once); otherwise exactly once. The
    events of ``opaque`` (ids) have payloads kept as opaque bytes, so no ``args``; every other one has them.
    Returns the messages read.
    """
    messages = asyncio.run(read_enriched(settings))
    ids = [m["id"] for m, _ in messages]
    if duplicates_allowed:
        assert set(ids) == set(by_id), (
            f"each valid event at least once on events.enriched, and nothing else: {id_diff(set(ids), by_id)}")
    else:
        assert sorted(ids) == sorted(by_id), f"each valid event once on events.enriched: {id_diff(ids, by_id)}"
    for event, headers in messages:
        source = by_id[event["id"]]
        assert event["env"] == "test" and event["rdns"] == fake_name(source["metadata"]["host_ip"])
        assert event["host_id"] == source["metadata"]["host_id"]
        assert event["dst_rdns"] == fake_peer_name(source)
        assert ISO_MS.match(event["metadata"]["enriched_at"])
        assert event["payload"] == source["payload"]
        assert bool(event.get("args")) == (event["id"] not in opaque), event["id"]
        assert headers["Nats-Msg-Id"] == event["id"]
        assert headers["x-host-id"] == source["metadata"]["host_id"]
        assert headers["x-event-type"] == source["type"]
        assert headers["x-timestamp"] == str(source["timestamp"])
    return messages


def digest(raw: bytes) -> tuple[int, str]:
    """An event's length and SHA-256, as a dead letter records them."""
    return len(raw), hashlib.sha256(raw).hexdigest()


def dead_letters(settings: Settings) -> list[DeadLetter]:
    client = redis_client(settings)
    try:
        return list(DeadLetterStore(client, retention_s=3600).iter_all())
    finally:
        client.close()


def check_dead_letters(settings: Settings, bad: list[bytes], *,
                       reasons: Iterable[str] = ENRICH_REASONS) -> list[DeadLetter]:
    """Exactly the ``bad`` events are dead-lettered, each once, by enrichment, with a BadEvent reason, and
    every one of ``reasons`` occurs among them. Returns the dead letters.

    Events are compared by length and SHA-256, which entries keep even when they kept only an event's head."""
    letters = dead_letters(settings)
    assert sorted((letter.size, letter.sha256) for letter in letters) == sorted(map(digest, bad))
    assert {letter.raw_bytes() for letter in letters if not letter.truncated} <= set(bad)
    assert all(letter.stage == "enrich" and letter.reason.startswith("BadEvent/") for letter in letters), [
        (letter.stage, letter.reason) for letter in letters if letter.stage != "enrich"
        or not letter.reason.startswith("BadEvent/")][:5]
    joined = " | ".join(letter.reason for letter in letters)
    for expected in reasons:
        assert expected in joined
    return letters


@dataclass(frozen=True)
class Events:
    """What a scenario publishes: valid events and bad ones, interleaved in ``all``."""

    valid: list[bytes]
    bad: list[bytes]
    all: list[bytes]
    # ids of valid events whose payload is opaque bytes (no ``args``)
    opaque: frozenset[str] = frozenset()


def sample_events(count: int, *, seed: int, malformed_every: int = 50) -> Events:
    """``count`` generated events, every ``malformed_every``-th of them malformed (each distinct)."""
    events = list(generate(count, hosts=25, seed=seed, malformed_every=malformed_every))
    valid = [raw for raw in events if raw.startswith(b'{"id":"event-')]
    bad = [raw for raw in events if not raw.startswith(b'{"id":"event-')]
    return Events(valid, bad, events)


def check_accounting(settings: Settings, events: Events, *, reasons: tuple[str, ...] = ()) -> None:
    """The invariant: every valid event stored once and merged once, on the enriched stream at least once;
    every bad event dead-lettered by enrichment with a reason, and nothing else dead-lettered."""
    counts = report.collect(settings)
    assert len(set(events.all)) == counts.totals["stored"] + sum(counts.dead_lettered.values()), counts
    expected = by_id(events.valid)
    assert len(expected) == len(events.valid), "the scenario's valid events have distinct ids"
    check_postgres(settings, expected)
    check_graph(settings, expected)
    check_enriched_stream(settings, expected, duplicates_allowed=True, opaque=events.opaque)
    check_dead_letters(settings, events.bad, reasons=reasons)


# Reasons among the generator's malformed events (see ``etl.dev.generator.MALFORMED``).
GENERATED_REASONS = ("not valid JSON", "must be a JSON object", "field 'source' must be a string, got null",
                     "field 'id' must be a non-empty string", "field 'timestamp' is not an ISO-8601 time")
