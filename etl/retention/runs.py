"""One retention run, and the schedule of runs: pure logic, no I/O of its own.

A run removes one batch after another (each its own statement and transaction) until a batch comes back short
(nothing older is left), its time budget is spent, or the worker is stopping. After each statement it waits as long
again (``PAUSE_FACTOR``): FalkorDB runs one write at a time per graph, and back-to-back deletions would hold the
sink's writes back for the whole run. Runs come every ``RETENTION_INTERVAL``, jittered so that replicas spread out,
and each takes a lease for ``LEASE_SHARE`` of the interval first: one run at a time across every process and
replica. A run's budget, ``RUN_BUDGET_SHARE`` of the interval, ends well before its lease, so runs never overlap; a
run cut short by its budget is followed at once by the next, under the same process's renewed lease
(``etl.retention.task``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

RUN_BUDGET_SHARE = 0.5
# The pause after a statement, as a multiple of the time it took: the writes get the graph at least half the time.
PAUSE_FACTOR = 1.0
# Shorter than the shortest jittered interval (1 - JITTER_SHARE), so that the lease of a process that died is free
# by the others' next runs; longer than a run's budget, with room for the statement running when the budget ends.
LEASE_SHARE = 0.8
JITTER_SHARE = 0.1


class Expiry(Protocol):
    """What one sink's retention removes. ``sink`` labels its metrics and logs, ``removes`` names what it counts
    (``Event nodes``, ``rows``); ``lease_key`` names the data it removes from (its graph, its table), so one run at
    a time touches it; ``retention_s`` is how old, by event time, an event may get; ``batch`` the most one
    ``remove_before`` removes."""

    sink: str
    removes: str
    lease_key: str
    retention_s: int
    batch: int

    def remove_before(self, cutoff_s: float) -> int:
        """Remove at most ``batch`` events whose event time is before ``cutoff_s`` (Unix seconds), in one
        statement; return how many it removed. Raises ``EtlError``."""

    def close(self) -> None:
        """Release the connection. Safe to call twice."""


@dataclass(frozen=True)
class Run:
    """What one run did: events removed, statements sent, seconds taken, and whether it reached the end of what
    had expired (``False``: cut short by its budget or a stop, to go on next time)."""

    removed: int
    statements: int
    seconds: float
    complete: bool


def expire(expiry: Expiry, cutoff_s: float, budget_s: float, *, stopping: Callable[[], bool] = lambda: False,
           removed_now: Callable[[int], None] = lambda count: None,
           clock: Callable[[], float] = time.monotonic,
           pause: Callable[[float], object] = time.sleep) -> Run:
    """Remove batches of events older than ``cutoff_s`` (Unix seconds) until one comes back short, ``budget_s``
    seconds have passed (measured by ``clock``, pauses included) or ``stopping()``; each batch's count goes to
    ``removed_now`` as it is removed (a later failure does not undo it). Between statements, ``pause`` (seconds)
    for ``PAUSE_FACTOR`` times the last one's duration. Raises what ``remove_before`` raises."""
    start = clock()
    removed = statements = 0
    while True:
        began = clock()
        count = expiry.remove_before(cutoff_s)
        removed_now(count)
        removed += count
        statements += 1
        if count < expiry.batch:
            return Run(removed, statements, clock() - start, complete=True)
        if clock() - start >= budget_s or stopping():
            return Run(removed, statements, clock() - start, complete=False)
        pause((clock() - began) * PAUSE_FACTOR)


def cutoff_s(now_s: float, retention_s: int) -> float:
    """The event time (Unix seconds) before which an event has expired, ``now_s`` being the Unix time now."""
    return now_s - retention_s


def run_budget_s(interval_s: float) -> float:
    """The longest one run goes on, in seconds."""
    return interval_s * RUN_BUDGET_SHARE


def lease_ms(interval_s: float) -> int:
    """How long a run's lease lasts, in milliseconds (Redis's ``PX``)."""
    return max(1, int(interval_s * LEASE_SHARE * 1000))


def next_delay_s(interval_s: float, rng: random.Random) -> float:
    """Seconds until the next run: ``interval_s``, give or take ``JITTER_SHARE`` of it."""
    return interval_s * rng.uniform(1 - JITTER_SHARE, 1 + JITTER_SHARE)
