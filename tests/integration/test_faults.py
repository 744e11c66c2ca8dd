"""Fault injection: the real bridge and worker processes between real servers that each test kills, stops and
restarts while events flow. Every server here is private to its test, so the session's servers are never touched.

After every fault the same invariant holds (``check_accounting``): each valid event is stored exactly once in
PostgreSQL and merged exactly once into the graph (by id), it appeared on events.enriched at least once, and each
invalid event is in the dead-letter queue with its reason, so published = stored + dead-lettered.

The default run publishes a few thousand events per scenario; ``-m soak`` runs the same scenarios with
``FAULTS_SOAK_EVENTS`` events (default 30000).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from etl.broker import redis_client
from etl.config import Settings
from etl.dev.stack import migrate
from etl.dev.supervisor import Pipeline
from etl.ops import report
from etl.pipeline.events import MAX_NESTING_DEPTH
from etl.stages import BY_NAME, NAMES, TIMESCALE
from tests.graphs import FALKORDB, GRAPH_BACKENDS
from tests.integration.accounting import (
    ENRICH_REASONS,
    GENERATED_REASONS,
    Events,
    check_accounting,
    dead_letters,
    digest,
    publish_all,
    sample_events,
)
from tests.integration.faults_support import (
    MAX_EVENT_BYTES,
    Stack,
    SteadyPublisher,
    create_raw_consumer,
    diagnose,
    hold,
    raw_consumer,
    retry_budget_s,
    sink_dead_letters,
    start_stack,
    unacked_by_worker,
    wait_settled,
    wait_stored,
)
from tests.waiting import wait_for

QUICK_EVENTS = 3000
SOAK_EVENTS = int(os.environ.get("FAULTS_SOAK_EVENTS", "30000"))
QUICK_TIMEOUT_S = 180
SOAK_TIMEOUT_S = 1800
VOLUMES = [
    pytest.param(QUICK_EVENTS, id="quick", marks=pytest.mark.timeout(QUICK_TIMEOUT_S)),
    pytest.param(SOAK_EVENTS, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(SOAK_TIMEOUT_S)]),
]
# The outage: shorter than the retry budget, so it must end with everything written, nothing given up.
OUTAGE_S = 20.0
# How long a scenario's load lasts at the quick volume; soak runs publish faster and longer.
LOAD_S = 15.0
QUICK_RATE_PER_S = QUICK_EVENTS / LOAD_S
BRIDGE_KILLS = 3
REDIS_RESTARTS = 5
REDIS_KILLS = 3
# Redis's two usual AOF policies: the local default's and production's.
FSYNC_POLICIES = ["always", "everysec"]
KILL_ATTEMPTS = 5
MID_BATCH_POLL_S = 0.005
# Each server the pipeline writes to, taken down in turn; the graph server on both backends.
OUTAGES = [pytest.param("postgres", FALKORDB, id="postgres"), pytest.param("nats", FALKORDB, id="nats"),
           *(pytest.param("graph", backend, id=f"graph-{backend}") for backend in GRAPH_BACKENDS)]


def load_rate(volume: int) -> float:
    """Events per second: the quick volume over ``LOAD_S``; a soak run at twice that rate, for longer."""
    return QUICK_RATE_PER_S if volume <= QUICK_EVENTS else 2 * QUICK_RATE_PER_S


def settle_s(volume: int) -> float:
    """How long the pipeline may take to come to rest after the last fault."""
    return 30 + volume / 200


def publish_s(volume: int) -> float:
    """How long publishing ``volume`` events may take, with room for the publisher to be slowed down."""
    return volume / load_rate(volume) + 60


@pytest.fixture
def appendfsync() -> str:
    """How the broker's Redis fsyncs its AOF: ``always`` unless the test parametrises ``appendfsync``."""
    return "always"


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, appendfsync: str) -> Iterator[Stack]:
    """The test's private servers; the graph server is FalkorDB unless the test parametrises ``stack`` with
    another backend (``indirect``)."""
    stack = start_stack(tmp_path / "servers", getattr(request, "param", FALKORDB), appendfsync)
    yield stack
    stack.stop()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.settings()


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    migrate(settings)
    create_raw_consumer(settings)
    running = Pipeline(settings.to_env(), tmp_path / "logs").start()
    yield running
    codes = running.stop()
    assert all(code == 0 for code in codes.values()), {n: running.log_tail(n) for n in codes}


