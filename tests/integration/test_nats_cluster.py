"""The pipeline on a three-node NATS cluster with replicated streams (``NATS_STREAM_REPLICAS=3``).

The node leading the raw stream is SIGKILLed while agents publish. Agents resend until acked, as real ones would;
the bridge and the publish pool reconnect to the surviving nodes. Afterwards every valid event is stored once in
PostgreSQL, merged once into the graph and on events.enriched once, and every invalid one dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from nats.js.api import StreamInfo

from etl.config import Settings
from etl.dev import servers
from etl.dev.supervisor import Pipeline
from etl.errors import ConfigError
from etl.natsio.conn import UNAVAILABLE_ERRORS, NatsUnavailable, connect, ensure_stream
from etl.pipeline.rawstream import ensure_raw_stream
from etl.stages import TIMESCALE
from tests.integration.accounting import (
    GENERATED_REASONS,
    by_id,
    check_accounting,
    check_enriched_stream,
    sample_events,
)
from tests.integration.faults_support import (
    BREAKER_COOLDOWN_MS,
    PROCESSING_TIMEOUT_S,
    RETRY_MAX,
    RETRY_MAX_BACKOFF_MS,
    RETRY_MIN_BACKOFF_MS,
    SteadyPublisher,
    raw_consumer,
    wait_settled,
    wait_stored,
)

CLUSTER_SIZE = 3
EVENTS = 3000
RATE_PER_S = 200.0
# How long an agent keeps resending one event before it gives up: far longer than a leader election.
AGENT_PATIENCE_S = 60.0
# The consumer is created by the bridge with this ack wait: acks lost with the killed node come back this soon.
ACK_WAIT_S = 5
PROBE_TIMEOUT_S = 2.0
WATCH_INTERVAL_S = 0.1
ELECTION_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.NatsCluster]:
    cluster = servers.nats_cluster(tmp_path_factory.mktemp("nats-cluster"), CLUSTER_SIZE).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def settings(make_settings: Callable[..., Settings], cluster: servers.NatsCluster) -> Settings:
    return make_settings(NATS_URL=cluster.urls, NATS_STREAM_REPLICAS=CLUSTER_SIZE, NATS_ACK_WAIT=ACK_WAIT_S,
                         MAX_BATCH_SIZE=50, BATCH_LINGER_MS=20, PROCESSING_TIMEOUT=PROCESSING_TIMEOUT_S,
                         RETRY_MIN_BACKOFF_MS=RETRY_MIN_BACKOFF_MS, RETRY_MAX_BACKOFF_MS=RETRY_MAX_BACKOFF_MS,
                         RETRY_MAX=RETRY_MAX, BREAKER_COOLDOWN_MS=BREAKER_COOLDOWN_MS)


def stream_info(settings: Settings, stream: str) -> StreamInfo | None:
    """``stream`` as its leader reports it; None while it has no leader (or the cluster does not answer)."""

    async def info() -> StreamInfo:
        nc = await connect(settings, name="test-probe")
        try:
            return await nc.jetstream(timeout=PROBE_TIMEOUT_S).stream_info(stream)
        finally:
            await nc.close()

    try:
        return asyncio.run(info())
    except (NatsUnavailable, *UNAVAILABLE_ERRORS):
        return None


def raw_leader(settings: Settings) -> str | None:
    info = stream_info(settings, settings.nats_stream)
    return info.cluster.leader if info is not None and info.cluster is not None else None


@dataclass
class Failover:
    """What the kill cost, in seconds from the kill: until the raw stream had a new leader, and the longest time
    PostgreSQL's row count stood still while the agents kept publishing."""

    elected_s: float | None = None
    stalled_s: float = 0.0


def watch_failover(settings: Settings, killed: str, load: SteadyPublisher, killed_at: float) -> Failover:
    """Sample the stored count and the raw stream's leader every ``WATCH_INTERVAL_S`` until ``load`` is done."""
    seen = Failover()
    last_count, last_change = TIMESCALE.count(settings), killed_at
    while not load.done:
        count, now = TIMESCALE.count(settings), time.monotonic()
        if count != last_count:
            seen.stalled_s = max(seen.stalled_s, now - last_change)
            last_count, last_change = count, now
        if seen.elected_s is None and raw_leader(settings) not in (None, killed):
            seen.elected_s = time.monotonic() - killed_at
        time.sleep(WATCH_INTERVAL_S)  # sampling the failover while the load runs, not waiting for an outcome
    return seen


