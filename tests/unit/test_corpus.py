"""The sample corpus of ``etl dev`` and the benchmarks (``etl.dev.corpus``): the producers' shapes, run through the
pipeline's own contract and enrichment, duplicates at the share asked for, determinism by seed."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from etl.config import Settings
from etl.dev import corpus, generator
from etl.dev.corpus import DUPLICATE_EVERY, PRODUCERS, SIMPLE, duplicates_in, generate
from etl.pipeline.enrich import enrich_batch
from etl.pipeline.events import parse_event
from etl.rdns.strategies import FakeResolver
from tests.producers import grpc_event, visibility_event

MAX_BYTES = Settings().max_event_bytes
BASE_MS = 1_704_110_400_000
BATCH = 500


def first_occurrences(raw: list[bytes]) -> list[tuple[int, bytes]]:
    seen: set[bytes] = set()
    out = []
    for position, event in enumerate(raw):
        if event not in seen:
            seen.add(event)
            out.append((position, event))
    return out


@pytest.fixture(scope="module")
def sample() -> list[bytes]:
    return list(generate(5000, hosts=20, seed=11, base_ms=BASE_MS))


@pytest.fixture(scope="module")
def parsed(sample: list[bytes]) -> list[dict[str, Any]]:
    return [parse_event(raw, max_bytes=MAX_BYTES) for _, raw in first_occurrences(sample)]


def is_grpc(event: dict[str, Any]) -> bool:
    return "schema_version" not in event["metadata"]


def test_every_event_passes_the_contract_and_enrichment(parsed: list[dict[str, Any]]) -> None:
    enriched = enrich_batch(parsed, env="test", resolver=FakeResolver(), now=datetime.now(UTC))
    assert len(enriched) == len(parsed) == 5000 - duplicates_in(5000, DUPLICATE_EVERY)
    assert all(isinstance(e["args"], dict) and e["host_id"] for e in enriched)  # every payload is a JSON object
    network = [e for e in enriched if "dst_ip" in e["args"]]
    assert 0.25 < len(network) / len(enriched) < 0.45
    assert all(e["dst_rdns"] and {"dst_port", "protocol"} <= set(e["args"]) for e in network)
    assert {e["context"]["tags"] for e in enriched if is_grpc(e)} >= {"[dev web]", "[prod db]"}


def test_grpc_events_are_the_senders_double_base64_with_string_metadata(parsed: list[dict[str, Any]]) -> None:
    grpc = [e for e in parsed if is_grpc(e)]
    assert 0.6 < len(grpc) / len(parsed) < 0.8
    for event in grpc:
        assert all(type(v) is str for v in event["metadata"].values())
        assert event["args"] == orjson.loads(base64.b64decode(base64.b64decode(event["payload"])))
    keys = {k for e in grpc for k in e["metadata"]}
    assert keys == set(grpc_event()["metadata"])  # the tests' fixed example of the sender, key for key
    assert 0 < sum("container_id" in e["metadata"] for e in grpc) < len(grpc)


def test_visibility_events_are_single_base64_with_numeric_pids(parsed: list[dict[str, Any]]) -> None:
    visibility = [e for e in parsed if not is_grpc(e)]
    for event in visibility:
        assert event["metadata"]["schema_version"] == "visibility.v1"
        assert type(event["metadata"]["pid"]) is int and type(event["metadata"]["sequence"]) is str
        assert event["args"] == orjson.loads(base64.b64decode(event["payload"]))
    assert set(visibility_event()["metadata"]) <= {k for e in visibility for k in e["metadata"]}
    assert len({e["metadata"]["user"] for e in visibility}) > 2


def test_timestamps_come_as_iso_and_as_milliseconds_at_their_position(sample: list[bytes]) -> None:
    kinds = Counter()
    for position, raw in first_occurrences(sample):
        kinds[type(orjson.loads(raw)["timestamp"]).__name__] += 1
        assert parse_event(raw, max_bytes=MAX_BYTES)["timestamp"] == BASE_MS + position
    assert set(kinds) == {"int", "str"}


def test_ids_are_unique_and_context_nodes_repeat(parsed: list[dict[str, Any]]) -> None:
    assert len({e["id"] for e in parsed}) == len(parsed)
    processes = {(e["metadata"]["host_id"], str(e["metadata"]["pid"]), e["source"]) for e in parsed}
    assert len(processes) < len(parsed) / 3  # each host runs a bounded set of processes
    assert len({e["metadata"]["host_id"] for e in parsed}) == 20


@pytest.mark.parametrize(("count", "every"), [(5000, DUPLICATE_EVERY), (3000, 10), (1000, 2)])
def test_duplicates_are_earlier_events_again_at_the_share_asked_for(count: int, every: int) -> None:
    raw = list(generate(count, seed=3, duplicate_every=every, malformed_every=7))
    repeated = [i for i, event in enumerate(raw) if raw.index(event) < i]
    assert repeated == [i for i in range(count) if corpus.is_duplicate(i, every, 7)]
    assert len(repeated) == duplicates_in(count, every, 7) > 0
    assert abs(len(repeated) / count - (1 / every) * (1 - 1 / 7)) < 0.01
    gaps = [i // BATCH - raw.index(raw[i]) // BATCH for i in repeated]
    assert 0 in gaps and any(gaps)  # in the batch of their first, and in a later one


def test_the_simple_shape_is_the_corpus_it_always_was() -> None:
    assert list(generate(2000, shape=SIMPLE, seed=4, malformed_every=50)) == list(
        generator.generate(2000, seed=4, malformed_every=50))
    assert duplicates_in(2000, corpus.default_duplicate_every(SIMPLE)) == 0


@pytest.mark.parametrize("shape", corpus.SHAPES)
def test_the_same_seed_gives_the_same_events(shape: str) -> None:
    assert list(generate(1000, shape=shape, seed=7)) == list(generate(1000, shape=shape, seed=7))
    assert list(generate(1000, shape=shape, seed=7)) != list(generate(1000, shape=shape, seed=8))
    assert list(corpus.events(50, shape=shape, seed=7)) == list(corpus.events(50, shape=shape, seed=7))


def test_producers_is_the_default_shape() -> None:
    assert corpus.SHAPES[0] == PRODUCERS
    assert list(generate(100, seed=1)) == list(generate(100, shape=PRODUCERS, seed=1))


def test_unknown_shapes_and_duplicates_of_nothing_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        list(generate(1, shape="nope"))
    for every, malformed in ((1, 0), (10, 1)):
        with pytest.raises(ValueError, match="duplicates need a valid event"):
            list(generate(10, duplicate_every=every, malformed_every=malformed))