def settle_and_check(settings: Settings, pipeline: Pipeline, events: Events, volume: int,
                     reasons: tuple[str, ...] = GENERATED_REASONS) -> None:
    wait_settled(settings, pipeline, timeout_s=settle_s(volume))
    check_accounting(settings, events, reasons=reasons)


# --- 1. the bridge killed mid-batch ---------------------------------------------------------------------------


def kill_bridge_mid_batch(settings: Settings, pipeline: Pipeline) -> tuple[int, int]:
    """SIGKILL the bridge while it holds delivered, un-acked messages. Returns how many it left un-acked and
    the last stream sequence delivered to it."""
    for _ in range(KILL_ATTEMPTS):
        wait_for(lambda: raw_consumer(settings).num_ack_pending, timeout_s=30, interval_s=MID_BATCH_POLL_S,
                 describe=lambda: diagnose(settings, pipeline))
        pipeline.kill("bridge-0")
        info = raw_consumer(settings)
        if info.num_ack_pending:
            return int(info.num_ack_pending), int(info.delivered.stream_seq or 0)
        pipeline.start_one("bridge-0")  # it had just acked its batch: try again
    raise AssertionError(f"no kill of the bridge caught it holding a batch in {KILL_ATTEMPTS} attempts")


def wait_acked_through(settings: Settings, pipeline: Pipeline, stream_seq: int, left: int) -> None:
    """The restarted bridge gets what the dead one held once the ack wait is over, and acks it: wait until
    every raw event up to ``stream_seq`` is acked."""
    wait_for(lambda: (raw_consumer(settings).ack_floor.stream_seq or 0) >= stream_seq, timeout_s=60,
             describe=lambda: f"{left} left un-acked up to seq {stream_seq}: {diagnose(settings, pipeline)}")


@pytest.mark.parametrize("appendfsync", FSYNC_POLICIES)
@pytest.mark.parametrize("volume", VOLUMES)
def test_bridge_killed_mid_batch_several_times(volume: int, settings: Settings, pipeline: Pipeline) -> None:
    events = sample_events(volume, seed=1)
    load = SteadyPublisher(settings, events.all, load_rate(volume)).start()
    for _ in range(BRIDGE_KILLS):
        left, delivered_seq = kill_bridge_mid_batch(settings, pipeline)
        pipeline.start_one("bridge-0")
        wait_acked_through(settings, pipeline, delivered_seq, left)
    load.join(publish_s(volume))
    settle_and_check(settings, pipeline, events, volume)


# --- 2. a worker killed mid-batch -----------------------------------------------------------------------------


def kill_worker_mid_batch(settings: Settings, pipeline: Pipeline, pool: str) -> int:
    """SIGKILL pool ``pool``'s worker (its whole process group) while it holds fetched, un-acked messages, and
    restart it. Returns how many messages the dead worker left un-acked."""
    client = redis_client(settings)
    try:
        for _ in range(KILL_ATTEMPTS):
            holders = wait_for(lambda: unacked_by_worker(client, BY_NAME[pool].queue), timeout_s=30,
                               interval_s=MID_BATCH_POLL_S, describe=lambda: diagnose(settings, pipeline))
            pipeline.kill(f"worker-{pool}")
            pipeline.start_one(f"worker-{pool}")
            left = unacked_by_worker(client, BY_NAME[pool].queue)
            orphaned = sum(n for worker, n in left.items() if worker in holders)
            if orphaned:
                return orphaned
        raise AssertionError(f"no kill of worker-{pool} caught it mid-batch in {KILL_ATTEMPTS} attempts")
    finally:
        client.close()


@pytest.mark.parametrize("stack", GRAPH_BACKENDS, indirect=True)
@pytest.mark.parametrize("volume", VOLUMES)
def test_each_pool_worker_killed_mid_batch(volume: int, stack: Stack, settings: Settings,
                                          pipeline: Pipeline) -> None:
    events = sample_events(volume, seed=2)
    load = SteadyPublisher(settings, events.all, load_rate(volume)).start()
    # On Neo4j only the graph pool's kill differs from FalkorDB's run; the other pools are killed there.
    pools = list(NAMES) if stack.graph_backend == FALKORDB else ["graph"]
    orphaned = {pool: kill_worker_mid_batch(settings, pipeline, pool) for pool in pools}
    assert all(orphaned.values()), orphaned
    load.join(publish_s(volume))
    settle_and_check(settings, pipeline, events, volume)


