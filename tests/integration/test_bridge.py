"""The NATS -> enqueue bridge against a real nats-server: batching, ack-after-enqueue, sharing, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StorageType

from etl.config import Settings
from etl.pipeline.bridge import Bridge
from etl.pipeline.rawstream import (
    DEFAULT_ACK_WAIT_S,
    RAW_STREAM_RETENTION,
    consumer_config,
    ensure_raw_stream,
    max_ack_pending,
)

WAIT_S = 20.0
STOP_BOUND_S = 3.0


class Recorder:
    """The injected ``enqueue``: records each batch (from the bridge's worker thread) and wakes waiters.

    While ``refuse`` is set, every call raises instead, as a broker that is down would. Recorders watched
    together share one ``changed`` event.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, changed: asyncio.Event | None = None) -> None:
        self.batches: list[list[bytes]] = []
        self.failures = 0
        self.refuse = threading.Event()
        self.on_batch: Callable[[int], None] | None = None
        self._loop = loop
        self._lock = threading.Lock()
        self._changed = changed or asyncio.Event()

    def __call__(self, batch: list[bytes]) -> None:
        with self._lock:
            if self.refuse.is_set():
                self.failures += 1
                self._loop.call_soon_threadsafe(self._changed.set)
                raise ConnectionError("broker down")
            self.batches.append(list(batch))
            count = len(self.batches)
        self._loop.call_soon_threadsafe(self._changed.set)
        if self.on_batch is not None:
            self.on_batch(count)

    @property
    def ids(self) -> list[bytes]:
        with self._lock:
            return [data for batch in self.batches for data in batch]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._changed.clear()
            if predicate():
                return
            remaining = deadline - time.monotonic()
            assert remaining > 0, "condition not met in time"
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> None:
    """Poll a server-side condition (no event to wait on) until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def nats_client(settings: Settings) -> Any:
    nc: Client = await nats.connect(settings.nats_url)
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.close()


@asynccontextmanager
async def running(bridge: Bridge) -> Any:
    task = asyncio.create_task(bridge.run())
    try:
        await eventually(lambda: _ready(bridge, task))
        yield task
    finally:
        bridge.stop()
        await asyncio.wait_for(task, WAIT_S)


async def _ready(bridge: Bridge, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # surface the error
    return bridge.ready


async def publish(js: JetStreamContext, subject: str, ids: Iterable[bytes]) -> None:
    pending = [await js.publish_async(subject, i) for i in ids]
    await asyncio.gather(*pending)


async def consumer(js: JetStreamContext, settings: Settings) -> ConsumerInfo:
    return await js.consumer_info(settings.nats_stream, settings.nats_consumer)


def ids(n: int, prefix: str = "e") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


@pytest.fixture
def msg_acks(monkeypatch: pytest.MonkeyPatch, nats_path: str) -> list[str]:
    """The reply subjects ``Msg.ack`` acked: every ack on nats-py's public API, none through the private hooks
    (``internals.ack_all``), whose acks the consumer's ack floor and a work queue's emptied stream prove."""
    acked: list[str] = []
    real_ack = Msg.ack

    async def counting_ack(msg: Msg) -> None:
        acked.append(msg.reply)
        await real_ack(msg)

    monkeypatch.setattr(Msg, "ack", counting_ack)
    return acked


def assert_acked_by(nats_path: str, acked: list[str], count: int) -> None:
    assert len(acked) == (count if nats_path == "public" else 0)


def test_batches_by_size_and_linger_flushes_the_tail(
    make_settings: Callable[..., Settings], nats_path: str, msg_acks: list[str],
) -> None:
    settings = make_settings(MAX_BATCH_SIZE=100, BATCH_LINGER_MS=1000)
    published = ids(250)

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        async with nats_client(settings) as (_, js):
            await ensure_raw_stream(js, settings)
            await publish(js, settings.nats_subject_raw, published)
            async with running(Bridge(settings, recorder)):
                await recorder.wait_for(lambda: len(recorder.ids) >= 250)
            stream = await js.stream_info(settings.nats_stream)
        assert stream.config.retention == RAW_STREAM_RETENTION and stream.config.storage == StorageType.FILE
        assert [len(b) for b in recorder.batches] == [100, 100, 50]
        assert recorder.ids == published
        assert_acked_by(nats_path, msg_acks, 250)

    asyncio.run(main())


def test_batch_closes_after_linger_without_reaching_max_size(make_settings: Callable[..., Settings]) -> None:
    linger_s = 0.3
    settings = make_settings(MAX_BATCH_SIZE=100, BATCH_LINGER_MS=int(linger_s * 1000))

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        bridge = Bridge(settings, recorder)
        assert bridge.max_payload is None  # not connected: unknown
        async with nats_client(settings) as (nc, js), running(bridge):
            started = time.monotonic()
            await publish(js, settings.nats_subject_raw, ids(5))
            await recorder.wait_for(lambda: len(recorder.ids) >= 5)
            elapsed = time.monotonic() - started
            # What the enrich stage holds enriched events to: the server's own, from its INFO.
            assert bridge.max_payload == nc.max_payload
        assert recorder.batches == [ids(5)]
        assert linger_s <= elapsed < linger_s + 2.0

    asyncio.run(main())


def test_acks_only_after_enqueue_and_redelivers_failures(
    make_settings: Callable[..., Settings], nats_path: str, msg_acks: list[str],
) -> None:
    settings = make_settings(MAX_BATCH_SIZE=20, BATCH_LINGER_MS=50)
    published = ids(10)

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        recorder.refuse.set()
        bridge = Bridge(settings, recorder, nak_delay_s=0.1)
        async with nats_client(settings) as (_, js), running(bridge):
            await publish(js, settings.nats_subject_raw, published)
            await recorder.wait_for(lambda: recorder.failures >= 3)
            info = await consumer(js, settings)
            assert info.ack_floor is not None and info.ack_floor.stream_seq == 0  # nothing acked
            assert (info.num_redelivered or 0) > 0
            recorder.refuse.clear()
            await recorder.wait_for(lambda: len(recorder.ids) >= 10)

            async def settled() -> bool:
                info = await consumer(js, settings)
                return info.num_ack_pending == 0 and info.num_pending == 0

            await eventually(settled)
            stream = await js.stream_info(settings.nats_stream)
            assert stream.state.messages == 0  # a work queue drops what was acked
        assert Counter(recorder.ids) == Counter(published)  # each exactly once
        assert bridge.enqueue_failures >= 3 and bridge.messages_enqueued == 10
        assert_acked_by(nats_path, msg_acks, 10)

    asyncio.run(main())


def test_two_bridges_share_the_durable_consumer(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20)
    published = ids(500)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        a, b = Recorder(loop, changed), Recorder(loop, changed)
        async with (
            nats_client(settings) as (_, js),
            running(Bridge(settings, a)),
            running(Bridge(settings, b)),
        ):
            await publish(js, settings.nats_subject_raw, published)
            await a.wait_for(lambda: len(a.ids) + len(b.ids) >= 500)
        assert a.ids and b.ids
        assert not set(a.ids) & set(b.ids)
        assert sorted(a.ids + b.ids) == sorted(published)

    asyncio.run(main())


def test_stop_under_load_finishes_the_batch_and_loses_nothing(
    make_settings: Callable[..., Settings], nats_path: str,
) -> None:
    settings = make_settings(MAX_BATCH_SIZE=50, BATCH_LINGER_MS=50)
    published = ids(3000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = Recorder(loop), Recorder(loop)
        bridge = Bridge(settings, first)
        stopped_at: list[float] = []

        def stop_on_third(count: int) -> None:  # from the worker thread, mid-load
            if count == 3:
                stopped_at.append(time.monotonic())
                bridge.stop()

        first.on_batch = stop_on_third
        async with nats_client(settings) as (_, js):
            await ensure_raw_stream(js, settings)
            await publish(js, settings.nats_subject_raw, published)
            await asyncio.wait_for(bridge.run(), WAIT_S)
            assert time.monotonic() - stopped_at[0] < STOP_BOUND_S
            # The third batch, and the fourth if it was being collected meanwhile, are finished.
            assert len(first.batches) in (3, 4)
            done = bridge.messages_enqueued
            assert done == 50 * len(first.batches)
            info = await consumer(js, settings)
            assert info.num_ack_pending == 0 and info.num_pending == 3000 - done  # fetched = enqueued + acked

            async with running(Bridge(settings, second)):
                await second.wait_for(lambda: len(second.ids) >= 3000 - done)
        assert set(first.ids) | set(second.ids) >= set(published)

    asyncio.run(main())


def test_collects_the_next_batch_while_one_is_enqueued_but_never_a_third(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(MAX_BATCH_SIZE=20, BATCH_LINGER_MS=20)
    published = ids(100)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        recorder, release = Recorder(loop), threading.Event()
        entered = asyncio.Event()

        def slow(batch: list[bytes]) -> None:
            loop.call_soon_threadsafe(entered.set)
            release.wait(WAIT_S)
            recorder(batch)

        async with nats_client(settings) as (_, js):
            await ensure_raw_stream(js, settings)
            await publish(js, settings.nats_subject_raw, published)
            async with running(Bridge(settings, slow)):
                await asyncio.wait_for(entered.wait(), WAIT_S)
                # The first batch is stuck in enqueue; the second is fetched meanwhile, and nothing more.
                await eventually(lambda: _ack_pending(js, settings, 40))
                await asyncio.sleep(0.5)
                assert (await consumer(js, settings)).num_ack_pending == 40
                assert recorder.batches == []
                release.set()
                await recorder.wait_for(lambda: len(recorder.ids) >= 100)
        assert recorder.ids == published  # in order: one hand-over at a time

    asyncio.run(main())


async def _ack_pending(js: JetStreamContext, settings: Settings, count: int) -> bool:
    return (await consumer(js, settings)).num_ack_pending == count


def test_cancelled_mid_enqueue_loses_nothing(make_settings: Callable[..., Settings]) -> None:
    """A bridge that dies holding an un-acked batch: NATS redelivers it to the next bridge after ack_wait."""
    settings = make_settings(MAX_BATCH_SIZE=20, BATCH_LINGER_MS=20)
    published = ids(100)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        entered, release = asyncio.Event(), threading.Event()

        def hang(batch: list[bytes]) -> None:
            loop.call_soon_threadsafe(entered.set)
            release.wait(WAIT_S)

        survivor = Recorder(loop)
        async with nats_client(settings) as (_, js):
            await ensure_raw_stream(js, settings)
            await publish(js, settings.nats_subject_raw, published)
            task = asyncio.create_task(Bridge(settings, hang, ack_wait_s=1.0).run())
            await asyncio.wait_for(entered.wait(), WAIT_S)
            task.cancel()
            release.set()
            await asyncio.gather(task, return_exceptions=True)
            async with running(Bridge(settings, survivor)):
                await survivor.wait_for(lambda: set(survivor.ids) >= set(published))

    asyncio.run(main())


def test_restart_binds_to_the_existing_stream_and_consumer(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20)
    other_subject = settings.nats_subject_raw + "_other"

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        async with nats_client(settings) as (_, js):
            # An operator's stream: its limits must survive, and it gains our subject.
            await js.add_stream(name=settings.nats_stream, subjects=[other_subject], max_msgs=123_456,
                                storage=StorageType.FILE)
            async with running(Bridge(settings, recorder)):
                await publish(js, settings.nats_subject_raw, ids(5, "a"))
                await recorder.wait_for(lambda: len(recorder.ids) >= 5)
            created = (await consumer(js, settings)).created
            async with running(Bridge(settings, recorder)):
                await publish(js, settings.nats_subject_raw, ids(5, "b"))
                await recorder.wait_for(lambda: len(recorder.ids) >= 10)
            stream = await js.stream_info(settings.nats_stream)
            info = await consumer(js, settings)
        assert recorder.ids == ids(5, "a") + ids(5, "b")
        assert stream.config.max_msgs == 123_456
        assert stream.config.subjects == [other_subject, settings.nats_subject_raw]
        assert info.created == created
        assert info.config.ack_wait == DEFAULT_ACK_WAIT_S
        assert info.config.max_ack_pending == max_ack_pending(settings)
        assert info.config.max_deliver == -1
        assert info.config.filter_subject == settings.nats_subject_raw

    asyncio.run(main())


def test_raises_the_ack_pending_bound_of_an_older_consumer(make_settings: Callable[..., Settings]) -> None:
    # An older version made the consumer with room for two batches per replica: group commit needs more.
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20)

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        async with nats_client(settings) as (_, js):
            await ensure_raw_stream(js, settings)
            await js.add_consumer(settings.nats_stream, config=consumer_config(settings).evolve(max_ack_pending=100))
            created = (await consumer(js, settings)).created
            async with running(Bridge(settings, recorder)):
                await publish(js, settings.nats_subject_raw, ids(5))
                await recorder.wait_for(lambda: len(recorder.ids) >= 5)
            info = await consumer(js, settings)
        assert info.config.max_ack_pending == max_ack_pending(settings) > 100
        assert info.created == created  # the same consumer, updated: its position is kept

    asyncio.run(main())


def test_rebinds_when_its_consumer_is_deleted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20)

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        bridge = Bridge(settings, recorder)
        async with nats_client(settings) as (_, js), running(bridge):
            await publish(js, settings.nats_subject_raw, ids(3, "a"))
            await recorder.wait_for(lambda: len(recorder.ids) >= 3)

            async def acked() -> bool:  # else deleting the consumer rightly redelivers the batch
                return (await js.stream_info(settings.nats_stream)).state.messages == 0

            await eventually(acked)
            await js.delete_consumer(settings.nats_stream, settings.nats_consumer)
            await publish(js, settings.nats_subject_raw, ids(3, "b"))
            await recorder.wait_for(lambda: len(recorder.ids) >= 6)
            assert bridge.ready
        assert recorder.ids == ids(3, "a") + ids(3, "b")

    asyncio.run(main())


def test_big_events_close_a_batch_by_bytes(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=100, BATCH_LINGER_MS=1000, MAX_BATCH_BYTES=350_000)
    published = [b"%03d" % i + b"x" * 99_997 for i in range(20)]  # 100,000 bytes each
    huge = b"h" * 500_000  # bigger than the limit on its own

    async def main() -> None:
        recorder = Recorder(asyncio.get_running_loop())
        async with nats_client(settings) as (_, js):
            await ensure_raw_stream(js, settings)
            await publish(js, settings.nats_subject_raw, [*published, huge])
            async with running(Bridge(settings, recorder)):
                await recorder.wait_for(lambda: len(recorder.ids) >= 21)
        assert recorder.ids == [*published, huge]
        # Three of 100,000 bytes fit; a fourth would pass the limit. The batch that takes the huge message
        # passes it by that one message only.
        assert [len(b) for b in recorder.batches] == [3] * 7
        assert all(sum(map(len, b)) - max(map(len, b)) < 350_000 for b in recorder.batches)

    asyncio.run(main())
