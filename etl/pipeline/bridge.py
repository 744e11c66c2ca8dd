"""NATS -> batches -> enqueue: the thin bridge from the raw JetStream subject to the Dramatiq pools.

Every replica pulls from one durable JetStream consumer (``etl.pipeline.rawstream``), so the server load-balances
messages between them and no message goes to two replicas at once. A batch is collected (``etl.pipeline.collect``)
while the last one is handed over, and acknowledged only once Redis has it on disk (``etl.pipeline.commit``): a
crash at any point leaves the batch un-acked, and NATS redelivers it after ``ack_wait``. Delivery is at-least-once;
every sink write is idempotent.

Backpressure: a replica holds at most ``BRIDGE_MAX_UNACKED`` events (and ``BRIDGE_MAX_UNACKED_BYTES``) taken and not
yet acked; at the bound it fetches no more until a ``sync`` settles some. The server caps un-acked messages over
all replicas at ``max_ack_pending``. Dramatiq itself never refuses a message, so
before each batch the bridge reads the injected ``backlog`` (the deepest Dramatiq queue, in messages) and, at
``MAX_QUEUE_DEPTH``, stops fetching until it is down to the low-water mark (``etl.pipeline.backlog.Backpressure``).
Meanwhile events wait in JetStream, durably, not in memory. A Redis at ``maxmemory`` refuses writes: the bridge
then pauses too, holding the batch in hand until Redis takes it (``etl.pipeline.commit``). Durations are seconds
inside this module.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from etl.config import Settings
from etl.errors import ConfigError
from etl.natsio import conn, internals
from etl.pipeline import rawstream
from etl.pipeline.ackwindow import AckWindow
from etl.pipeline.backlog import DEFAULT_BACKLOG_POLL_S, Backlog, BacklogGate, Backpressure
from etl.pipeline.collect import DEFAULT_IDLE_FETCH_S, RETRY_FETCH_S, Collector
from etl.pipeline.commit import DEFAULT_NAK_DELAY_S, Enqueue, GroupCommit, Sync
from etl.pipeline.rawstream import DEFAULT_ACK_WAIT_S

log = logging.getLogger(__name__)


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
        self._window: AckWindow[Msg] = AckWindow(settings.bridge_max_unacked, settings.bridge_max_unacked_bytes)
        self._stopping = asyncio.Event()
        self._commit = GroupCommit(self._window, enqueue, sync, self._sleep, nak_delay_s=nak_delay_s,
                                   stopping=self._stopping, ack_wait_s=ack_wait_s)
        self._collector = Collector(settings, self._stopping, self._sleep, idle_fetch_s=idle_fetch_s)
        self._gate = None if backlog is None else BacklogGate(
            backlog, Backpressure.from_settings(settings), poll_s=backlog_poll_s, lock=self._commit.enqueue_lock,
            held_elsewhere=lambda: self._commit.redis_full)
        self._ack_wait_s = ack_wait_s
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Client | None = None

    @property
    def batches(self) -> int:
        """Batches enqueued so far."""
        return self._commit.batches

    @property
    def messages_enqueued(self) -> int:
        """Messages enqueued so far."""
        return self._commit.messages_enqueued

    @property
    def enqueue_failures(self) -> int:
        """Hand-overs (enqueue or durability check) that failed and were nak'ed."""
        return self._commit.enqueue_failures

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
        if self._collector.fetcher is None or self._collector.consumer_lost:
            return f"JetStream consumer {self._settings.nats_consumer} is not bound"
        return None

    @property
    def max_payload(self) -> int | None:
        """The NATS server's ``max_payload`` in bytes, from its INFO (as of the last (re)connection); ``None``
        before the first connection. The enrich stage holds enriched events to it."""
        return None if self._nc is None else self._nc.max_payload

    @property
    def paused(self) -> bool:
        """Intake stopped because the Dramatiq queues are full (or their depth cannot be read), or Redis is at
        ``maxmemory`` and refuses the batch in hand."""
        return self._commit.redis_full or (self._gate is not None and self._gate.paused)

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
        nc = self._nc = self._commit.nc = await conn.connect(self._settings, self._name)
        lag_reporter: asyncio.Task[None] | None = None
        try:
            js = nc.jetstream()
            self._collector.fetcher = await rawstream.bind(nc, js, self._settings, self._ack_wait_s)
            lag_reporter = asyncio.create_task(rawstream.report_lag(js, self._settings, self._stopping, self._sleep))
            await self._bridge_batches(js)
        finally:
            if lag_reporter is not None:
                lag_reporter.cancel()
            await self._shutdown(nc)

    async def _bridge_batches(self, js: JetStreamContext) -> None:
        """The main loop: the next batch is collected while the last one is enqueued, and batches enqueued wait
        for their durability check meanwhile (``GroupCommit.run``). On ``stop()`` every batch in hand is settled;
        on cancellation, those not acked yet are abandoned (redelivered after ``ack_wait``)."""
        handing: asyncio.Task[None] | None = None
        committing = asyncio.create_task(self._commit.run())
        try:
            while not self._stopping.is_set():
                if self._gate is not None:
                    await self._gate.wait_for_room(self._stopping, in_flight=lambda: int(self._commit.landing))
                await self._window.wait_for_room(self._stopping)
                batch = await self._collector.collect()
                if handing is not None:
                    self._commit.waiting = batch
                    await handing
                    handing, self._commit.waiting = None, ()
                if batch:
                    self._commit.hold(batch)
                    handing = asyncio.create_task(self._commit.hand_over(batch))
                if self._collector.consumer_lost and not self._stopping.is_set():
                    await self._rebind(js)
            if handing is not None:
                await handing
            await self._window.drained()
        finally:
            if handing is not None:
                handing.cancel()
            committing.cancel()

    async def _rebind(self, js: JetStreamContext) -> None:
        """Bind again after the consumer was lost (deleted, or its stream re-created); retry until stopped."""
        assert self._nc is not None
        try:
            fetcher = await rawstream.bind(self._nc, js, self._settings, self._ack_wait_s)
        except (conn.NatsUnavailable, ConfigError) as e:
            log.warning("bridge cannot re-bind its consumer yet: %s", e)
            await self._sleep(RETRY_FETCH_S)
            return
        await self._drop_subscription()
        self._collector.fetcher, self._collector.consumer_lost = fetcher, False

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if ``stop()`` is called meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _drop_subscription(self) -> None:
        fetcher, self._collector.fetcher = self._collector.fetcher, None
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
