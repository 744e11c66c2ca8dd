"""What Redis holds for the pipeline, exported by the bridge at an interval: each Dramatiq queue's depth
(``etl_queue_depth``) and how much of it is delayed (``etl_queue_delayed``), and the dead letters stored now
(``etl_dead_letters_stored``).

The backlog probe reads the queues only when the bridge is about to take a batch, so a bridge with nothing to take
would leave the last depths it read standing. And what the dead-letter queue holds changes from outside any pool
(``etl dlq replay``, ``etl dlq purge``, retention), which no counter shows. So the bridge, which runs as long as the
pipeline does, reads both on a thread of its own, off its hot path (the probe runs under the enqueue lock): one
round trip for the queues, one ``HLEN`` for the dead letters. Durations are seconds.
"""

from __future__ import annotations

import logging
import threading

import redis

from etl.pipeline.backlog import queue_backlogs
from etl.pipeline.dlq import DeadLetterStore
from etl.pipeline.rawstream import LAG_REPORT_INTERVAL_S
from etl.runtime.metrics import DEAD_LETTERS_STORED, QUEUE_DELAYED, QUEUE_DEPTH

log = logging.getLogger(__name__)

# As often as the bridge reports the consumer's lag, well within a scrape interval.
DEFAULT_REDIS_GAUGES_INTERVAL_S = LAG_REPORT_INTERVAL_S
STOP_TIMEOUT_S = 5.0


class RedisGauges:
    """Sets the gauges from ``client`` and ``store`` at ``start`` and every ``interval_s`` seconds until ``stop``,
    on a daemon thread. A read that fails (Redis down) leaves the last values and is tried again at the next
    interval: the bridge's readiness reports Redis, these gauges need not."""

    def __init__(self, client: redis.Redis, store: DeadLetterStore, *,
                 interval_s: float = DEFAULT_REDIS_GAUGES_INTERVAL_S) -> None:
        self._client = client
        self._store = store
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="redis-gauges", daemon=True)

    def start(self) -> RedisGauges:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the thread to stop after its current read, and wait up to ``timeout_s`` for it."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def read_once(self) -> None:
        """Set every gauge from Redis now. Raises ``redis.RedisError`` when Redis does not answer."""
        for queue, backlog in queue_backlogs(self._client).items():
            QUEUE_DEPTH.labels(queue=queue).set(backlog.depth)
            QUEUE_DELAYED.labels(queue=queue).set(backlog.delayed)
        DEAD_LETTERS_STORED.set(self._store.count())

    def _loop(self) -> None:
        while True:
            try:
                self.read_once()
            except redis.RedisError as e:
                log.debug("queue depths and dead letters stored not read: %s", e)
            if self._stopping.wait(self._interval_s):
                return
