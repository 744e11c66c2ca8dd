"""The enrich stage holds enriched events to the max_payload of the NATS server the pipeline runs against, as the
bridge learns it from the server's INFO: end to end, with a nats-server whose ``max_payload`` is 64 KiB.

An event that fits the server raw but not once enriched (its base64 JSON payload is also exposed as ``args``) is
dead-lettered at enrich with the server's own limit in the reason; its neighbours in the same batch are stored and
published. Without the bridge passing the server's limit, the stage would hold events to NATS's default 1 MiB, the
sinks would store the event and the publisher would refuse it.

The big events' host is in an indicator feed: the matches counted (``etl_intel_matches_total``) are those of the
events sent on, not of those dead-lettered.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from etl.config import Settings
from etl.dev import servers as devservers
from etl.dev.generator import generate
from etl.dev.supervisor import Pipeline
from etl.lookups.live import LiveLookups
from etl.lookups.sources import table_sources
from etl.ops import report
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import parse_event
from etl.rdns.strategies import OffResolver
from tests.integration.accounting import (
    by_id,
    check_enriched_stream,
    check_graph,
    check_postgres,
    dead_letters,
    digest,
    publish_all,
)
from tests.integration.test_lookup_reload import worker_metric
from tests.waiting import wait_for

MAX_PAYLOAD_BYTES = 64 * 1024
VALID = 60
TOO_BIG = 3
# Decoded, the blob is exposed as args beside its base64: raw about 40 KB, enriched about 70 KB.
BLOB_CHARS = 30_000


@pytest.fixture(scope="module")
def small_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devservers.Server]:
    """A NATS server (JetStream) whose clients may send at most ``MAX_PAYLOAD_BYTES`` per message."""
    data_dir = tmp_path_factory.mktemp("small-nats")
    config = data_dir / "nats.conf"
    config.write_text(f"max_payload: {MAX_PAYLOAD_BYTES}\n")
    server = devservers.nats_server(data_dir, extra_args=["-c", str(config)]).start()
    yield server
    server.stop()


def events() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Valid events with ``TOO_BIG`` events among them that fit ``MAX_PAYLOAD_BYTES`` only before enrichment: all of
    them in order, the valid ones, the big ones."""
    valid = list(generate(VALID, hosts=5, seed=21))
    template = orjson.loads(valid[0])
    blob = base64.b64encode(orjson.dumps({"blob": "x" * BLOB_CHARS})).decode()
    big = [orjson.dumps({**template, "id": f"big-{i}", "payload": blob}) for i in range(TOO_BIG)]
    assert all(len(e) < MAX_PAYLOAD_BYTES * 3 // 4 for e in big), "each must reach NATS raw"
    mixed = list(valid)
    for i, event in enumerate(big):
        mixed.insert((i + 1) * VALID // (TOO_BIG + 1), event)
    return mixed, valid, big


def settled(settings: Settings) -> Callable[[], report.Counts | None]:
    """Every valid event reached every sink and every big one is dead-lettered (by whichever stage), and no queue
    holds anything more."""
    def probe() -> report.Counts | None:
        counts = report.collect(settings)
        done = min(counts.totals.values()) >= VALID and sum(counts.dead_lettered.values()) >= TOO_BIG
        return counts if done and not any(counts.queued.values()) else None

    return probe


def intel_matches(raws: list[bytes], feed: Path) -> int:
    """How many indicator matches enriching ``raws`` with ``feed`` gives (the stage's own pure code)."""
    live = LiveLookups(table_sources(intel_paths=[str(feed)]), 0)
    parsed = [parse_event(raw, max_bytes=1 << 20) for raw in raws]
    enriched = enrich_batch(parsed, env="test", resolver=OffResolver(), now=datetime.now(UTC), tables=live.current())
    return sum(len(event["intel"]) for event in enriched)


def test_an_event_over_the_servers_max_payload_once_enriched_is_dead_lettered_at_enrich(
        tmp_path: Path, small_nats: devservers.Server, make_settings: Callable[..., Settings],
        start_pipeline: Callable[..., Pipeline]) -> None:
    mixed, valid, big = events()
    feed = tmp_path / "hosts.txt"
    feed.write_text(f"{orjson.loads(big[0])['metadata']['host_ip']}\n")
    assert intel_matches(big, feed) == TOO_BIG
    settings = make_settings(NATS_URL=f"nats://127.0.0.1:{small_nats.port}", BATCH_LINGER_MS=200,
                             RETRY_MIN_BACKOFF_MS=100, RETRY_MAX_BACKOFF_MS=1000, INTEL_PATHS=str(feed))
    pipeline = start_pipeline(settings)
    asyncio.run(publish_all(settings, mixed))

    counts = wait_for(settled(settings), timeout_s=90,
                      describe=lambda: f"{report.collect(settings)} alive={pipeline.alive()}")
    letters = dead_letters(settings)
    assert sorted((letter.stage, (letter.size, letter.sha256)) for letter in letters) == sorted(
        ("enrich", digest(event)) for event in big), [(letter.stage, letter.reason) for letter in letters]
    assert all(f"over the NATS server's max_payload of {MAX_PAYLOAD_BYTES}" in letter.reason for letter in letters)
    assert set(counts.totals.values()) == {VALID}, counts.totals
    expected = by_id(valid)
    check_postgres(settings, expected)
    check_graph(settings, expected)
    check_enriched_stream(settings, expected)
    assert worker_metric(pipeline, "etl_intel_matches_total") == intel_matches(valid, feed) > 0