# --- 3. a server down for 20 s --------------------------------------------------------------------------------


def no_batch_given_up(settings: Settings, pipeline: Pipeline) -> Callable[[], None]:
    """A check for the length of an outage: every process rides it out, and no batch is dead-lettered."""

    def check() -> None:
        assert all(pipeline.alive().values()), diagnose(settings, pipeline)
        assert sink_dead_letters(settings) == {}, diagnose(settings, pipeline)

    return check


@pytest.mark.parametrize("volume", VOLUMES)
@pytest.mark.parametrize(("server", "stack"), OUTAGES, indirect=["stack"])
def test_outage_shorter_than_the_retry_budget_loses_nothing(server: str, volume: int, stack: Stack,
                                                            settings: Settings, pipeline: Pipeline) -> None:
    budget_s = retry_budget_s(settings)
    assert OUTAGE_S < budget_s / 1.5, f"a {OUTAGE_S}s outage must be well inside the {budget_s}s retry budget"
    events = sample_events(volume, seed=3)
    load = None
    if server == "nats":
        asyncio.run(publish_all(settings, events.all))  # the agents cannot publish while NATS is down
    else:
        load = SteadyPublisher(settings, events.all, volume / (OUTAGE_S + LOAD_S)).start()
    wait_stored(settings, pipeline, at_least=min(200, len(events.valid) // 10))

    down = stack.servers()[server]
    stopped_at = time.monotonic()
    down.stop()
    hold(OUTAGE_S, no_batch_given_up(settings, pipeline))
    down.start()
    outage_s = time.monotonic() - stopped_at
    assert outage_s < budget_s, f"the outage ({outage_s:.1f}s) outlasted the retry budget ({budget_s}s)"

    if load is not None:
        load.join(publish_s(volume))
    settle_and_check(settings, pipeline, events, volume)


# --- 4. the broker's Redis restarted --------------------------------------------------------------------------


@pytest.mark.parametrize("appendfsync", FSYNC_POLICIES)
@pytest.mark.parametrize("volume", VOLUMES)
def test_broker_redis_restarted_while_events_flow(volume: int, stack: Stack, settings: Settings,
                                                  pipeline: Pipeline) -> None:
    events = sample_events(volume, seed=4)
    load = SteadyPublisher(settings, events.all, load_rate(volume)).start()
    for _ in range(REDIS_RESTARTS):
        wait_stored(settings, pipeline, at_least=TIMESCALE.count(settings) + 100)
        stack.redis.stop()  # graceful: Redis writes out its AOF
        stack.redis.start()
    load.join(publish_s(volume))
    settle_and_check(settings, pipeline, events, volume)


@pytest.mark.parametrize("appendfsync", ["everysec"])
@pytest.mark.parametrize("volume", VOLUMES)
def test_broker_redis_killed_with_everysec_loses_nothing(volume: int, stack: Stack, settings: Settings,
                                                         pipeline: Pipeline) -> None:
    # No shutdown: connections cut mid-command, no final AOF flush, every process reconnecting at once. Redis
    # hands each write to the kernel before it replies, so a process kill loses no answered write even with
    # everysec (only the machine's crash could, which nothing here can cause): that the bridge acks only what
    # is on disk is shown by test_group_commit.py.
    events = sample_events(volume, seed=5)
    load = SteadyPublisher(settings, events.all, load_rate(volume)).start()
    for _ in range(REDIS_KILLS):
        wait_stored(settings, pipeline, at_least=TIMESCALE.count(settings) + 100)
        stack.redis.kill()
        stack.redis.start()
    load.join(publish_s(volume))
    settle_and_check(settings, pipeline, events, volume)


# --- 5. malformed events mixed with good ones ------------------------------------------------------------------


def malformed_with_reasons(count: int, rng: random.Random) -> list[tuple[bytes, str]]:
    """``count`` distinct malformed events of every kind, each with (a part of) the reason it must get."""
    base = b'{"id": "bad-%d", "type": "t", "source": "s", "timestamp": 1'
    kinds: list[Callable[[int], tuple[bytes, str]]] = [
        lambda i: (b"\xff" + rng.randbytes(63) + b"%d" % i, "not valid JSON"),
        lambda i: (base % i + b', "metadata": {"host_id": "h', "not valid JSON"),
        lambda i: ((base % i)[: rng.randint(1, 30)] + b"#%d" % i, "not valid JSON"),
        lambda i: (base % i + b', "x": "caf\xc3\x28 %d"}' % i, "not valid JSON"),
        lambda i: (b"[" * 1100 + b"%d" % i + b"]" * 1100, "nested deeper than"),
        lambda i: (base % i + b', "deep": ' + b'{"a": ' * 1100 + b"1" + b"}" * 1100 + b"}", "nested deeper than"),
        lambda i: (base % i + b', "x": "' + b"a" * MAX_EVENT_BYTES + b'"}', "over the limit MAX_EVENT_BYTES"),
        lambda i: (b'{"id": %d, "type": "t", "source": "s", "timestamp": 1}' % i, "field 'id' must be"),
        lambda i: (b'{"id": "bad-%d", "type": 5, "source": "s", "timestamp": 1}' % i,
                   "field 'type' must be a string"),
        lambda i: (b'{"id": "bad-%d", "type": "t", "source": ["s"], "timestamp": 1}' % i,
                   "field 'source' must be a string"),
        lambda i: (base.replace(b"1", b"true") % i + b"}", "field 'timestamp' must be integer"),
        lambda i: (base % i + b', "metadata": [1]}', "field 'metadata' must be an object"),
        lambda i: (base % i + b', "metadata": {"pid": {"n": 1}}}', "must be a string or a number, got object"),
        lambda i: (base % i + b', "payload": 12}', "field 'payload' must be a base64 string"),
        lambda i: (base % i + b', "payload": "%%%%not base64"}', "field 'payload' is not valid base64"),
        lambda i: (b'{"type": "t", "source": "s", "timestamp": %d}' % i, "missing required field 'id'"),
        lambda i: (b'{"id": "bad-%d", "type": "t", "source": "s"}' % i, "missing required field 'timestamp'"),
        lambda i: (b'"just a string %d"' % i, "must be a JSON object"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def good_edge_cases() -> list[bytes]:
    """Valid events at the size edge: exactly MAX_EVENT_BYTES long (and one byte less), with a large payload."""
    template = orjson.loads(sample_events(1, seed=99).valid[0])
    out = []
    for i, size in enumerate((MAX_EVENT_BYTES, MAX_EVENT_BYTES - 1, MAX_EVENT_BYTES // 2)):
        blob = orjson.dumps({"blob": "x" * (size // 2)})
        event = dict(template, id=f"edge-{i}", payload=base64.b64encode(blob).decode(), pad="")
        event["pad"] = "p" * (size - len(orjson.dumps(event)))
        out.append(orjson.dumps(event))
        assert len(out[-1]) == size
    return out


@pytest.mark.parametrize("volume", VOLUMES)
def test_malformed_events_mixed_with_good_ones(volume: int, settings: Settings, pipeline: Pipeline) -> None:
    rng = random.Random(5)
    generated = sample_events(volume, seed=5, malformed_every=0)
    bad = malformed_with_reasons(max(50, volume // 20), rng)
    edges = good_edge_cases()
    valid = generated.valid + edges
    mixed = valid + [raw for raw, _ in bad]
    rng.shuffle(mixed)
    events = Events(valid, [raw for raw, _ in bad], mixed)
    asyncio.run(publish_all(settings, events.all))
    settle_and_check(settings, pipeline, events, volume, reasons=ENRICH_REASONS)

    expected = {digest(raw): reason for raw, reason in bad}
    for letter in dead_letters(settings):
        assert expected[letter.size, letter.sha256] in letter.reason, (letter.reason, letter.event[:80])


def nested(template: dict[str, object], event_id: str, levels: int) -> bytes:
    """``template`` with an extra field holding ``levels`` nested objects: the event is ``levels + 1`` deep."""
    raw = orjson.dumps(dict(template, id=event_id))
    return raw.replace(b'"metadata"', b'"tree": ' + b'{"a": ' * levels + b"1" + b"}" * levels + b', "metadata"')


@pytest.mark.parametrize("volume", VOLUMES)
def test_nesting_past_the_limit_is_dead_lettered_alone(volume: int, settings: Settings, pipeline: Pipeline) -> None:
    """Events nested up to MAX_NESTING_DEPTH go through; deeper ones are dead-lettered with their reason and
    never take the good events of their batch with them. A payload whose JSON is too deep is opaque bytes, not a
    reason to refuse its event: it is stored, without ``args``."""
    generated = sample_events(volume, seed=6, malformed_every=0)
    template = orjson.loads(generated.valid[0])
    deepest_valid = [nested(template, f"nested-ok-{i}", MAX_NESTING_DEPTH - 1) for i in range(3)]
    too_deep = [nested(template, f"nested-bad-{levels}", levels) for levels in (MAX_NESTING_DEPTH, 300, 1000)]
    deep_args = b'{"a": ' * 2 * MAX_NESTING_DEPTH + b"1" + b"}" * 2 * MAX_NESTING_DEPTH
    opaque = orjson.dumps(dict(template, id="nested-opaque-payload", payload=base64.b64encode(deep_args).decode()))
    valid = [*generated.valid, *deepest_valid, opaque]
    mixed = valid + too_deep
    random.Random(6).shuffle(mixed)
    events = Events(valid, too_deep, mixed, opaque=frozenset({"nested-opaque-payload"}))
    asyncio.run(publish_all(settings, events.all))
    settle_and_check(settings, pipeline, events, volume, reasons=("nested deeper than",))


# --- 6. SIGTERM under steady load ------------------------------------------------------------------------------


@pytest.mark.parametrize("volume", VOLUMES)
def test_sigterm_and_restart_under_steady_load(volume: int, settings: Settings, pipeline: Pipeline) -> None:
    events = sample_events(volume, seed=7)
    load = SteadyPublisher(settings, events.all, load_rate(volume)).start()
    for ordered in (True, False):
        wait_stored(settings, pipeline, at_least=TIMESCALE.count(settings) + 100)
        codes = pipeline.stop(ordered=ordered)
        assert all(code == 0 for code in codes.values()), (codes, diagnose(settings, pipeline))
        pipeline.start()  # the publisher went on meanwhile: those events waited in JetStream
    load.join(publish_s(volume))
    settle_and_check(settings, pipeline, events, volume)


# --- 7. stopping while Redis is gone for good -----------------------------------------------------------------


def test_workers_stop_in_bounded_time_when_redis_is_gone_and_nothing_is_lost(stack: Stack, tmp_path: Path) -> None:
    settings = stack.settings(PROCESSING_TIMEOUT=2)
    migrate(settings)
    create_raw_consumer(settings)
    pipeline = Pipeline(settings.to_env(), tmp_path / "logs").start()
    events = sample_events(QUICK_EVENTS // 3, seed=8)
    load = SteadyPublisher(settings, events.all, QUICK_RATE_PER_S).start()
    wait_stored(settings, pipeline, at_least=200)
    stack.graph.stop()  # graph batches now fail and wait to be retried, which needs Redis
    wait_for(lambda: _graph_work_waiting(settings), timeout_s=30, describe=lambda: diagnose(settings, pipeline))
    stack.redis.kill()
    started = time.monotonic()
    codes = pipeline.stop(timeout_s=60)
    took_s = time.monotonic() - started
    # Each worker gives its threads PROCESSING_TIMEOUT + 5 s, then exits: none had to be killed.
    assert all(code != -signal.SIGKILL for code in codes.values()), (codes, diagnose(settings, pipeline))
    assert took_s < 2 * (2 + 5) + 10, took_s
    load.join(publish_s(QUICK_EVENTS))

    stack.redis.start()
    stack.graph.start()
    pipeline.start()
    try:
        settle_and_check(settings, pipeline, events, QUICK_EVENTS)
    finally:
        pipeline.stop()


def _graph_work_waiting(settings: Settings) -> bool:
    """Some graph batch is failing: the graph queue holds delayed or in-flight work."""
    return report.queued_counts(settings).get("graph", 0) > 0
