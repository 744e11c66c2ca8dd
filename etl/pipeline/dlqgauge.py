"""The dead letters stored now, exported as ``etl_dead_letters_stored`` by the bridge.

``etl_dead_letters_total`` counts dead letters as they happen, in whichever process; what an operator acts on is
what the queue holds now, which ``etl dlq replay``, ``etl dlq purge`` and retention lower from outside any pool.
So one process reads the store's own count (``DeadLetterStore.count``) at an interval: the bridge, which runs as
long as the pipeline does and already polls Redis for the queue depths. It reads on a thread of its own, off the
bridge's hot path (the backlog probe runs under the enqueue lock). Durations are seconds.
"""

from __future__ import annotations

import logging
import threading

import redis

from etl.pipeline.dlq import DeadLetterStore
from etl.runtime.metrics import DEAD_LETTERS_STORED

log = logging.getLogger(__name__)

# As often as the bridge reports the consumer's lag (etl.pipeline.rawstream): one HLEN each time.
DEFAULT_DLQ_GAUGE_INTERVAL_S = 5.0
STOP_TIMEOUT_S = 5.0


class StoredDeadLettersGauge:
    """Sets ``etl_dead_letters_stored`` from ``store`` at ``start`` and every ``interval_s`` seconds until
    ``stop``, on a daemon thread. A read that fails (Redis down) leaves the last value and is tried again at the
    next interval: the bridge's readiness reports Redis, this gauge need not."""

    def __init__(self, store: DeadLetterStore, *, interval_s: float = DEFAULT_DLQ_GAUGE_INTERVAL_S) -> None:
        self._store = store
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dlq-gauge", daemon=True)

    def start(self) -> StoredDeadLettersGauge:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the thread to stop after its current read, and wait up to ``timeout_s`` for it."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def read_once(self) -> None:
        """Set the gauge from the store now. Raises ``redis.RedisError`` when Redis does not answer."""
        DEAD_LETTERS_STORED.set(self._store.count())

    def _loop(self) -> None:
        while True:
            try:
                self.read_once()
            except redis.RedisError as e:
                log.debug("dead letters stored not read: %s", e)
            if self._stopping.wait(self._interval_s):
                return
