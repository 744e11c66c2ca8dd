"""Handing batches to a stage's queue by name, without loading the actors.

The bridge and ``etl dlq replay`` enqueue through this module: Dramatiq needs only the queue and the actor's name
(``etl.stages``) to route a message, so neither process builds the workers' sinks, breakers or resolver.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from etl.broker import AofSync
from etl.config import Settings
from etl.pipeline import rawbatch
from etl.stages import ENRICH, Stage, stage


class Handoff:
    """Enqueues batches on ``broker``; raw batches wait for Redis's disk (``aof``) before ``raw`` returns."""

    def __init__(self, broker: RedisBroker, aof: AofSync) -> None:
        self._broker = broker
        self._aof = aof

    @classmethod
    def from_settings(cls, broker: RedisBroker, settings: Settings) -> Handoff:
        """A hand-off that waits for Redis's disk as ``REDIS_WAIT_AOF`` and ``REDIS_WAIT_REPLICAS`` say."""
        return cls(broker, AofSync(broker.client, enabled=settings.redis_wait_aof,
                                   replicas=settings.redis_wait_replicas))

    def raw(self, batch: list[bytes], *, max_payload: int | None = None) -> None:
        """The bridge's hand-off: one message for a whole batch of raw NATS payloads, on disk in Redis before
        this returns (so the bridge may ack NATS). ``max_payload`` is the NATS server's, in bytes, for the enrich
        stage to hold enriched events to (``None``: unknown, NATS's default). Raises on any Redis failure; the
        bridge then naks."""
        texts, binary = rawbatch.pack(batch)
        self.send(ENRICH, texts, binary, max_payload)
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
        """One message to ``target``'s actor, as ``actor.send(*args)`` would enqueue it."""
        self._broker.enqueue(dramatiq.Message(queue_name=target.queue, actor_name=target.actor, args=args,
                                              kwargs={}, options={}))
