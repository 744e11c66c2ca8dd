"""The retention thread of a worker process: every ``RETENTION_INTERVAL`` (jittered), each of its sinks' runs
(``etl.retention.runs``), if it gets that sink's lease first.

The lease is a Redis key on the pipeline's own Redis, ``SET NX PX``: whoever sets it runs, the others skip, and it
expires by itself (nothing to release, nothing stuck when a process dies mid-run). The thread writes through its
sinks' own connections (``Expiry``), never the writers': it holds nothing a write needs, and each statement is
short. A failed run is logged and tried again at the next interval. Metrics: ``etl.runtime.metrics``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence

import redis

from etl.envvalues import duration_text
from etl.errors import EtlError
from etl.retention.runs import Expiry, Run, cutoff_s, expire, lease_ms, next_delay_s, run_budget_s
from etl.runtime.metrics import RETENTION_LAST_RUN, RETENTION_LAST_RUN_SECONDS, RETENTION_REMOVED

log = logging.getLogger(__name__)

LEASE_PREFIX = "etl:retention:"
STOP_TIMEOUT_S = 10.0


class RetentionTask:
    """Runs retention for ``expiries`` every ``interval_s`` seconds on a daemon thread, after ``start`` and until
    ``stop``; ``client`` is the Redis holding the leases."""

    def __init__(self, expiries: Sequence[Expiry], client: redis.Redis, interval_s: float, *,
                 rng: random.Random | None = None) -> None:
        self._expiries = tuple(expiries)
        self._client = client
        self._interval_s = interval_s
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Ask the thread to stop after the statement it is running, and wait up to ``timeout_s``; whether it
        ended. It closes its connections as it ends."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while not self._stopping.wait(next_delay_s(self._interval_s, self._rng)):
                for expiry in self._expiries:
                    if self._stopping.is_set():
                        break
                    try:
                        self.run_once(expiry)
                    except Exception:  # noqa: BLE001 - a bug must not end retention for the process's life
                        log.exception("retention of %s failed unexpectedly", expiry.sink, extra={"sink": expiry.sink})
        finally:
            for expiry in self._expiries:
                expiry.close()

    def run_once(self, expiry: Expiry) -> Run | None:
        """One run for ``expiry`` if its lease is free: the run, or ``None`` when another process holds the lease
        or the run failed (logged)."""
        try:
            if not self._client.set(LEASE_PREFIX + expiry.lease_key, "1", nx=True, px=lease_ms(self._interval_s)):
                return None
            counter = RETENTION_REMOVED.labels(sink=expiry.sink)
            run = expire(expiry, cutoff_s(time.time(), expiry.retention_s), run_budget_s(self._interval_s),
                         stopping=self._stopping.is_set, removed_now=counter.inc, pause=self._stopping.wait)
        except (EtlError, redis.RedisError) as e:
            log.warning("retention of %s failed, tried again in %gs: %s", expiry.sink, self._interval_s, e,
                        extra={"sink": expiry.sink})
            return None
        RETENTION_LAST_RUN.labels(sink=expiry.sink).set(time.time())
        RETENTION_LAST_RUN_SECONDS.labels(sink=expiry.sink).set(run.seconds)
        if run.removed:
            log.info("retention removed %d %s older than %s from %s in %.2fs (%d statements%s)", run.removed,
                     expiry.removes, duration_text(expiry.retention_s), expiry.sink, run.seconds, run.statements,
                     "" if run.complete else ", more next time",
                     extra={"sink": expiry.sink, "removed": run.removed, "seconds": round(run.seconds, 3)})
        return run
