"""The lookup tables in the worker pools: a worker process that serves the enrich queue (``--queues enrich``, or
every queue) loads them before its threads take their first batch, and reloads them while it runs
(``etl.lookups.live``); at worker shutdown the reload thread stops. The other pools never load them: a million
indicators is memory a sink's process has no use for.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Middleware

from etl.lookups.live import LiveLookups
from etl.middleware.retention import consumed_queues
from etl.stages import ENRICH


class LookupsOnBoot(Middleware):
    """Starts ``lookups`` before an enrich worker boots (its threads start after this hook), stops it before the
    worker shuts down."""

    def __init__(self, lookups: LiveLookups) -> None:
        self.lookups = lookups
        self._started = False

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        queues = consumed_queues(worker)
        if queues is None or ENRICH.queue in queues:
            self.lookups.start()
            self._started = True

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._started:
            self.lookups.stop()
