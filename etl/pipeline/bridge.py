"""NATS -> batches -> enqueue: the thin bridge from the raw JetStream subject to the Dramatiq pools.

Every replica pulls from one durable JetStream consumer, so the server load-balances messages between them and
no message goes to two replicas at once. A batch closes at ``max_batch_size`` messages, at about
``max_batch_bytes``, or ``batch_linger_ms`` after its first message, whichever comes first. It is handed to the
injected ``enqueue`` in a worker thread, one batch at a time, then waits for the injected ``sync`` (Redis has it on
disk), and is acknowledged only after both returned: a crash at any point leaves the batch un-acked, and NATS
redelivers it after ``ack_wait``. Delivery is at-least-once; every sink write is idempotent. One ``sync`` covers
every batch enqueued before it started (group commit, ``etl.pipeline.ackwindow``), so batches go on being
enqueued while one waits for the disk.

Backpressure: a replica holds at most ``BRIDGE_MAX_UNACKED`` events (and ``BRIDGE_MAX_UNACKED_BYTES``) taken and not
yet acked; at the bound it fetches no more until a ``sync`` settles some. The server caps un-acked messages over
all replicas at ``max_ack_pending``. Dramatiq itself never refuses a message, so
before each batch the bridge reads the injected ``backlog`` (the deepest Dramatiq queue, in messages) and, at
``MAX_QUEUE_DEPTH``, stops fetching until it is down to the low-water mark (``etl.pipeline.backlog.Backpressure``).
Meanwhile events wait in JetStream, durably, not in memory. Durations are seconds inside this module.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from etl.config import Settings
from etl.errors import ConfigError
from etl.natsio import conn, internals
from etl.natsio.pull import ConsumerGone, PullFetcher
from etl.natsio.stream_limits import StreamLimits
from etl.pipeline.ackwindow import AckWindow
from etl.pipeline.backlog import DEFAULT_BACKLOG_POLL_S, Backlog, BacklogGate, Backpressure
from etl.runtime.metrics import BATCH_SIZE, BRIDGE_UNACKED, CONSUMER_ACK_PENDING, CONSUMER_LAG, EVENTS, RETRIES

log = logging.getLogger(__name__)

Enqueue = Callable[[list[bytes]], None]
# Blocks until every batch enqueued before the call is on disk; raises when that cannot be confirmed.
Sync = Callable[[], None]

# Far above one enqueue (a single Redis round trip): un-acked messages come back only after a crash or hang.
DEFAULT_ACK_WAIT_S = 60.0
# The server delivers at most this many replicas' worth (BRIDGE_MAX_UNACKED each) of un-acked messages over all
# replicas together: so many work at full speed in parallel, and a stalled replica cannot hoard the stream
# (whatever it holds waits ack_wait before another replica gets it).
MAX_ACK_PENDING_REPLICAS = 5
UNLIMITED_DELIVERIES = -1
# Raw events are a work queue: the stream keeps each one until the bridge acked it, and never ages one out.
RAW_STREAM_RETENTION = js_api.RetentionPolicy.WORK_QUEUE
# How long one idle fetch waits for a first message; bounds how soon stop() is noticed when idle.
DEFAULT_IDLE_FETCH_S = 0.5
# Shorter fetches than this are not worth a request (nats-py also needs expires > 0.1 ms).
MIN_FETCH_S = 0.002
DEFAULT_NAK_DELAY_S = 1.0
DEFAULT_BACKOFF_MIN_S = 0.1
DEFAULT_BACKOFF_MAX_S = 5.0
# After a failed fetch or bind (server gone, consumer deleted), wait this long before trying again.
RETRY_FETCH_S = 1.0
# One PING/PONG after a batch's acks: the server has then read every ack of the batch.
ACK_FLUSH_TIMEOUT_S = 5
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


class Bridge:
    """One bridge replica: ``await run()`` until ``stop()``. Counters and ``ready`` feed metrics, probes."""

    def __init__(
        self,
        settings: Settings,
        enqueue: Enqueue,
        *,
        sync: Sync | None = None,
        ack_wait_s: float = DEFAULT_ACK_WAIT_S,
        nak_delay_s: float = DEFAULT_NAK_DELAY_S,
        idle_fetch_s: float = DEFAULT_IDLE_FETCH_S,
        name: str = "etl-bridge",
        backlog: Backlog | None = None,
        backlog_poll_s: float = DEFAULT_BACKLOG_POLL_S,
    ) -> None:
        self._settings = settings
        internals.apply_settings(settings)
        self._enqueue = enqueue
        self._sync = sync
        self._window: AckWindow[Msg] = AckWindow(settings.bridge_max_unacked, settings.bridge_max_unacked_bytes)
        # Held while a batch is enqueued and while the gate reads the backlog (see _enqueue_landing).
        self._enqueue_lock = threading.Lock()
        self._gate = None if backlog is None else BacklogGate(backlog, Backpressure.from_settings(settings),
                                                              poll_s=backlog_poll_s, lock=self._enqueue_lock)
        self._ack_wait_s = ack_wait_s
        self._nak_delay_s = nak_delay_s
        self._idle_fetch_s = idle_fetch_s
        self._linger_s = settings.batch_linger_ms / 1000
        self._name = name
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Client | None = None
        self._fetcher: PullFetcher | None = None
        self._failure_streak = 0
        self._consumer_lost = False
        self.batches = 0
        self.messages_enqueued = 0
        # A batch is handed over (at most one at a time) and enqueue has not returned yet: it is on its way to the
        # queues. Once it is being acked it has landed, and counting it still would pause intake a batch early,
        # for good.
        self._landing = False
        self.enqueue_failures = 0

    @property
    def ready(self) -> bool:
        """Connected to NATS with the consumer bound, and not stopping."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the bridge cannot take events now, or ``None`` when it can (for ``/readyz``)."""
        if self._stopping.is_set():
            return "stopping"
        if self._nc is None or not self._nc.is_connected:
            return "NATS is not connected"
        if self._fetcher is None or self._consumer_lost:
            return f"JetStream consumer {self._settings.nats_consumer} is not bound"
        return None

    @property
    def max_payload(self) -> int | None:
        """The NATS server's ``max_payload`` in bytes, from its INFO (as of the last (re)connection); ``None``
        before the first connection. The enrich stage holds enriched events to it."""
        return None if self._nc is None else self._nc.max_payload

    @property
    def paused(self) -> bool:
        """Intake stopped because the Dramatiq queues are full (or their depth cannot be read)."""
        return self._gate is not None and self._gate.paused

    def stop(self) -> None:
        """Ask ``run`` to finish the batch in hand and return. Safe from any thread and in signal handlers."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stopping.set()
            return
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            self._stopping.set()
        else:
            loop.call_soon_threadsafe(self._stopping.set)

    async def run(self) -> None:
        """Bridge batches until ``stop()``, then drain the connection and return.

        Raises ``NatsUnavailable`` if NATS cannot be reached at start, ``ConfigError`` if the stream or the
        consumer cannot be used as configured. Later outages are logged and waited out, never raised.
        """
        self._loop = asyncio.get_running_loop()
        nc = self._nc = await conn.connect(self._settings, self._name)
        lag_reporter: asyncio.Task[None] | None = None
        try:
            js = nc.jetstream()
            self._fetcher = await self._bind(nc, js)
            lag_reporter = asyncio.create_task(self._report_lag(js))
            await self._bridge_batches(js)
        finally:
            if lag_reporter is not None:
                lag_reporter.cancel()
            await self._shutdown(nc)

    async def _bridge_batches(self, js: JetStreamContext) -> None:
        """The main loop: the next batch is collected while the last one is enqueued, and batches enqueued wait
        for their durability check meanwhile (``_commit``). On ``stop()`` every batch in hand is settled; on
        cancellation, those not acked yet are abandoned (redelivered after ``ack_wait``)."""
        handing: asyncio.Task[None] | None = None
        committing = asyncio.create_task(self._commit())
        try:
            while not self._stopping.is_set():
                if self._gate is not None:
                    await self._gate.wait_for_room(self._stopping, in_flight=lambda: int(self._landing))
                await self._window.wait_for_room(self._stopping)
                batch = await self._collect()
                if handing is not None:
                    await handing
                    handing = None
                if batch:
                    self._window.hold(batch)
                    BRIDGE_UNACKED.set(self._window.events)
                    self._landing = True
                    handing = asyncio.create_task(self._hand_over(batch))
                if self._consumer_lost and not self._stopping.is_set():
                    await self._rebind(js)
            if handing is not None:
                await handing
            await self._window.drained()
        finally:
            if handing is not None:
                handing.cancel()
            committing.cancel()

    async def _report_lag(self, js: JetStreamContext) -> None:
        """Export the consumer's lag every ``LAG_REPORT_INTERVAL_S``: what waits in JetStream, and what is out."""
        s = self._settings
        while not self._stopping.is_set():
            try:
                info = await js.consumer_info(s.nats_stream, s.nats_consumer)
                CONSUMER_LAG.set(info.num_pending or 0)
                CONSUMER_ACK_PENDING.set(info.num_ack_pending or 0)
            except conn.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as e:
                log.debug("consumer lag not read: %s", conn.describe(e))
            await self._sleep(LAG_REPORT_INTERVAL_S)

    async def _bind(self, nc: Client, js: JetStreamContext) -> PullFetcher:
        s = self._settings
        await ensure_raw_stream(js, s)
        what = f"cannot bind NATS consumer {s.nats_consumer}"
        with conn.unavailable_as(conn.NatsUnavailable, what):
            try:
                info = await js.consumer_info(s.nats_stream, s.nats_consumer)
                _check_consumer(info, s)
                await _raise_ack_pending(js, info, s)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(s.nats_stream, config=consumer_config(s, self._ack_wait_s))
                log.info("created NATS consumer %s on %s", s.nats_consumer, s.nats_stream)
            fetcher = PullFetcher(nc, s.nats_stream, s.nats_consumer)
            await fetcher.start()
        log.info("bridge bound to %s/%s", s.nats_stream, s.nats_consumer)
        return fetcher

    async def _rebind(self, js: JetStreamContext) -> None:
        """Bind again after the consumer was lost (deleted, or its stream re-created); retry until stopped."""
        assert self._nc is not None
        try:
            fetcher = await self._bind(self._nc, js)
        except (conn.NatsUnavailable, ConfigError) as e:
            log.warning("bridge cannot re-bind its consumer yet: %s", e)
            await self._sleep(RETRY_FETCH_S)
            return
        await self._drop_subscription()
        self._fetcher, self._consumer_lost = fetcher, False

    async def _collect(self) -> list[Msg]:
        """Up to ``max_batch_size`` messages, closed ``batch_linger_ms`` after the first, or once one more message of
        the batch's average size would take it past ``max_batch_bytes`` (so it passes that by at most the size of
        its last message); ``[]`` when idle."""
        fetcher = self._fetcher
        if fetcher is None:
            return []
        batch: list[Msg] = []
        size = 0
        deadline: float | None = None
        while not self._consumer_lost:
            if deadline is None:
                if self._stopping.is_set():
                    break
                # Wait for one message only: a larger fetch would wait its whole timeout for the rest.
                want, timeout = 1, self._idle_fetch_s
            else:
                want, timeout = self._room(len(batch), size), deadline - time.monotonic()
                if want < 1 or timeout < MIN_FETCH_S:
                    break
            fetched = await self._fetch(fetcher, want, timeout)
            batch += fetched
            size += sum(len(m.data) for m in fetched)
            if deadline is None and batch:
                deadline = time.monotonic() + self._linger_s
        return batch

    def _room(self, count: int, size: int) -> int:
        """How many more messages the batch takes: by count, and by bytes at the average size so far."""
        by_count = self._settings.max_batch_size - count
        by_bytes = (self._settings.max_batch_bytes - size) // max(1, size // count)
        return min(by_count, by_bytes)

    async def _fetch(self, fetcher: PullFetcher, want: int, timeout_s: float) -> list[Msg]:
        try:
            return await fetcher.fetch(want, timeout_s)  # [] when nothing arrived in time: normal when idle
        except ConsumerGone as e:
            # Re-binding re-creates a deleted consumer, and is harmless when JetStream was briefly unavailable.
            log.warning("bridge fetch refused, will re-bind its consumer: %s", e)
            self._consumer_lost = True
        except conn.UNAVAILABLE_ERRORS as e:
            log.warning("bridge fetch failed: %s", conn.describe(e))
        await self._sleep(RETRY_FETCH_S)
        return []

    async def _hand_over(self, batch: list[Msg]) -> None:
        """Enqueue the batch, then leave it to ``_commit`` (or ack it at once without a ``sync``); nak it for
        redelivery if enqueue raised."""
        try:
            await asyncio.to_thread(self._enqueue_landing, [m.data for m in batch])
        except Exception as e:  # noqa: BLE001 - enqueue is injected; any failure means "not taken"
            await self._failed([batch], "enqueue", e)
            return
        self._failure_streak = 0
        self.batches += 1
        self.messages_enqueued += len(batch)
        EVENTS.labels(stage="received").inc(len(batch))
        BATCH_SIZE.labels(stage="bridge").observe(len(batch))
        if self._sync is None:
            await self._settle_all([batch], ack=True)
        else:
            self._window.enqueued(batch)

    async def _commit(self) -> None:
        """Forever: wait for enqueued batches, confirm with one ``sync`` that Redis has them all on disk, ack them
        all (nak them if it failed). Batches enqueued meanwhile wait for the next ``sync``."""
        while True:
            group = await self._window.next_group()
            try:
                if self._sync is not None:
                    await asyncio.to_thread(self._sync)
            except Exception as e:  # noqa: BLE001 - sync is injected; any failure means "not on disk"
                await self._failed(group, "durability check", e)
                continue
            await self._settle_all(group, ack=True)

    async def _failed(self, group: Sequence[Sequence[Msg]], what: str, error: Exception) -> None:
        """Nak ``group`` for redelivery after ``what`` failed, then back off."""
        events = sum(len(b) for b in group)
        self.enqueue_failures += 1
        RETRIES.labels(stage="bridge").inc()
        self._failure_streak += 1
        log.warning("%s of %d message(s) failed, nak'ed for redelivery: %r", what, events, error,
                    extra={"events": events})
        await self._settle_all(group, ack=False)
        await self._sleep(self._backoff_s())

    async def _settle_all(self, group: Sequence[Sequence[Msg]], *, ack: bool) -> None:
        """Settle ``group``'s batches as one, then stop holding them."""
        await self._settle([m for batch in group for m in batch], ack=ack)
        for batch in group:
            self._window.release(batch)
        BRIDGE_UNACKED.set(self._window.events)

    def _enqueue_landing(self, payloads: list[bytes]) -> None:
        """In a worker thread: enqueue, then stop counting the batch as on its way (landed, or never will), both
        under the lock the backpressure gate reads under, so that a read counts the batch once."""
        with self._enqueue_lock:
            try:
                self._enqueue(payloads)
            finally:
                self._landing = False

    async def _settle(self, batch: Sequence[Msg], *, ack: bool) -> None:
        """Ack (or nak) every message without waiting for each, then one flush for the whole batch.

        An ack is fire-and-forget in NATS; the flush's PONG proves the server has read them all. If that
        fails, the acks stay buffered for the reconnection, and at worst the batch is redelivered.
        """
        assert self._nc is not None
        try:
            if ack:
                # Every ack at once (one run of frames on the fast path): nats-py's ack is a whole publish each.
                await internals.ack_all(self._nc, batch)
            else:
                for m in batch:
                    await m.nak(delay=self._nak_delay_s)
            await self._nc.flush(timeout=ACK_FLUSH_TIMEOUT_S)
        except conn.UNAVAILABLE_ERRORS as e:
            log.warning("%s of %d message(s) not confirmed, they may be redelivered: %s",
                        "ack" if ack else "nak", len(batch), conn.describe(e))

    def _backoff_s(self) -> float:
        streak = max(self._failure_streak, 1)
        return float(min(DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_MIN_S * 2 ** (streak - 1)))

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if ``stop()`` is called meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _drop_subscription(self) -> None:
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is None or self._nc is None or self._nc.is_closed:
            return
        try:
            # Messages delivered and not fetched are nak'ed: another replica gets them at once.
            await fetcher.close()
        except conn.UNAVAILABLE_ERRORS + (nats.errors.BadSubscriptionError,) as e:
            log.warning("bridge unsubscribe failed: %s", conn.describe(e))

    async def _shutdown(self, nc: Client) -> None:
        await self._drop_subscription()
        await conn.close(nc)
        log.info("bridge stopped after %d batch(es), %d message(s)", self.batches, self.messages_enqueued)


def run_bridge(settings: Settings, enqueue: Enqueue, backlog: Backlog | None = None) -> None:
    """Run one bridge replica until SIGTERM or SIGINT. Blocking; raises like ``Bridge.run``."""
    run_until_signalled(Bridge(settings, enqueue, backlog=backlog))


def run_until_signalled(bridge: Bridge) -> None:
    """Run ``bridge`` until SIGTERM or SIGINT asks it to stop. Blocking."""
    asyncio.run(_serve(bridge))


async def _serve(bridge: Bridge) -> None:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, bridge.stop)
    try:
        await bridge.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
