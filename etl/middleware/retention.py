"""Retention in the worker pools: a worker process of the graph pool starts the retention task
(``etl.retention.task``) for ``GRAPH_RETENTION``, one of the timescale pool for ``TIMESCALE_RETENTION``, and a worker
of every queue (``dramatiq etl.actors`` without ``--queues``) for both; at worker shutdown the task stops. Without a
retention set, or in the other pools, nothing starts.
"""

from __future__ import annotations

from collections.abc import Collection

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from etl.config import Settings
from etl.retention.runs import Expiry
from etl.retention.task import RetentionTask
from etl.stages import GRAPH, TIMESCALE


def consumed_queues(worker: dramatiq.Worker) -> Collection[str] | None:
    """The queues ``worker`` consumes: ``--queues``, kept by Dramatiq as its ``consumer_whitelist`` (no public
    accessor); ``None`` for every queue, also if a later Dramatiq renames it (then every retention set starts)."""
    queues: Collection[str] | None = getattr(worker, "consumer_whitelist", None)
    return queues


def expiries_for(settings: Settings, queues: Collection[str] | None) -> list[Expiry]:
    """What a worker consuming ``queues`` (``None``: all) removes: the retention of each sink it writes to that
    has one. Sink modules are imported only when needed, so a pool loads only its own driver."""
    found: list[Expiry] = []
    if settings.graph_retention_s and (queues is None or GRAPH.queue in queues):
        from etl.sinks.graph.expiry import GraphExpiry

        found.append(GraphExpiry(settings))
    if settings.timescale_retention_s and (queues is None or TIMESCALE.queue in queues):
        from etl.sinks.timescale_retention import TableExpiry

        found.append(TableExpiry(settings))
    return found


class RetentionOnBoot(Middleware):
    """Starts the retention task after the worker boots, stops it before the worker shuts down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.task: RetentionTask | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        expiries = expiries_for(self._settings, consumed_queues(worker))
        if expiries and isinstance(broker, RedisBroker):
            self.task = RetentionTask(expiries, broker.client, self._settings.retention_interval_s)
            self.task.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.stop()
