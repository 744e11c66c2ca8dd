"""The bridge's hand-over and acknowledgement: each batch is handed to the injected ``enqueue`` in a worker thread,
one batch at a time, then waits for the injected ``sync`` (Redis has it on disk), and is acked on NATS only after
both returned. One ``sync`` covers every batch enqueued before it started (group commit, ``etl.pipeline.ackwindow``),
so batches go on being enqueued while one waits for the disk. A failure naks the batches it concerns for
redelivery and backs off, except a full Redis (``RedisFull``): the bridge then pauses, holding the batch in hand
and trying it again until Redis takes it, since every batch would be refused alike. Durations are seconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg

from etl.errors import RedisFull
from etl.natsio import conn, internals
from etl.pipeline.ackwindow import AckWindow
from etl.pipeline.rawstream import DEFAULT_ACK_WAIT_S, Sleep
from etl.runtime.metrics import BATCH_SIZE, BRIDGE_PAUSED, BRIDGE_UNACKED, EVENTS, RETRIES

log = logging.getLogger(__name__)

Enqueue = Callable[[list[bytes]], None]
# Blocks until every batch enqueued before the call is on disk; raises when that cannot be confirmed.
Sync = Callable[[], None]

DEFAULT_NAK_DELAY_S = 1.0
DEFAULT_BACKOFF_MIN_S = 0.1
DEFAULT_BACKOFF_MAX_S = 5.0
# One PING/PONG after a batch's acks: the server has then read every ack of the batch.
ACK_FLUSH_TIMEOUT_S = 5


def backoff_s(failure_streak: int) -> float:
    """The pause after the ``failure_streak``-th failure in a row: doubling from the minimum up to the maximum."""
    streak = max(failure_streak, 1)
    return float(min(DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_MIN_S * 2 ** (streak - 1)))


class GroupCommit:
    """Hands batches over and settles them on ``nc`` (set once connected). Counters feed metrics and tests."""

    def __init__(self, window: AckWindow[Msg], enqueue: Enqueue, sync: Sync | None, sleep: Sleep, *,
                 nak_delay_s: float = DEFAULT_NAK_DELAY_S, stopping: asyncio.Event | None = None,
                 ack_wait_s: float = DEFAULT_ACK_WAIT_S) -> None:
        self._window = window
        self._enqueue = enqueue
        self._sync = sync
        self._sleep = sleep
        self._nak_delay_s = nak_delay_s
        self._stopping = stopping or asyncio.Event()
        # Held messages are kept alive at least twice per ack_wait, so JetStream never redelivers them.
        self._keep_alive_s = ack_wait_s / 2
        # The batch collected while the last one is handed over: kept alive with it while Redis is full.
        self.waiting: Sequence[Msg] = ()
        # Hand-overs and durability checks waiting for a full Redis (at most one of each), and since when.
        self._refused = 0
        self._full_since = 0.0
        # Held while a batch is enqueued and while the backpressure gate reads the backlog (see _enqueue_landing).
        self.enqueue_lock = threading.Lock()
        self.nc: Client | None = None
        self._failure_streak = 0
        self.batches = 0
        self.messages_enqueued = 0
        self.enqueue_failures = 0
        # A batch is handed over (at most one at a time) and enqueue has not returned yet: it is on its way to the
        # queues. Once it is being acked it has landed, and counting it still would pause intake a batch early,
        # for good.
        self.landing = False

    def hold(self, batch: list[Msg]) -> None:
        """Count ``batch`` as held and on its way, before ``hand_over`` runs."""
        self._window.hold(batch)
        BRIDGE_UNACKED.set(self._window.events)
        self.landing = True

    async def hand_over(self, batch: list[Msg]) -> None:
        """Enqueue the batch, then leave it to ``run`` (or ack it at once without a ``sync``); nak it for
        redelivery if enqueue raised."""
        payloads = [m.data for m in batch]
        try:
            await self._while_full(lambda: asyncio.to_thread(self._enqueue_landing, payloads))
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

    async def run(self) -> None:
        """Forever: wait for enqueued batches, confirm with one ``sync`` that Redis has them all on disk, ack them
        all (nak them if it failed). Batches enqueued meanwhile wait for the next ``sync``."""
        while True:
            group = await self._window.next_group()
            try:
                if self._sync is not None:
                    await self._while_full(self._synced)
            except Exception as e:  # noqa: BLE001 - sync is injected; any failure means "not on disk"
                await self._failed(group, "durability check", e)
                continue
            await self._settle_all(group, ack=True)

    async def _synced(self) -> None:
        assert self._sync is not None
        await asyncio.to_thread(self._sync)

    @property
    def redis_full(self) -> bool:
        """Paused: Redis refused a batch or its durability check for want of memory, and has not taken it yet."""
        return self._refused > 0

    async def _while_full(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run ``attempt``; while it raises ``RedisFull``, pause and run it again after a backoff, keeping every
        message the window holds, and the batch waiting, from being redelivered meanwhile: not only the batch or
        group ``attempt`` is for, since batches enqueued before the pause wait in the window for the next check.
        Raises what ``attempt`` raises otherwise, and ``RedisFull`` once stopping."""
        streak, taken = 0, False
        try:
            while True:
                try:
                    await attempt()
                    taken = True
                    return
                except RedisFull as e:
                    if self._stopping.is_set():
                        raise
                    streak += 1
                    RETRIES.labels(stage="bridge").inc()
                    if streak == 1:
                        self._pause(e, self._window.events)
                await self._keep_alive([*self._window.held(), *self.waiting])
                await self._sleep(min(backoff_s(streak), self._keep_alive_s))
        finally:
            if streak:
                self._unpause(taken=taken)

    def _pause(self, error: RedisFull, events: int) -> None:
        self._refused += 1
        if self._refused > 1:
            return
        self._full_since = time.monotonic()
        BRIDGE_PAUSED.set(1)
        log.warning("bridge paused: Redis refuses writes (%s); holding %d event(s) and trying again every few "
                    "seconds, the rest wait in JetStream", error, events, extra={"events": events})

    def _unpause(self, *, taken: bool) -> None:
        """End a pause: Redis took the write (``taken``), or the attempt failed otherwise, which is logged where it
        is handled."""
        self._refused -= 1
        if self._refused:
            return
        # The backpressure gate's next read (before the next batch) sets the gauge again if the queues are full.
        BRIDGE_PAUSED.set(0)
        if taken:
            log.info("bridge resumed: Redis takes writes again, after %.1f s", time.monotonic() - self._full_since)

    async def _keep_alive(self, held: Sequence[Msg]) -> None:
        """Tell JetStream the held messages are still being worked on (``+WPI``), so it does not redeliver them
        after ``ack_wait`` while the bridge waits for Redis."""
        try:
            for m in held:
                await m.in_progress()
        except conn.UNAVAILABLE_ERRORS as e:
            log.debug("progress of held messages not sent: %s", conn.describe(e))

    async def _failed(self, group: Sequence[Sequence[Msg]], what: str, error: Exception) -> None:
        """Nak ``group`` for redelivery after ``what`` failed, then back off."""
        events = sum(len(b) for b in group)
        self.enqueue_failures += 1
        RETRIES.labels(stage="bridge").inc()
        self._failure_streak += 1
        log.warning("%s of %d message(s) failed, nak'ed for redelivery: %r", what, events, error,
                    extra={"events": events})
        await self._settle_all(group, ack=False)
        await self._sleep(backoff_s(self._failure_streak))

    async def _settle_all(self, group: Sequence[Sequence[Msg]], *, ack: bool) -> None:
        """Settle ``group``'s batches as one, then stop holding them."""
        await self._settle([m for batch in group for m in batch], ack=ack)
        for batch in group:
            self._window.release(batch)
        BRIDGE_UNACKED.set(self._window.events)

    def _enqueue_landing(self, payloads: list[bytes]) -> None:
        """In a worker thread: enqueue, then stop counting the batch as on its way (landed, or never will), both
        under the lock the backpressure gate reads under, so that a read counts the batch once."""
        with self.enqueue_lock:
            self.landing = True  # again, when a full Redis refused it before
            try:
                self._enqueue(payloads)
            finally:
                self.landing = False

    async def _settle(self, batch: Sequence[Msg], *, ack: bool) -> None:
        """Ack (or nak) every message without waiting for each, then one flush for the whole batch.

        An ack is fire-and-forget in NATS; the flush's PONG proves the server has read them all. If that
        fails, the acks stay buffered for the reconnection, and at worst the batch is redelivered.
        """
        assert self.nc is not None
        try:
            if ack:
                # Every ack at once (one run of frames on the fast path): nats-py's ack is a whole publish each.
                await internals.ack_all(self.nc, batch)
            else:
                for m in batch:
                    await m.nak(delay=self._nak_delay_s)
            await self.nc.flush(timeout=ACK_FLUSH_TIMEOUT_S)
        except conn.UNAVAILABLE_ERRORS as e:
            log.warning("%s of %d message(s) not confirmed, they may be redelivered: %s",
                        "ack" if ack else "nak", len(batch), conn.describe(e))