@pytest.mark.timeout(300)
def test_pipeline_rides_out_the_raw_stream_leader_killed(
    settings: Settings, cluster: servers.NatsCluster, start_pipeline: Callable[..., Pipeline]
) -> None:
    events = sample_events(EVENTS, seed=11)
    pipeline = start_pipeline(settings)
    load = SteadyPublisher(settings, events.all, RATE_PER_S, retry_for_s=AGENT_PATIENCE_S).start()
    wait_stored(settings, pipeline, at_least=EVENTS // 6)
    before = stream_info(settings, settings.nats_stream)
    assert before is not None and before.cluster is not None and before.cluster.leader
    assert before.config.num_replicas == CLUSTER_SIZE and len(before.cluster.replicas or []) == CLUSTER_SIZE - 1
    consumer = raw_consumer(settings).cluster  # the bridge's consumer is replicated like its stream
    assert consumer is not None and len(consumer.replicas or []) == CLUSTER_SIZE - 1
    killed = cluster.node(before.cluster.leader)
    killed_at = time.monotonic()
    killed.kill()
    try:
        failover = watch_failover(settings, before.cluster.leader, load, killed_at)
        load.join(timeout_s=AGENT_PATIENCE_S)
        assert failover.elected_s is not None, "the raw stream got a new leader before the load ended"
        published_at = time.monotonic()
        wait_settled(settings, pipeline, timeout_s=SETTLE_TIMEOUT_S)
        caught_up_s = time.monotonic() - published_at
        check_accounting(settings, events, reasons=GENERATED_REASONS)
        # Exactly once: the enriched stream drops the publish pool's replays, across the failover too.
        check_enriched_stream(settings, by_id(events.valid))

        after = stream_info(settings, settings.nats_stream)
        enriched = stream_info(settings, settings.nats_enriched_stream)
        assert after is not None and after.cluster is not None and enriched is not None
        assert after.cluster.leader != before.cluster.leader
        assert after.config.num_replicas == enriched.config.num_replicas == CLUSTER_SIZE
        print(f"\nraw stream leader {before.cluster.leader} killed: new leader {after.cluster.leader} after "
              f"{failover.elected_s:.1f} s; stored count stood still for at most {failover.stalled_s:.1f} s; "
              f"agents resent {load.retries} publishes, longest wait for acks {load.longest_wait_s:.1f} s; "
              f"pipeline at rest {caught_up_s:.1f} s after the last ack, {len(events.valid)} valid events")
    finally:
        killed.start()
        cluster.wait_meta_leader()


def test_an_existing_stream_keeps_its_replicas_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[StreamInfo, StreamInfo]:
        nc = await connect(settings, name="test-setup")
        try:
            js = nc.jetstream()
            made = await ensure_stream(js, settings.nats_stream, [settings.nats_subject_raw], num_replicas=1)
            with caplog.at_level(logging.WARNING, logger="etl.natsio.conn"):
                bound = await ensure_raw_stream(js, settings)
            return made, bound
        finally:
            await nc.close()

    made, bound = asyncio.run(scenario())
    assert made.config.num_replicas == bound.config.num_replicas == 1
    assert f"has 1 replicas, not the {CLUSTER_SIZE} NATS_STREAM_REPLICAS asks for" in caplog.text


def test_more_replicas_than_nodes_is_refused_with_the_servers_reason(
    make_settings: Callable[..., Settings], cluster: servers.NatsCluster
) -> None:
    settings = make_settings(NATS_URL=cluster.urls, NATS_STREAM_REPLICAS=CLUSTER_SIZE + 2)

    async def create() -> None:
        nc = await connect(settings, name="test-setup")
        try:
            await ensure_raw_stream(nc.jetstream(), settings)
        finally:
            await nc.close()

    with pytest.raises(ConfigError, match=f"NATS refused stream {settings.nats_stream}"):
        asyncio.run(create())
