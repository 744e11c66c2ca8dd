"""The pull fetcher against a real nats-server: batches, timeouts, a deleted consumer, leftovers given back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

import etl.natsio.pull
from etl.config import Settings
from etl.natsio.pull import ConsumerGone, PullFetcher
from etl.pipeline.rawstream import ensure_raw_stream

ACK_WAIT_S = 60.0


async def setup(settings: Settings, count: int) -> tuple[nats.NATS, PullFetcher]:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_raw_stream(js, settings)
    for i in range(count):
        await js.publish(settings.nats_subject_raw, b"m%d" % i)
    await js.add_consumer(settings.nats_stream, ConsumerConfig(
        durable_name=settings.nats_consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S))
    fetcher = PullFetcher(nc, settings.nats_stream, settings.nats_consumer)
    await fetcher.start()
    return nc, fetcher


def test_fetches_in_order_and_returns_short_batches_when_the_stream_runs_dry(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()

    async def main() -> None:
        nc, fetcher = await setup(settings, 25)
        try:
            first = await fetcher.fetch(10, 1.0)
            started = time.monotonic()
            rest = await fetcher.fetch(20, 0.3)
            assert time.monotonic() - started < 0.6  # the request's expiry ends it, not a longer wait
            assert [m.data for m in first + rest] == [b"m%d" % i for i in range(25)]
            assert await fetcher.fetch(5, 0.1) == []
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_fetch_returns_as_soon_as_its_batch_is_ready_whatever_late_answers_come(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under load a short request's end (408) can come after the next request was answered: that must not make a
    later fetch wait out its whole timeout while its message is there. Requests here expire 50 ms after the
    fetcher stopped waiting for them, so every short one ends late."""
    monkeypatch.setattr(etl.natsio.pull, "EXPIRY_MARGIN_S", -0.05)
    settings = make_settings()

    async def main() -> None:
        nc, fetcher = await setup(settings, 0)
        stop = asyncio.Event()

        async def trickle() -> None:
            i = 0
            while not stop.is_set():
                await nc.publish(settings.nats_subject_raw, b"t%d" % i)
                i += 1
                await asyncio.sleep(0.003)

        agent = asyncio.create_task(trickle())
        try:
            slow, got = 0, 0
            for _ in range(100):
                started = time.monotonic()
                first = await fetcher.fetch(1, 0.5)
                slow += time.monotonic() - started > 0.4
                rest = await fetcher.fetch(19, 0.002)  # rarely full: its 408 comes after this returned
                got += len(first) + len(rest)
                for m in first + rest:
                    await m.ack()
            assert slow <= 2, f"{slow} of 100 fetches waited out their timeout while events kept coming"
            assert got >= 100
        finally:
            stop.set()
            await agent
            await nc.close()

    asyncio.run(main())


def test_a_deleted_consumer_is_reported(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()

    async def main() -> None:
        nc, fetcher = await setup(settings, 0)
        try:
            await nc.jetstream().delete_consumer(settings.nats_stream, settings.nats_consumer)
            with pytest.raises(ConsumerGone):
                await fetcher.fetch(10, 1.0)
        finally:
            await nc.close()

    asyncio.run(main())


def test_close_gives_back_what_was_delivered_and_not_fetched(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()

    async def main() -> None:
        nc, fetcher = await setup(settings, 30)
        try:
            taken = await fetcher.fetch(5, 1.0)
            await fetcher._request(10, 1.0)  # delivered into the fetcher, as a fetch that timed out here would
            await fetcher.close()
            for m in taken:
                await m.ack()
            again = PullFetcher(nc, settings.nats_stream, settings.nats_consumer)
            await again.start()
            started = time.monotonic()
            got: list[nats.aio.msg.Msg] = []
            while len(got) < 25 and time.monotonic() - started < 5:
                got += await again.fetch(25 - len(got), 1.0)
            # The 10 nak'ed come back at once, not after ack_wait (a minute).
            assert sorted(m.data for m in got) == sorted(b"m%d" % i for i in range(5, 30))
        finally:
            await nc.close()

    asyncio.run(main())
