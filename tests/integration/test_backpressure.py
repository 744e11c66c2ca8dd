"""Backpressure against real servers: a real nats-server, a real Redis and a real Dramatiq RedisBroker, and no
workers, so the enrich queue only empties when the test takes messages off it.

The bridge must stop fetching at MAX_QUEUE_DEPTH, leave the rest in JetStream, resume at low water, and in the
end have enqueued every event exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import dramatiq
import nats
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from prometheus_client import REGISTRY

from etl.broker import build_broker
from etl.config import Settings
from etl.pipeline import rawbatch
from etl.pipeline.backlog import QueueBacklog, deepest, queue_backlogs, queue_depths
from etl.pipeline.bridge import Bridge
from etl.pipeline.rawstream import ensure_raw_stream
from etl.stages import ENRICH, GRAPH, PUBLISH, QUEUES, TIMESCALE

EVENTS = 5000
BATCH = 50
HIGH_WATER = 20
LOW_WATER = 10  # QUEUE_LOW_WATER_PERCENT=50
POLL_S = 0.05
WAIT_S = 30.0
STOP_BOUND_S = 2.0
# Reads of the backlog a paused bridge must make while staying paused: it polls, it does not fetch.
PAUSED_POLLS = 10
CONSUME_TIMEOUT_MS = 100
SLOW_ACK_S = 0.3


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(MAX_BATCH_SIZE=BATCH, BATCH_LINGER_MS=200, MAX_QUEUE_DEPTH=HIGH_WATER,
                         QUEUE_LOW_WATER_PERCENT=50)


@pytest.fixture
def broker(settings: Settings) -> RedisBroker:
    broker = build_broker(settings)
    broker.declare_queue(ENRICH.queue)
    return broker


class Enqueuer:
    """The bridge's ``enqueue``, as ``Handoff.raw`` does it: one ``enrich_batch`` message per batch.

    Records the enrich queue's depth right after each enqueue: the bound the bridge must keep.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self.depths_after: list[int] = []

    def __call__(self, batch: list[bytes]) -> None:
        texts, binary = rawbatch.pack(batch)
        if len(self.depths_after) == 19:
            time.sleep(1.5)
        self._broker.enqueue(dramatiq.Message(queue_name=ENRICH.queue, actor_name=ENRICH.actor,
                                              args=(texts, binary), kwargs={}, options={}))
        self.depths_after.append(queue_depths(self._broker.client)[ENRICH.queue])


class Backlog:
    """The bridge's ``backlog`` as ``workers.bridge`` wires it, counting its reads; raises while ``down``."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.reads = 0
        self.down = threading.Event()

    def __call__(self) -> int:
        self.reads += 1
        if self.down.is_set():
            raise redis.ConnectionError("Redis is down")
        return deepest(queue_depths(self._client))


class Drainer:
    """Takes messages off the enrich queue and acks them, as a worker would, keeping the event ids they carry."""

    def __init__(self, broker: RedisBroker) -> None:
        self._consumer = broker.consume(ENRICH.queue, prefetch=1, timeout=CONSUME_TIMEOUT_MS)
        self.ids: list[str] = []

    def take(self, messages: int) -> None:
        """Ack ``messages`` messages (blocking; waits for them to arrive, up to ``WAIT_S``)."""
        deadline = time.monotonic() + WAIT_S
        while messages > 0:
            assert time.monotonic() < deadline, f"{messages} message(s) never arrived"
            message = next(self._consumer)
            if message is None:
                continue
            self.ids += message.args[0]
            self._consumer.ack(message)
            messages -= 1

    def take_events(self, events: int) -> None:
        """Ack messages until ``events`` events were taken in all."""
        while len(self.ids) < events:
            self.take(1)

    def close(self) -> None:
        self._consumer.close()


def event_ids(n: int) -> list[bytes]:
    return [b"ev-%05d" % i for i in range(n)]


def paused_gauge() -> float | None:
    return REGISTRY.get_sample_value("etl_bridge_paused")


async def eventually(check: Callable[[], bool | Awaitable[bool]], describe: Callable[[], str] = lambda: "") -> None:
    """Poll ``check`` until it holds; fail after ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"condition not met in time. {describe()}"
        await asyncio.sleep(POLL_S)


