"""Dramatiq's own Prometheus middleware, for the worker pools.

In a worker process it counts messages, errors, retries and durations per queue and actor, and a process forked by
Dramatiq's main process serves every metric of its workers (ours included, see ``etl.runtime.workerenv``) on
``METRICS_PORT``, with the server of ``etl.middleware.exposition``. The bridge and the CLI enqueue through the same
broker but never boot a worker: there the middleware stays inert.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware.prometheus import Prometheus

from etl.middleware.exposition import serve_pool_metrics


class PoolMetrics(Prometheus):
    """``Prometheus`` that ignores enqueue and nack hooks until a worker process has booted it."""

    def __init__(self) -> None:
        super().__init__()
        self._booted = False

    @property
    def forks(self) -> list[Callable[[], int]]:
        """Our bounded exposition server instead of Dramatiq's single-threaded one (``etl.middleware.exposition``)."""
        return [serve_pool_metrics]

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        super().after_process_boot(broker)
        self._booted = True

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        if self._booted:
            super().after_enqueue(broker, message, delay)

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        if self._booted:
            super().after_nack(broker, message)
