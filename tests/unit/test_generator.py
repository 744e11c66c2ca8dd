"""The simple shape of sample events (``etl.dev.generator``), and how the local generator (``etl.dev.publish``)
mixes in malformed ones and duplicates and keeps to its rate. The producers' shape: ``test_corpus.py``."""

from __future__ import annotations

import base64
from collections import defaultdict

import orjson
import pytest

from etl.config import Settings
from etl.dev import publish
from etl.dev.corpus import PRODUCERS, SHAPES, SIMPLE
from etl.dev.corpus import generate as generate_corpus
from etl.dev.generator import USERS, generate
from etl.dev.publish import CHUNK, MALFORMED_EVERY, Generator, malformed_every
from etl.errors import BadEvent
from etl.pipeline.events import parse_event

MAX_BYTES = Settings().max_event_bytes


def parsed(raw_events: list[bytes]) -> list[dict[str, object]]:
    return [parse_event(raw, max_bytes=MAX_BYTES) for raw in raw_events]


def is_malformed(raw: bytes) -> bool:
    try:
        parse_event(raw, max_bytes=MAX_BYTES)
    except BadEvent:
        return True
    return False


# --- generate ---

def test_the_same_seed_gives_the_same_events() -> None:
    assert list(generate(300, seed=7, malformed_every=50)) == list(generate(300, seed=7, malformed_every=50))
    assert list(generate(300, seed=7)) != list(generate(300, seed=8))


def test_every_event_meets_the_contract_with_a_payload_that_decodes() -> None:
    events = parsed(list(generate(600, seed=3)))
    assert {e["type"] for e in events} == {"process", "connect", "file"}
    for event in events:
        args = orjson.loads(base64.b64decode(event["payload"], validate=True))
        assert event["args"] == args  # the pipeline exposes it: a base64 JSON object
        expected = {"connect": {"dst_ip", "dst_port", "protocol"}, "file": {"path", "op"},
                    "process": {"argv", "ppid"}}[event["type"]]
        assert set(args) == expected
    connects = [e for e in events if e["type"] == "connect"]
    assert all(str(e["args"]["dst_ip"]).startswith("203.0.113.") for e in connects)  # a peer for dst_rdns


def test_ids_are_unique_and_timestamps_follow_the_base() -> None:
    events = parsed(list(generate(500, seed=1, base_ms=1_704_110_400_000)))
    assert len({e["id"] for e in events}) == 500
    assert [e["timestamp"] for e in events] == [1_704_110_400_000 + seq for seq in range(500)]
    assert all(str(e["id"]).startswith("event-1704110400-") for e in events)


@pytest.mark.parametrize("hosts", [1, 3, 10])
def test_hosts_users_and_containers_are_bounded_by_the_host_count(hosts: int) -> None:
    events = parsed(list(generate(1000, hosts=hosts, seed=5)))
    metadata = [e["metadata"] for e in events]
    assert len({m["host_id"] for m in metadata}) == hosts  # 1000 events reach every host
    assert len({m["host_ip"] for m in metadata}) == hosts
    assert {(m["user"], m["uid"]) for m in metadata} <= set(USERS)
    containers: dict[str, set[str]] = defaultdict(set)
    for m in metadata:
        if "container_id" in m:
            containers[m["host_id"]].add(m["container_id"])
    assert all(len(ids) <= 3 for ids in containers.values())
    owners = [host for host, ids in containers.items() for _ in ids]
    assert len(owners) == len({c for ids in containers.values() for c in ids})  # no container on two hosts


def test_every_nth_event_is_malformed_and_each_is_distinct() -> None:
    raw = list(generate(700, seed=2, malformed_every=50))
    bad = [i for i, event in enumerate(raw) if is_malformed(event)]
    assert bad == list(range(49, 700, 50))
    assert len({raw[i] for i in bad}) == len(bad)


def test_the_malformed_events_are_rejected_for_different_reasons() -> None:
    # so the dead-letter queue of a local run shows what the contract rejects
    reasons = set()
    for raw in list(generate(7 * 10, seed=2, malformed_every=10))[9::10]:
        with pytest.raises(BadEvent) as caught:
            parse_event(raw, max_bytes=MAX_BYTES)
        reasons.add(str(caught.value))
    assert len(reasons) == 7


def test_no_malformed_events_unless_asked() -> None:
    assert not any(map(is_malformed, generate(500, seed=9)))


# --- devpublish: how many are malformed ---

@pytest.mark.parametrize(("count", "every"), [(0, 0), (1, 0), (2, 2), (150, 150), (200, 200), (5000, 200)])
def test_one_malformed_in_200_and_at_least_one_from_two_events(count: int, every: int) -> None:
    assert malformed_every(count) == every


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [1, 2, 3, 199, 200, 201, 1000])
def test_the_sample_has_the_malformed_events_the_help_promises(count: int, shape: str) -> None:
    malformed = sum(map(is_malformed, publish.sample_events(count, hosts=5, shape=shape)))
    assert malformed == (0 if count < 2 else max(1, count // MALFORMED_EVERY))


def test_the_sample_is_of_the_producers_shape_unless_asked() -> None:
    [simple] = publish.sample_events(1, hosts=1, shape=SIMPLE)
    [producers] = publish.sample_events(1, hosts=1)
    assert simple.startswith(b'{"id":"event-') and not producers.startswith(b'{"id":"event-')


@pytest.mark.parametrize("shape", SHAPES)
def test_the_malformed_and_duplicate_counts_reported_match_what_was_published(shape: str) -> None:
    # Sent.malformed and Sent.duplicates are computed from the number sent, and must equal those among them
    count = 1000
    raw = list(generate_corpus(count, shape=shape, seed=4, malformed_every=malformed_every(count)))
    generator = Generator(Settings(), count=count, hosts=5, rate=0, shape=shape)
    for published in (0, 1, 50, 51, 199, 200, 201, 450, 1000):
        generator._sent = published
        progress = generator.progress()
        assert progress.malformed == sum(map(is_malformed, raw[:published]))
        assert progress.duplicates == published - len(set(raw[:published])) == progress.sent - progress.malformed - (
            progress.valid)
    assert (generator.progress().duplicates > 0) == (shape == PRODUCERS)


def test_a_generator_not_started_is_not_finished() -> None:
    progress = Generator(Settings(), count=10, hosts=1, rate=0).progress()
    assert (progress.sent, progress.total, progress.finished, progress.error) == (0, 10, False, None)


# --- devpublish: pacing ---

def test_without_a_rate_it_publishes_a_chunk_at_a_time() -> None:
    assert Generator(Settings(), count=10_000, hosts=1, rate=0)._due(0.0) == CHUNK


@pytest.mark.parametrize(("sent", "elapsed_s", "due"), [
    (0, 0.0, 1),  # the first one at once
    (1, 0.5, 50),  # catches up to rate x elapsed
    (51, 0.5, 0),  # ahead of the rate: nothing yet
    (0, 100.0, CHUNK),  # far behind: at most a chunk at a time
    (200, 2.0, 1),
])
def test_a_rate_is_kept_by_publishing_what_is_due(sent: int, elapsed_s: float, due: int) -> None:
    generator = Generator(Settings(), count=10_000, hosts=1, rate=100.0)
    generator._sent = sent
    assert generator._due(elapsed_s) == due
