"""Handing batches to a stage's queue by name, without loading the actors.

The bridge and ``etl dlq replay`` enqueue through this module: Dramatiq needs only the queue and the actor's name
(``etl.stages``) to route a message, so neither process builds the workers' sinks, breakers or resolver.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from etl.broker import AofSync
from etl.config import Settings
from etl.errors import RedisFull
from etl.pipeline import rawbatch
from etl.stages import ENRICH, Stage, stage


class Handoff:
    """Enqueues batches on ``broker``; ``sync`` waits for Redis's disk (``aof``)."""

    def __init__(self, broker: RedisBroker, aof: AofSync) -> None:
        self._broker = broker
        self._aof = aof

    @classmethod
    def from_settings(cls, broker: RedisBroker, settings: Settings) -> Handoff:
        """A hand-off that waits for Redis's disk as ``REDIS_WAIT_AOF`` and ``REDIS_WAIT_REPLICAS`` say."""
        return cls(broker, AofSync(broker.client, enabled=settings.redis_wait_aof,
                                   replicas=settings.redis_wait_replicas))

    def raw(self, batch: list[bytes], *, max_payload: int | None = None) -> None:
        """``enqueue_raw`` then ``sync``: the batch is on disk in Redis when this returns."""
        self.enqueue_raw(batch, max_payload=max_payload)
        self.sync()

    def enqueue_raw(self, batch: list[bytes], *, max_payload: int | None = None) -> None:
        """The bridge's hand-off: one message for a whole batch of raw NATS payloads. ``max_payload`` is the NATS
        server's, in bytes, for the enrich stage to hold enriched events to (``None``: unknown, NATS's default).
        Raises on any Redis failure; the bridge then naks."""
        texts, binary = rawbatch.pack(batch)
        self.send(ENRICH, texts, binary, max_payload)

    def sync(self) -> None:
        """Return once every batch enqueued before the call (by any process) is on Redis's disk, as
        ``REDIS_WAIT_AOF`` and ``REDIS_WAIT_REPLICAS`` ask: the bridge may then ack them on NATS. Raises
        ``TransientError`` when that is not confirmed in time, or on any Redis failure."""
        self._aof.wait()

    def to_stage(self, name: str, payloads: list[Any]) -> None:
        """Enqueue a batch for stage ``name`` again (dead-letter replay): raw bytes for enrich, events for a
        sink. Raises ``ValueError`` for an unknown stage."""
        target = stage(name)
        if target is ENRICH:
            self.raw(payloads)
        else:
            self.send(target, payloads)

    def send(self, target: Stage, *args: Any) -> None:
        """One message to ``target``'s actor, as ``actor.send(*args)`` would enqueue it. Raises ``RedisFull`` when
        Redis is at ``maxmemory``, else whatever the broker raises."""
        message: dramatiq.Message[Any] = dramatiq.Message(queue_name=target.queue, actor_name=target.actor,
                                                          args=args, kwargs={}, options={})
        try:
            self._broker.enqueue(message)
        except redis.exceptions.OutOfMemoryError as e:
            raise RedisFull(f"Redis refuses the batch: {e}") from e
