"""One Neo4j driver per thread, so that no Bolt connection ever passes from one thread to another.

The driver's pool is documented as thread-safe, but under concurrent writers (deadlocks, reruns) neo4j 6.4 was
seen to let two threads touch one connection's socket at once: one thread changed the socket's timeout while the
other was checking it for end-of-file, and the checking thread then blocked in ``recv`` forever (or spun in it, at
full CPU), with no transaction running on the server. Nothing in Python can interrupt that thread, not even
Dramatiq's time limit. A driver that only its own thread uses has nothing to share; a worker thread keeps one
connection open at a time, as it did from the shared pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from neo4j import Driver

from etl.errors import SinkUnavailable


class ThreadDrivers:
    """The driver of the calling thread, made by ``make`` on its first call from that thread. Thread-safe."""

    def __init__(self, make: Callable[[], Driver]) -> None:
        self._make = make
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: list[Driver] = []
        self._closed = False

    def current(self) -> Driver:
        """This thread's driver. Raises what ``make`` raises, and ``SinkUnavailable`` once closed."""
        driver: Driver | None = getattr(self._local, "driver", None)
        self._refuse_if_closed()
        if driver is not None:
            return driver
        driver = self._make()
        with self._lock:
            closed = self._closed
            if not closed:
                self._made.append(driver)
        if closed:  # closed while this one was being made: nobody else would close it
            driver.close()
            self._refuse_if_closed()
        self._local.driver = driver
        return driver

    def _refuse_if_closed(self) -> None:
        with self._lock:
            if self._closed:
                raise SinkUnavailable("Neo4j: the sink's drivers are closed")

    def close(self) -> None:
        """Close every thread's driver. Safe to call twice."""
        with self._lock:
            drivers, self._made, self._closed = self._made, [], True
        for driver in drivers:
            driver.close()
