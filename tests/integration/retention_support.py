"""A retention run on a thread of its own, for the tests that write while it deletes (graph and table alike)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from etl.retention.runs import Expiry, Run, expire

RUN_BUDGET_S = 120


@contextmanager
def expiring_in_background(expiry: Expiry) -> Iterator[tuple[Future[Run], list[float]]]:
    """Start one run removing everything ``expiry`` holds that has expired, on a thread; yield once it began, with
    its future and a list that gets the ``time.monotonic()`` at which it finished. Closes ``expiry`` after."""
    began = threading.Event()
    finished: list[float] = []

    def run() -> Run:
        began.set()
        try:
            return expire(expiry, time.time() - expiry.retention_s, budget_s=RUN_BUDGET_S)
        finally:
            finished.append(time.monotonic())
            expiry.close()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run)
        began.wait(10)
        yield running, finished
