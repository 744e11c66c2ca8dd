"""The raw-events stream and the durable pull consumer every bridge replica shares: their configuration, binding
to them (creating what is missing), and the consumer's lag for the metrics. Durations are seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js import api as js_api

from etl.config import Settings
from etl.errors import ConfigError
from etl.natsio import conn
from etl.natsio.pull import PullFetcher
from etl.natsio.stream_limits import StreamLimits
from etl.runtime.metrics import CONSUMER_ACK_PENDING, CONSUMER_LAG

log = logging.getLogger(__name__)

# Sleeps that many seconds, or less if the bridge is asked to stop meanwhile.
Sleep = Callable[[float], Awaitable[None]]

# Far above one enqueue (a single Redis round trip): un-acked messages come back only after a crash or hang.
DEFAULT_ACK_WAIT_S = 60.0
# The server delivers at most this many replicas' worth (BRIDGE_MAX_UNACKED each) of un-acked messages over all
# replicas together: so many work at full speed in parallel, and a stalled replica cannot hoard the stream
# (whatever it holds waits ack_wait before another replica gets it).
MAX_ACK_PENDING_REPLICAS = 5
UNLIMITED_DELIVERIES = -1
# Raw events are a work queue: the stream keeps each one until the bridge acked it, and never ages one out.
RAW_STREAM_RETENTION = js_api.RetentionPolicy.WORK_QUEUE
LAG_REPORT_INTERVAL_S = 5.0


def consumer_config(settings: Settings, ack_wait_s: float = DEFAULT_ACK_WAIT_S) -> js_api.ConsumerConfig:
    """The durable pull consumer every bridge replica shares. It sets no ``num_replicas``: the server gives it
    as many as its stream (``NATS_STREAM_REPLICAS``), so it fails over with the stream."""
    return js_api.ConsumerConfig(
        name=settings.nats_consumer,
        durable_name=settings.nats_consumer,
        filter_subject=settings.nats_subject_raw,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=UNLIMITED_DELIVERIES,
        max_ack_pending=max_ack_pending(settings),
    )


def max_ack_pending(settings: Settings) -> int:
    """The consumer's bound on messages delivered and not acked, over all replicas."""
    return MAX_ACK_PENDING_REPLICAS * max(settings.bridge_max_unacked, settings.max_batch_size)


async def ensure_raw_stream(js: JetStreamContext, settings: Settings) -> js_api.StreamInfo:
    """The raw-events stream, created as the bridge needs it if missing; producers should create it this way.

    Raises like ``conn.ensure_stream``.
    """
    return await conn.ensure_stream(js, settings.nats_stream, [settings.nats_subject_raw],
                                    storage=js_api.StorageType.FILE, retention=RAW_STREAM_RETENTION,
                                    num_replicas=settings.nats_stream_replicas, kept=raw_stream_limits(settings))


def raw_stream_limits(settings: Settings) -> StreamLimits:
    """The raw stream's limits. Full, it refuses new events (discard ``new``): every event it holds is one an
    agent was told was accepted and no bridge has yet handed over, so dropping the oldest would lose it."""
    return StreamLimits(settings.nats_stream_max_bytes, settings.nats_stream_max_age_s, js_api.DiscardPolicy.NEW)


async def bind(nc: Client, js: JetStreamContext, settings: Settings, ack_wait_s: float) -> PullFetcher:
    """A started fetcher on the shared consumer, after creating the stream and the consumer if missing and
    raising the consumer's ``max_ack_pending`` if it is too low. Raises ``NatsUnavailable``, or ``ConfigError``
    when the stream or the consumer cannot be used as configured."""
    s = settings
    await ensure_raw_stream(js, s)
    what = f"cannot bind NATS consumer {s.nats_consumer}"
    with conn.unavailable_as(conn.NatsUnavailable, what):
        try:
            info = await js.consumer_info(s.nats_stream, s.nats_consumer)
            _check_consumer(info, s)
            await _raise_ack_pending(js, info, s)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(s.nats_stream, config=consumer_config(s, ack_wait_s))
            log.info("created NATS consumer %s on %s", s.nats_consumer, s.nats_stream)
        fetcher = PullFetcher(nc, s.nats_stream, s.nats_consumer)
        await fetcher.start()
    log.info("bridge bound to %s/%s", s.nats_stream, s.nats_consumer)
    return fetcher


def _check_consumer(info: js_api.ConsumerInfo, settings: Settings) -> None:
    config = info.config
    if config.deliver_subject or config.ack_policy != js_api.AckPolicy.EXPLICIT:
        raise ConfigError(
            f"NATS consumer {settings.nats_consumer} exists but is not a pull consumer with explicit acks"
        )
    if config.filter_subject not in (None, "", settings.nats_subject_raw):
        log.warning("NATS consumer %s filters %r, not NATS_SUBJECT_RAW=%r; using it as it is",
                    settings.nats_consumer, config.filter_subject, settings.nats_subject_raw)


async def _raise_ack_pending(js: JetStreamContext, info: js_api.ConsumerInfo, settings: Settings) -> None:
    """Raise the consumer's ``max_ack_pending`` to what ``BRIDGE_MAX_UNACKED`` needs (a consumer made by an older
    version allowed two batches per replica), so that it does not cap what a replica holds for group commit."""
    wanted = max_ack_pending(settings)
    current = info.config.max_ack_pending
    if current is None or current < 0 or current >= wanted:
        return
    await js.add_consumer(settings.nats_stream, config=info.config.evolve(max_ack_pending=wanted))
    log.info("NATS consumer %s: max_ack_pending raised from %d to %d (BRIDGE_MAX_UNACKED)", settings.nats_consumer,
             current, wanted)


async def report_lag(js: JetStreamContext, settings: Settings, stopping: asyncio.Event, sleep: Sleep) -> None:
    """Until ``stopping`` is set, export the consumer's lag every ``LAG_REPORT_INTERVAL_S``: what waits in
    JetStream, and what is out."""
    s = settings
    while not stopping.is_set():
        try:
            info = await js.consumer_info(s.nats_stream, s.nats_consumer)
            CONSUMER_LAG.set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.set(info.num_ack_pending or 0)
        except conn.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as e:
            log.debug("consumer lag not read: %s", conn.describe(e))
        await sleep(LAG_REPORT_INTERVAL_S)

