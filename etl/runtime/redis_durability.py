"""Keeping batches safe across Redis restarts and outages, where Dramatiq's Redis broker alone would not.

- ``DurableRedisBroker`` re-queues the messages its own consumer had fetched when that consumer restarts after a
  connection error: a fetch whose reply the outage cut leaves them in this live worker's ack set, where
  Dramatiq's maintenance (which only rescues *dead* workers' messages) would never look.
- ``PatientRetries`` waits for Redis to come back before re-enqueueing a failed message, instead of letting the
  failure escape and the message be acked, i.e. lost. It counts each retry it schedules in ``etl_retries_total``,
  by stage: every pool's retries pass here, so this is the one place that counts them.
- ``patiently`` is that wait, for any Redis write that is safe to repeat (an enqueue, a dead letter).

A full Redis (``maxmemory`` with ``noeviction``) refuses every write, even an ack, until memory is freed: the pools
wait it out as they wait out an unreachable Redis. Dramatiq's Redis broker treats only a connection error so, hence
``DurableRedisBroker``'s consumers turn a refusal into the error Dramatiq's consumer thread waits on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.broker import Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.errors import BrokerConnectionError, ConnectionClosed
from dramatiq.middleware import Retries

from etl.runtime.metrics import RETRIES

log = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_PATIENCE_S = 600.0
PATIENCE_FIRST_WAIT_S = 0.1
PATIENCE_MAX_WAIT_S = 5.0
# Redis cannot take a write now, and may later: unreachable, or full (it refuses writes until memory is freed).
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError,
                                                      redis.exceptions.OutOfMemoryError, BrokerConnectionError)

# KEYS: this worker's ack set for the queue, the queue's list, the queue's message hash. Moves every id whose
# message still exists back to the queue (an id acked meanwhile has no message left).
_REQUEUE_OWN_ACKS = """
local ids = redis.call("smembers", KEYS[1])
local moved = 0
for i = 1, #ids do
  if redis.call("hexists", KEYS[3], ids[i]) == 1 then
    redis.call("rpush", KEYS[2], ids[i])
    moved = moved + 1
  end
end
redis.call("del", KEYS[1])
return moved
"""


def patiently(call: Callable[[], T], what: str, *, patience_s: float = REDIS_PATIENCE_S) -> T:
    """``call()``, repeated with backoff while Redis is unreachable or full, for up to ``patience_s`` seconds.

    Only for writes that are safe to repeat. Raises the last of ``REDIS_DOWN_ERRORS`` when patience runs out.
    """
    deadline = time.monotonic() + patience_s
    wait_s = PATIENCE_FIRST_WAIT_S
    while True:
        try:
            return call()
        except REDIS_DOWN_ERRORS as e:
            if time.monotonic() + wait_s > deadline:
                raise
            if wait_s == PATIENCE_FIRST_WAIT_S:
                state = "full" if isinstance(e, redis.exceptions.OutOfMemoryError) else "unreachable"
                log.warning("Redis %s while trying to %s; waiting for it: %s", state, what, e,
                            extra={"error": str(e)})
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, PATIENCE_MAX_WAIT_S)


class DurableRedisBroker(RedisBroker):
    """A ``RedisBroker`` whose consumers first take back what this worker fetched and has not acked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._requeue_own_acks = self.client.register_script(_REQUEUE_OWN_ACKS)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        # Dramatiq calls this again after a connection error; messages still being processed by this worker's
        # threads may then run twice, which the idempotent sinks absorb.
        acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
        queue = f"{self.namespace}:{queue_name}"
        with _redis_down_as_closed():  # Dramatiq's consumer thread waits and tries again
            moved = self._requeue_own_acks(keys=[acks, queue, f"{queue}.msgs"])
        if moved:
            log.warning("re-queued %d message(s) of %s this worker had fetched before losing Redis", moved,
                        queue_name, extra={"queue": queue_name, "events": moved})
        return _WaitingConsumer(super().consume(queue_name, prefetch, timeout))


class _WaitingConsumer(Consumer):
    """A consumer whose Redis errors are all ``ConnectionClosed``: Dramatiq's consumer thread retries an ack or a
    nack, and restarts the consumer, only on that. Any other error from ``requeue`` (run when the thread closes
    the consumer) would end the thread for good, leaving the messages it delayed in this worker's ack set."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def __next__(self) -> dramatiq.MessageProxy | None:
        with _redis_down_as_closed():
            return next(self._consumer)

    def ack(self, message: dramatiq.MessageProxy) -> None:
        with _redis_down_as_closed():
            self._consumer.ack(message)

    def nack(self, message: dramatiq.MessageProxy) -> None:
        with _redis_down_as_closed():
            self._consumer.nack(message)

    def requeue(self, messages: Iterable[dramatiq.MessageProxy]) -> None:
        with _redis_down_as_closed():
            self._consumer.requeue(messages)

    def close(self) -> None:
        with _redis_down_as_closed():
            self._consumer.close()


@contextmanager
def _redis_down_as_closed() -> Iterator[None]:
    """Raises ``ConnectionClosed`` for any of ``REDIS_DOWN_ERRORS``."""
    try:
        yield
    except ConnectionClosed:
        raise
    except REDIS_DOWN_ERRORS as e:
        raise ConnectionClosed(e) from None


class _PatientEnqueue:
    """The two broker calls ``Retries`` makes, with its enqueue waiting for Redis. ``Retries`` enqueues only to
    schedule a retry, so an enqueue that returned is a retry scheduled: counted, by the message's stage."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def get_actor(self, actor_name: str) -> dramatiq.Actor[Any, Any]:
        return self._broker.get_actor(actor_name)

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        enqueued = patiently(lambda: self._broker.enqueue(message, delay=delay), "re-enqueue a failed message")
        RETRIES.labels(stage=q_name(message.queue_name)).inc()
        return enqueued


class PatientRetries(Retries):
    """Dramatiq's ``Retries``, except that re-enqueueing a failed message waits for Redis instead of failing, and
    each retry scheduled is counted in ``etl_retries_total``."""

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        super().after_process_message(_PatientEnqueue(broker), message, result=result, exception=exception)
