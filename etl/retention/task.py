"""The retention thread of a worker process: at its start, then every ``RETENTION_INTERVAL`` (jittered), each of
its sinks' runs (``etl.retention.runs``), if it gets that sink's lease first.

The lease is a Redis key on the pipeline's own Redis holding the task's token, set only while it is free or
already the task's own (``LEASE_SCRIPT``): whoever holds it runs, the others skip, and it expires by itself (nothing
to release, nothing stuck when a process dies mid-run). A run cut short by its budget means retention is behind:
the task starts the next one at once, renewing its own lease, instead of waiting an interval while expired data
piles up. Runs then follow one another at the pace ``expire`` keeps (the writers get the sink at least half the
time), so a retention that fell behind catches up rather than letting the graph grow, which would make every write
dearer. The thread writes through its sinks' own connections (``Expiry``), never the writers': it holds nothing a
write needs, and each statement is short. A failed run is logged and tried again at the next interval. Metrics:
``etl.runtime.metrics``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import redis

from etl.envvalues import duration_text
from etl.errors import EtlError
from etl.retention.runs import Expiry, Run, cutoff_s, expire, lease_ms, next_delay_s, run_budget_s
from etl.runtime.metrics import RETENTION_LAST_RUN, RETENTION_LAST_RUN_SECONDS, RETENTION_REMOVED

log = logging.getLogger(__name__)

LEASE_PREFIX = "etl:retention:"
STOP_TIMEOUT_S = 10.0
# Take the lease when it is free or the caller's own (then renew it): 1 if the caller holds it now, else 0.
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""


class RetentionTask:
    """Runs retention for ``expiries`` on a daemon thread, at ``start`` and then every ``interval_s`` seconds (at
    once while behind), until ``stop``; ``client`` is the Redis holding the leases, ``clock`` times a run's
    budget."""

    def __init__(self, expiries: Sequence[Expiry], client: redis.Redis, interval_s: float, *,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._expiries = tuple(expiries)
        self._clock = clock
        self._client = client
        self._interval_s = interval_s
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._token = uuid.uuid4().hex
        self._take_lease = client.register_script(LEASE_SCRIPT)
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
        behind = True  # a process that starts does its first run at once: it may be the only one, and behind
        try:
            while not self._stopping.wait(0 if behind else next_delay_s(self._interval_s, self._rng)):
                behind = False
                for expiry in self._expiries:
                    if self._stopping.is_set():
                        break
                    try:
                        run = self.run_once(expiry)
                    except Exception:  # noqa: BLE001 - a bug must not end retention for the process's life
                        log.exception("retention of %s failed unexpectedly", expiry.sink, extra={"sink": expiry.sink})
                        continue
                    behind = behind or (run is not None and not run.complete)
        finally:
            for expiry in self._expiries:
                expiry.close()

    def run_once(self, expiry: Expiry) -> Run | None:
        """One run for ``expiry`` if its lease is free or already this task's: the run, or ``None`` when another
        process holds the lease or the run failed (logged)."""
        try:
            key = LEASE_PREFIX + expiry.lease_key
            if not self._take_lease(keys=[key], args=[self._token, lease_ms(self._interval_s)]):
                return None
            counter = RETENTION_REMOVED.labels(sink=expiry.sink)
            run = expire(expiry, cutoff_s(time.time(), expiry.retention_s), run_budget_s(self._interval_s),
                         stopping=self._stopping.is_set, removed_now=counter.inc, clock=self._clock,
                         pause=self._stopping.wait)
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
