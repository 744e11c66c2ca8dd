"""Group commit in the bridge: batches go on being enqueued while one durability check waits, one check settles
them all, nothing is acked before its check, and what a replica holds stays within ``BRIDGE_MAX_UNACKED``.

``sync`` is injected here as the bridge gets it (``Handoff.sync``); the last test runs the real one against a Redis
with ``appendfsync everysec``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis

from etl.broker import AofSync
from etl.config import Settings
from etl.dev import servers as devservers
from etl.pipeline.bridge import Bridge
from tests.integration.test_bridge import Recorder, consumer, eventually, ids, nats_client, publish, running

HOLD_S = 1.0


class GatedSync:
    """The injected ``sync``: blocks while ``gate`` is closed, fails while ``failing`` > 0, counts its calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.failing = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
            if self.failing:
                self.failing -= 1
                raise ConnectionError("Redis did not fsync")
        assert self.gate.wait(30)


async def acked_count(js: object, settings: Settings) -> int:
    info = await consumer(js, settings)  # type: ignore[arg-type]
    return int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0


async def all_acked(js: object, settings: Settings, count: int) -> None:
    """Wait until the first ``count`` messages of the stream are acked."""

    async def acked() -> bool:
        return await acked_count(js, settings) == count

    await eventually(acked)


def test_one_check_settles_every_batch_enqueued_while_it_waited(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20)
    published = ids(200)

    async def main() -> None:
        recorder, sync = Recorder(asyncio.get_running_loop()), GatedSync()
        sync.gate.clear()
        async with nats_client(settings) as (_, js), running(Bridge(settings, recorder, sync=sync)):
            await publish(js, settings.nats_subject_raw, published)
            # Every batch is enqueued while the first check is held, and none is acked.
            await recorder.wait_for(lambda: len(recorder.ids) == 200)
            assert await acked_count(js, settings) == 0
            assert sync.calls == 1
            sync.gate.set()
            await all_acked(js, settings, 200)
        assert Counter(recorder.ids) == Counter(published)
        assert len(recorder.batches) >= 20
        assert sync.calls <= 3  # the held one, then one for all the batches enqueued meanwhile (and a late one)

    asyncio.run(main())


def test_a_replica_holds_at_most_its_bound_unacked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20, BRIDGE_MAX_UNACKED=50)
    published = ids(300)

    async def main() -> None:
        recorder, sync = Recorder(asyncio.get_running_loop()), GatedSync()
        sync.gate.clear()
        async with nats_client(settings) as (_, js), running(Bridge(settings, recorder, sync=sync)):
            await publish(js, settings.nats_subject_raw, published)
            await recorder.wait_for(lambda: len(recorder.ids) >= 50)
            # While the check is held, the replica takes no more: nothing more is enqueued or delivered to it.
            deadline = time.monotonic() + HOLD_S
            while time.monotonic() < deadline:
                assert len(recorder.ids) == 50
                assert (await consumer(js, settings)).num_ack_pending == 50
                await asyncio.sleep(0.05)
            sync.gate.set()
            await recorder.wait_for(lambda: len(recorder.ids) == 300)
            await all_acked(js, settings, 300)
        assert Counter(recorder.ids) == Counter(published)

    asyncio.run(main())


def test_a_failed_check_redelivers_its_whole_group(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_BATCH_SIZE=10, BATCH_LINGER_MS=20)
    published = ids(100)

    async def main() -> None:
        recorder, sync = Recorder(asyncio.get_running_loop()), GatedSync()
        sync.failing = 2
        bridge = Bridge(settings, recorder, sync=sync, nak_delay_s=0.1)
        async with nats_client(settings) as (_, js), running(bridge):
            await publish(js, settings.nats_subject_raw, published)
            await all_acked(js, settings, 100)
        # What the failed checks covered came back and was enqueued again: every event at least once.
        assert set(recorder.ids) == set(published)
        assert len(recorder.ids) > len(published)
        assert bridge.enqueue_failures == 2

    asyncio.run(main())


def test_the_check_covers_writes_of_other_connections(tmp_path: Path) -> None:
    """With ``appendfsync everysec``, ``AofSync.wait`` on its own client returns only once a write made on another
    connection is on disk: that connection's own ``WAITAOF`` then needs no wait at all."""
    server = devservers.redis_server(tmp_path / "redis", extra_args=["--appendfsync", "everysec"]).start()
    try:
        writer = redis.Redis(port=server.port)
        checker = AofSync(redis.Redis(port=server.port))
        for round_ in range(5):
            writer.rpush("batches", f"batch-{round_}")
            checker.wait()
            local, _ = writer.execute_command("WAITAOF", 1, 0, 1)  # 1 ms: on disk already, or not
            assert local == 1, f"round {round_}: the check returned before the write was on disk"
        writer.close()
    finally:
        server.stop()