@asynccontextmanager
async def jetstream(settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        yield js
    finally:
        await nc.close()


async def publish(js: JetStreamContext, settings: Settings, ids: list[bytes]) -> None:
    for start in range(0, len(ids), 500):
        await asyncio.gather(*(js.publish(settings.nats_subject_raw, i) for i in ids[start:start + 500]))


@asynccontextmanager
async def running(bridge: Bridge) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(bridge.run())
    try:
        yield task
    finally:
        bridge.stop()
        await asyncio.wait_for(task, WAIT_S)


async def consumer(js: JetStreamContext, settings: Settings) -> ConsumerInfo:
    return await js.consumer_info(settings.nats_stream, settings.nats_consumer)


async def stream_messages(js: JetStreamContext, settings: Settings) -> int:
    return int((await js.stream_info(settings.nats_stream)).state.messages)


def queued_ids(client: redis.Redis) -> list[str]:
    """The event ids in every message still in the enrich queue."""
    out: list[str] = []
    for data in client.hvals(f"dramatiq:{ENRICH.queue}.msgs"):
        out += dramatiq.Message.decode(data).args[0]
    return out


def test_pauses_at_high_water_keeps_the_rest_in_jetstream_and_resumes_at_low_water(
    settings: Settings, broker: RedisBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etl.pipeline.backlog")
    published = event_ids(EVENTS)
    enqueue, backlog, drainer = Enqueuer(broker), Backlog(broker.client), Drainer(broker)
    bridge = Bridge(settings, enqueue, backlog=backlog, backlog_poll_s=POLL_S)

    async def main() -> None:
        async with jetstream(settings) as js:
            await publish(js, settings, published)
            async with running(bridge):
                await eventually(lambda: bridge.paused, lambda: f"depths={queue_depths(broker.client)}")
                # It may pause one batch short, counting the batch still being enqueued: let that batch land.
                await eventually(lambda: bridge.batches >= HIGH_WATER, lambda: f"batches={bridge.batches}")
                reads = backlog.reads
                await eventually(lambda: backlog.reads >= reads + PAUSED_POLLS)

                # Paused: the queue holds high water, the rest waits in JetStream, acked = enqueued.
                assert bridge.paused and paused_gauge() == 1
                enqueued = bridge.messages_enqueued
                assert queue_depths(broker.client)[ENRICH.queue] == bridge.batches == HIGH_WATER
                in_redis = queued_ids(broker.client)
                assert len(in_redis) == enqueued and set(in_redis) <= {i.decode() for i in published}
                info = await consumer(js, settings)
                assert info.num_pending == EVENTS - enqueued and info.num_ack_pending == 0
                assert await stream_messages(js, settings) == EVENTS - enqueued  # acked exactly what was enqueued

                # Hysteresis: one message above low water, the bridge stays paused; at low water, it resumes.
                await asyncio.to_thread(drainer.take, HIGH_WATER - LOW_WATER - 1)
                reads = backlog.reads
                await eventually(lambda: backlog.reads >= reads + PAUSED_POLLS)
                assert bridge.paused and bridge.messages_enqueued == enqueued
                await asyncio.to_thread(drainer.take, 1)
                await eventually(lambda: bridge.messages_enqueued > enqueued)

                # Drain everything: every event arrives exactly once, the queue never went above high water.
                await asyncio.to_thread(drainer.take_events, EVENTS)
                await eventually(lambda: not bridge.paused)
                assert paused_gauge() == 0

                async def settled() -> bool:
                    info = await consumer(js, settings)
                    return info.num_pending == 0 and info.num_ack_pending == 0

                await eventually(settled)
                assert await stream_messages(js, settings) == 0

    try:
        asyncio.run(main())
    finally:
        drainer.close()
    assert Counter(drainer.ids) == Counter(i.decode() for i in published)
    assert bridge.messages_enqueued == EVENTS
    assert max(enqueue.depths_after) == HIGH_WATER  # one replica: exactly high water, never a batch more
    assert queue_depths(broker.client)[ENRICH.queue] == 0
    transitions = [r.getMessage() for r in caplog.records if r.name == "etl.pipeline.backlog"]
    # At high water, or one below it with the next batch on its way.
    assert any(t.startswith((f"bridge paused: a Dramatiq queue holds {HIGH_WATER} message(s)",
                             f"bridge paused: a Dramatiq queue holds {HIGH_WATER - 1} message(s) and 1 more"))
               for t in transitions), transitions
    assert any(t.startswith("bridge resumed: ") for t in transitions)


class SlowAcks(Bridge):
    """A bridge whose acks take a while to confirm, as on a loaded machine: the batch has landed meanwhile."""

    async def _settle(self, batch: list[Msg], *, ack: bool) -> None:
        await asyncio.sleep(SLOW_ACK_S)
        await super()._settle(batch, ack=ack)


def test_a_batch_being_acked_does_not_count_as_on_its_way(settings: Settings, broker: RedisBroker) -> None:
    # Counting it would pause intake one batch short of high water, for as long as nothing drains the queue.
    published = event_ids(BATCH * (HIGH_WATER + 5))
    bridge = SlowAcks(settings, Enqueuer(broker), backlog=Backlog(broker.client), backlog_poll_s=POLL_S)

    async def main() -> None:
        async with jetstream(settings) as js:
            await publish(js, settings, published)
            async with running(bridge):
                await eventually(lambda: bridge.paused)
                await eventually(lambda: bridge.batches >= HIGH_WATER, lambda: f"batches={bridge.batches}")
                assert queue_depths(broker.client)[ENRICH.queue] == HIGH_WATER

    asyncio.run(main())


def test_an_unreadable_backlog_holds_intake_and_stop_is_prompt(settings: Settings, broker: RedisBroker) -> None:
    published = event_ids(200)
    enqueue, backlog = Enqueuer(broker), Backlog(broker.client)
    backlog.down.set()
    first = Bridge(settings, enqueue, backlog=backlog, backlog_poll_s=POLL_S)

    async def main() -> None:
        async with jetstream(settings) as js:
            await publish(js, settings, published)
            task = asyncio.create_task(first.run())
            await eventually(lambda: first.paused and backlog.reads >= PAUSED_POLLS)
            assert paused_gauge() == 1
            info = await consumer(js, settings)
            assert info.delivered.stream_seq == 0 and info.num_pending == len(published)  # nothing fetched
            started = time.monotonic()
            first.stop()
            await asyncio.wait_for(task, WAIT_S)
            assert time.monotonic() - started < STOP_BOUND_S
            assert first.messages_enqueued == 0

            # Redis is back: the next bridge reads a depth below low water and takes everything.
            backlog.down.clear()
            second = Bridge(settings, enqueue, backlog=backlog, backlog_poll_s=POLL_S)
            async with running(second):
                await eventually(lambda: second.messages_enqueued == len(published))
                assert not second.paused and paused_gauge() == 0

    asyncio.run(main())
    assert Counter(queued_ids(broker.client)) == Counter(i.decode() for i in published)


def test_queue_depths_count_waiting_in_flight_and_delayed_messages(broker: RedisBroker) -> None:
    def message(queue: str) -> dramatiq.Message[None]:
        return dramatiq.Message(queue_name=queue, actor_name="any", args=([],), kwargs={}, options={})

    for _ in range(3):
        broker.enqueue(message(ENRICH.queue))
    broker.enqueue(message(GRAPH.queue), delay=60_000)  # a retry waiting for its backoff
    broker.enqueue(message(GRAPH.queue))
    consumer = broker.consume(ENRICH.queue, prefetch=1, timeout=CONSUME_TIMEOUT_MS)
    try:
        deadline = time.monotonic() + WAIT_S
        while next(consumer) is None:  # one message in flight: fetched, not acked
            assert time.monotonic() < deadline
        depths = queue_depths(broker.client)
        backlogs = queue_backlogs(broker.client)
    finally:
        consumer.close()
    assert depths == {ENRICH.queue: 3, PUBLISH.queue: 0, TIMESCALE.queue: 0, GRAPH.queue: 2}
    assert (backlogs[ENRICH.queue], backlogs[GRAPH.queue]) == (QueueBacklog(3, 0), QueueBacklog(1, 1))
    assert list(depths) == list(QUEUES)
    assert deepest(depths) == 3
