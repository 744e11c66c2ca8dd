"""The limits of the streams the pipeline creates, against a real JetStream server and the real pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats.errors
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamInfo

from etl.config import Settings
from etl.errors import ConfigError
from etl.natsio.conn import connect, ensure_stream
from etl.ops import report
from etl.pipeline.rawstream import ensure_raw_stream
from etl.sinks.nats_publish import NatsPublisher
from tests.integration.accounting import Events, check_accounting, sample_events
from tests.waiting import wait_for

MAX_BYTES = 64 * 1024
REFUSED_IN_A_ROW = 3  # a full stream keeps refusing, it is not a blip


async def publish_until_refused(settings: Settings, events: list[bytes]) -> tuple[list[bytes], list[Exception]]:
    """Publish ``events`` one at a time through JetStream until it refuses ``REFUSED_IN_A_ROW`` in a row.
    Returns the events it acknowledged and the errors the publisher saw."""
    nc = await connect(settings, name="test-agent")
    accepted: list[bytes] = []
    refusals: list[Exception] = []
    try:
        js = nc.jetstream()
        await ensure_raw_stream(js, settings)
        for event in events:
            try:
                await js.publish(settings.nats_subject_raw, event)
                accepted.append(event)
            except nats.errors.Error as e:
                refusals.append(e)
                if len(refusals) == REFUSED_IN_A_ROW:
                    break
    finally:
        await nc.close()
    return accepted, refusals


async def stream_info(settings: Settings, name: str) -> StreamInfo:
    nc = await connect(settings, name="test-reader")
    try:
        return await nc.jetstream().stream_info(name)
    finally:
        await nc.close()


def done(settings: Settings, events: Events) -> bool:
    counts = report.collect(settings)
    valid = len(events.valid)
    return ((counts.totals["stored"], counts.totals["merged"], counts.totals["published"]) == (valid, valid, valid)
            and sum(counts.dead_lettered.values()) == len(events.bad))


def test_a_full_raw_stream_refuses_publishers_and_loses_nothing(make_settings: Callable[..., Settings],
                                                                start_pipeline: Callable[..., Any]) -> None:
    settings = make_settings(NATS_STREAM_MAX_BYTES=MAX_BYTES, NATS_ENRICHED_STREAM_MAX_BYTES=1024**2,
                             MAX_BATCH_SIZE=50)
    events = sample_events(2_000, seed=16, malformed_every=40)
    # The pipeline is not running: nothing leaves the stream while the agent floods it.
    accepted, refusals = asyncio.run(publish_until_refused(settings, events.all))

    assert len(refusals) == REFUSED_IN_A_ROW, f"the full stream refused the publisher ({len(accepted)} accepted)"
    assert all("maximum bytes exceeded" in str(e) for e in refusals), refusals
    raw = asyncio.run(stream_info(settings, settings.nats_stream))
    assert raw.config.max_bytes == MAX_BYTES and raw.config.discard == DiscardPolicy.NEW
    assert (raw.state.first_seq, raw.state.messages) == (1, len(accepted)), "nothing accepted was dropped"
    assert raw.state.bytes <= MAX_BYTES

    start_pipeline(settings)
    taken = Events(valid=[e for e in accepted if e in set(events.valid)],
                   bad=[e for e in accepted if e in set(events.bad)], all=accepted)
    assert taken.bad, "some accepted events are for the dead-letter queue"
    wait_for(lambda: done(settings, taken), timeout_s=60, describe=lambda: str(report.collect(settings)))
    check_accounting(settings, taken)
    enriched = asyncio.run(stream_info(settings, settings.nats_enriched_stream))
    assert (enriched.config.max_bytes, enriched.config.discard) == (1024**2, DiscardPolicy.OLD)
    assert enriched.config.max_age == settings.nats_enriched_stream_max_age_s


def test_limits_are_applied_to_an_existing_stream(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(NATS_STREAM_MAX_BYTES=MAX_BYTES, NATS_STREAM_MAX_AGE=3600)

    async def scenario() -> tuple[StreamInfo, StreamInfo]:
        nc = await connect(settings, name="test-setup")
        try:
            js = nc.jetstream()
            # As an earlier version made it: no size or age limit, oldest discarded.
            await ensure_stream(js, settings.nats_stream, [settings.nats_subject_raw], storage=StorageType.FILE,
                                retention=RetentionPolicy.WORK_QUEUE)
            for raw in sample_events(20, seed=3).all:
                await js.publish(settings.nats_subject_raw, raw)
            before = await js.stream_info(settings.nats_stream)
            return before, await ensure_raw_stream(js, settings)
        finally:
            await nc.close()

    before, after = asyncio.run(scenario())
    assert (before.config.max_bytes, before.config.discard) == (-1, DiscardPolicy.OLD)
    assert after.config.max_bytes == MAX_BYTES and after.config.discard == DiscardPolicy.NEW
    assert after.config.max_age == 3600
    assert after.state.messages == before.state.messages == 20


def test_a_limit_the_server_has_no_room_for_is_a_configuration_error(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(NATS_STREAM_MAX_BYTES=10**15)

    async def scenario() -> None:
        nc = await connect(settings, name="test-setup")
        try:
            await ensure_raw_stream(nc.jetstream(), settings)
        finally:
            await nc.close()

    with pytest.raises(ConfigError, match="insufficient storage.*lower NATS_STREAM_MAX_BYTES"):
        asyncio.run(scenario())


def test_an_enriched_stream_younger_than_the_duplicate_window_takes_events(
        make_settings: Callable[..., Settings]) -> None:
    # JetStream refuses a stream whose max_age is under its duplicate window (two minutes unless set).
    settings = make_settings(NATS_ENRICHED_STREAM_MAX_AGE=30)
    sink = NatsPublisher(settings)
    sink.open()
    try:
        assert sink.write([{"id": "short-lived", "type": "t", "timestamp": 1, "metadata": {}, "args": {}}]) == 1
    finally:
        sink.close()

    async def enriched() -> StreamInfo:
        nc = await connect(settings, name="test-check")
        try:
            return await nc.jetstream().stream_info(settings.nats_enriched_stream)
        finally:
            await nc.close()

    info = asyncio.run(enriched())
    assert (info.config.max_age, info.config.duplicate_window) == (30, 30)
    assert info.state.messages == 1
