"""The backlog of the Dramatiq queues, and the pure decision of when the bridge must stop feeding them.

Dramatiq has no producer-side limit: ``send`` always succeeds while Redis has memory. The bridge is the only
producer of new work, so it is where the limit goes. It reads the depth of every queue (``queue_depths``) and
feeds the DEEPEST one to ``Backpressure``: the enrich pool fans each batch out to the publish, timescale and
graph queues, so a single slow sink fills its own queue while enrich stays empty. Looking at the total or at
enrich alone would let that sink's queue, and Redis memory with it, grow without bound.

Depths are in Dramatiq messages; one message carries one batch of at most ``MAX_BATCH_SIZE`` events. What this
bounds, for ``R`` bridge replicas and high water ``H``: the enrich queue holds at most ``H + R - 1`` messages; a
sink queue at most about ``2H + R``, since enrich keeps fanning out what it already holds after intake stopped.
So Redis holds at most about ``7H`` batches in all (``H`` in enrich, ``2H`` per sink queue), whatever the rate
coming in; a data error that splits a batch in halves adds a message, not an event.

``BacklogGate`` is the bridge's side of it: it polls a probe while paused, and keeps the gauge and the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import redis

from etl.config import Settings
from etl.runtime.metrics import BRIDGE_PAUSED
from etl.stages import QUEUES

log = logging.getLogger(__name__)

# The deepest queue's depth, in messages. Blocking (the gate calls it in a worker thread); it may raise.
Backlog = Callable[[], int]

# Dramatiq's RedisBroker keeps every message not yet acked (waiting or being processed) in this hash, and the
# delayed ones (retries waiting for their backoff) in the one of the queue's ".DQ" twin.
MESSAGES_KEY = "dramatiq:{queue}.msgs"
DELAYED_MESSAGES_KEY = "dramatiq:{queue}.DQ.msgs"
PERCENT = 100
# How often a paused bridge reads the backlog again: small against the time a pool needs to drain from high to
# low water, and one cheap Redis round trip each time.
DEFAULT_BACKLOG_POLL_S = 0.2


@dataclass(frozen=True)
class QueueBacklog:
    """A queue's messages not yet acked: ``ready`` (waiting or in flight) and ``delayed`` (in its delay queue:
    retries waiting for their backoff, batches an open breaker put off)."""

    ready: int
    delayed: int

    @property
    def depth(self) -> int:
        return self.ready + self.delayed


def queue_backlogs(client: redis.Redis, queues: Iterable[str] = QUEUES) -> dict[str, QueueBacklog]:
    """Each queue's backlog, in one pipelined round trip.

    Raises ``redis.RedisError`` (e.g. ``redis.ConnectionError``) when Redis does not answer.
    """
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        pipe.hlen(MESSAGES_KEY.format(queue=queue))
        pipe.hlen(DELAYED_MESSAGES_KEY.format(queue=queue))
    values = pipe.execute()
    return {queue: QueueBacklog(int(values[2 * i]), int(values[2 * i + 1])) for i, queue in enumerate(names)}


def queue_depths(client: redis.Redis, queues: Iterable[str] = QUEUES) -> dict[str, int]:
    """Messages not yet acked in each queue: waiting, in flight and delayed, in one pipelined round trip.

    Raises ``redis.RedisError`` (e.g. ``redis.ConnectionError``) when Redis does not answer.
    """
    return {queue: backlog.depth for queue, backlog in queue_backlogs(client, queues).items()}


def deepest(depths: Mapping[str, int]) -> int:
    """The depth that decides backpressure: that of the fullest queue (0 when there is none)."""
    return max(depths.values(), default=0)


@dataclass
class Backpressure:
    """Hysteresis between two marks, in messages. Pure: no I/O, no clock.

    Intake stops when the deepest queue holds ``high_water`` messages or more, and resumes only once it is down
    to ``low_water`` or less, so the bridge does not flap around one threshold. While running, the bridge reads
    the depth before each batch, so one replica never takes a queue above ``high_water``; N replicas can
    overshoot by N - 1 messages. A depth that cannot be read counts as full (``unknown``).
    """

    high_water: int
    low_water: int
    paused: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.high_water < 1 or not 0 <= self.low_water < self.high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {self.low_water} and {self.high_water}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Backpressure:
        """High water ``MAX_QUEUE_DEPTH``; low water ``QUEUE_LOW_WATER_PERCENT`` of it, rounded down, and kept
        below high water (at 100 %, intake resumes as soon as one message left)."""
        high = settings.max_queue_depth
        low = min(high * settings.queue_low_water_percent // PERCENT, high - 1)
        return cls(high_water=high, low_water=low)

    def update(self, depth: int) -> bool:
        """Take the deepest queue's depth (messages); return whether intake is paused now."""
        if self.paused:
            self.paused = depth > self.low_water
        else:
            self.paused = depth >= self.high_water
        return self.paused

    def unknown(self) -> bool:
        """The depth could not be read (Redis down, so an enqueue would fail too): pause. Returns ``True``."""
        self.paused = True
        return True


