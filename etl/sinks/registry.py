"""The sinks of one worker process, opened lazily on first use and closed at worker shutdown.

A pool process only ever opens the sink its queue needs: ``dramatiq etl.actors --queues timescale`` never
connects to the graph database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

import dramatiq
from dramatiq.middleware import Middleware

from etl.config import Settings
from etl.sinks.base import Sink
from etl.stages import SINK_STAGES

log = logging.getLogger(__name__)


def sink_factories(settings: Settings) -> dict[str, Callable[[], Sink]]:
    """How to build each sink stage's sink (``etl.stages``), by stage name."""
    return {stage.name: partial(stage.sink, settings) for stage in SINK_STAGES}


class Sinks:
    """Thread-safe, lazily opened sinks by name."""

    def __init__(self, factories: dict[str, Callable[[], Sink]]) -> None:
        self._factories = factories
        self._open: dict[str, Sink] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Sink:
        """The opened sink ``name``. Raises whatever ``open`` raises (a ``SinkUnavailable`` is retried), having
        closed the sink: the next call builds a new one."""
        sink = self._open.get(name)
        if sink is not None:
            return sink
        with self._lock:
            if name not in self._open:
                sink = self._factories[name]()
                try:
                    sink.open()
                except BaseException:
                    # Each batch tries again: a sink that failed to open must not keep its connections meanwhile.
                    _close(name, sink)
                    raise
                self._open[name] = sink
                log.info("opened sink %s", name, extra={"sink": name})
            return self._open[name]

    def close_all(self) -> None:
        with self._lock:
            for name, sink in self._open.items():
                _close(name, sink)
            self._open.clear()


def _close(name: str, sink: Sink) -> None:
    try:
        sink.close()
    except Exception:  # noqa: BLE001 - what called for the close must go on
        log.exception("closing sink %s failed", name)


class CloseSinksOnShutdown(Middleware):
    """Closes the worker's sink connections cleanly when Dramatiq shuts the worker down."""

    def __init__(self, sinks: Sinks) -> None:
        self.sinks = sinks

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.sinks.close_all()