class BacklogGate:
    """Holds intake while ``Backpressure`` says so: reads ``probe`` before each batch, and every ``poll_s``
    seconds while paused. Sets the ``BRIDGE_PAUSED`` gauge, to 1 also while ``held_elsewhere()`` (the bridge waits
    for a full Redis: ``etl.pipeline.commit``), and logs each transition.
    """

    def __init__(self, probe: Backlog, pressure: Backpressure, *, poll_s: float = DEFAULT_BACKLOG_POLL_S,
                 lock: AbstractContextManager[Any] | None = None,
                 held_elsewhere: Callable[[], bool] = lambda: False) -> None:
        self._probe = probe
        self._pressure = pressure
        self._poll_s = poll_s
        self._lock = lock or nullcontext()
        self._probe_failing = False
        self._held_elsewhere = held_elsewhere
        BRIDGE_PAUSED.set(int(pressure.paused))

    @property
    def paused(self) -> bool:
        return self._pressure.paused

    async def wait_for_room(self, stopping: asyncio.Event, in_flight: Callable[[], int] = lambda: 0) -> None:
        """Return once intake may go on, or as soon as ``stopping`` is set. Never raises for a failing probe.

        ``in_flight()`` batches, asked at each read, are on their way to the queues and count as if there already.
        It is asked with the probe under ``lock``: a producer that lands a batch and stops counting it under the
        same lock is seen either on its way or landed, never both.
        """
        while not stopping.is_set() and await self._read(in_flight):
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._poll_s)
            except TimeoutError:
                pass

    async def _read(self, in_flight: Callable[[], int]) -> bool:
        was_paused = self._pressure.paused
        try:
            queued, landing = await asyncio.to_thread(self._read_both, in_flight)
        except Exception as e:  # noqa: BLE001 - the probe is injected; Redis down means enqueue would fail too
            if not self._probe_failing:
                log.warning("bridge cannot read the queue depth, paused until it can: %r", e)
            self._probe_failing = True
            paused = self._pressure.unknown()
        else:
            self._probe_failing = False
            depth = queued + landing
            paused = self._pressure.update(depth)
            if paused and not was_paused:
                log.warning("bridge paused: a Dramatiq queue holds %d message(s)%s, MAX_QUEUE_DEPTH is %d; events "
                            "wait in JetStream", queued, f" and {landing} more is on its way" if landing else "",
                            self._pressure.high_water, extra={"depth": depth})
            elif was_paused and not paused:
                log.info("bridge resumed: the deepest Dramatiq queue is down to %d message(s)", depth,
                         extra={"depth": depth})
        BRIDGE_PAUSED.set(int(paused or self._held_elsewhere()))
        return paused

    def _read_both(self, in_flight: Callable[[], int]) -> tuple[int, int]:
        with self._lock:
            return self._probe(), in_flight()
