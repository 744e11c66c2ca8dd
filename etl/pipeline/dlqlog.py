"""What the dead-letter store says about what it was given: metrics for every dead letter, and logs that do not
grow with a flood.

Dead letters kept are logged as a summary: one WARNING line per stage and reason type per window of
``SUMMARY_INTERVAL_S`` per process, with the count and the ids of the first ``SUMMARY_FIRST_IDS`` (for ``etl dlq
show ID``). A window opens with the first dead letter after a quiet spell; it is logged when it closes, by a timer,
or when the process shuts down (``flush``), so every dead letter kept is in a line. Dead letters not kept because
the queue was full are logged at most once per ``FULL_NOTICE_INTERVAL_S`` per process, with how many there were and
over how long (the first of them to the line: a quiet spell makes it longer than the interval), and at shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from etl.pipeline.deadletter import DeadLetter, reason_type
from etl.pipeline.dlqscripts import DROPPED
from etl.runtime.metrics import DEAD_LETTERS, DEAD_LETTERS_DROPPED

log = logging.getLogger("etl.pipeline.dlq")

FULL_NOTICE_INTERVAL_S = 60.0
SUMMARY_INTERVAL_S = 10.0
SUMMARY_FIRST_IDS = 5


@dataclass
class Tally:
    """The dead letters of one stage and reason type in a window: how many, the first ids, and the first reason in
    full (the reason type is its bounded prefix)."""

    stage: str
    reason: str
    example: str
    count: int = 0
    first_ids: list[str] = field(default_factory=list)
    span_s: float = 0.0


class Summary:
    """Dead letters tallied by stage and reason type over windows of ``interval_s`` (seconds of ``clock``). Not
    thread-safe: ``DeadLetterLog`` holds a lock around it."""

    def __init__(self, *, interval_s: float = SUMMARY_INTERVAL_S, first_ids: int = SUMMARY_FIRST_IDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._first_ids = first_ids
        self._clock = clock
        self._opened: float | None = None
        self._tallies: dict[tuple[str, str], Tally] = {}

    def add(self, letters: Sequence[DeadLetter]) -> bool:
        """Count ``letters``; True when they opened a window."""
        if not letters:
            return False
        opened = self._opened is None
        if opened:
            self._opened = self._clock()
        for letter in letters:
            kind = reason_type(letter.reason)
            tally = self._tallies.setdefault((letter.stage, kind), Tally(letter.stage, kind, letter.reason))
            tally.count += 1
            if len(tally.first_ids) < self._first_ids:
                tally.first_ids.append(letter.id)
        return opened

    def due_in(self) -> float | None:
        """Seconds until the open window closes (0 when it is due), or None when none is open."""
        if self._opened is None:
            return None
        return max(0.0, self._opened + self._interval_s - self._clock())

    def take_due(self) -> list[Tally]:
        """The window's tallies once it has lasted ``interval_s``, closing it; else nothing."""
        return self.take_all() if self.due_in() == 0.0 else []

    def take_all(self) -> list[Tally]:
        """The open window's tallies, by stage and reason type, closing it (at shutdown)."""
        if self._opened is None:
            return []
        span_s = self._clock() - self._opened
        tallies = [self._tallies[key] for key in sorted(self._tallies)]
        for tally in tallies:
            tally.span_s = span_s
        self._opened, self._tallies = None, {}
        return tallies


class FullNotice:
    """Counts dead letters not kept and says so at most once per ``interval_s``: the first time at once, then
    with the number since the last line, and the seconds from the first of them to now. Thread-safe enough for
    counting: a lost increment under a race only changes a figure in a log line, never a metric."""

    def __init__(self, emit: Callable[[int, float], None], *, interval_s: float = FULL_NOTICE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._interval_s = interval_s
        self._clock = clock
        self._last = float("-inf")
        self._pending = 0
        self._since = 0.0

    def note(self, dropped: int) -> None:
        if dropped <= 0:
            return
        now = self._clock()
        if not self._pending:
            self._since = now
        self._pending += dropped
        if now - self._last >= self._interval_s:
            pending, self._pending, self._last = self._pending, 0, now
            self._emit(pending, now - self._since)

    def flush(self) -> None:
        """Say what was counted since the last line, if anything: at shutdown, so that nothing goes unsaid."""
        if self._pending:
            pending, self._pending, self._last = self._pending, 0, self._clock()
            self._emit(pending, self._last - self._since)


class Timer(Protocol):
    def cancel(self) -> None: ...


# Starts a timer that calls its function once, after a delay in seconds.
StartTimer = Callable[[float, Callable[[], None]], Timer]


def start_daemon_timer(delay_s: float, function: Callable[[], None]) -> Timer:
    """A started ``threading.Timer`` that does not keep the process alive: ``flush`` says what it would have."""
    timer = threading.Timer(delay_s, function)
    timer.daemon = True
    timer.start()
    return timer


class DeadLetterLog:
    """Counts and logs the outcome of every ``DeadLetterStore.add`` (thread-safe): the metrics at once, the lines
    as a summary per window, closed by a timer (``start_timer``) that exists only while a window is open. ``clock``
    (seconds) and ``start_timer`` are for tests to replace."""

    def __init__(self, *, max_bytes: int, max_entries: int, interval_s: float = SUMMARY_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, start_timer: StartTimer = start_daemon_timer) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._full = FullNotice(self._say_full, clock=clock)
        self._summary = Summary(interval_s=interval_s, clock=clock)
        self._start_timer = start_timer
        self._lock = threading.Lock()
        self._timer: Timer | None = None

    def record(self, letters: Sequence[DeadLetter], outcomes: Sequence[int]) -> None:
        kept: list[DeadLetter] = []
        for letter, outcome in zip(letters, outcomes, strict=True):
            labels = {"stage": letter.stage, "reason": reason_type(letter.reason)}
            DEAD_LETTERS.labels(**labels).inc()
            if outcome == DROPPED:
                DEAD_LETTERS_DROPPED.labels(**labels).inc()
            else:
                kept.append(letter)
        self._full.note(len(letters) - len(kept))
        with self._lock:
            if self._summary.add(kept) and self._timer is None:
                self._arm()

    def flush(self) -> None:
        """Log whatever was counted and not yet said; the process is shutting down."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            tallies = self._summary.take_all()
        _say_summary(tallies)
        self._full.flush()

    def _arm(self) -> None:
        # Called with the lock held, when a window is open.
        self._timer = self._start_timer(self._summary.due_in() or 0.0, self._close_window)

    def _close_window(self) -> None:
        with self._lock:
            self._timer = None
            tallies = self._summary.take_due()
            if self._summary.due_in() is not None:  # woken a little early: wait for the rest
                self._arm()
        _say_summary(tallies)

    def _say_full(self, dropped: int, over_s: float) -> None:
        log.warning("the DLQ is full, %d dead letters not kept over the last %.0f s (DLQ_MAX_BYTES=%d, "
                    "DLQ_MAX_ENTRIES=%d); each is still counted by stage and reason: see `etl dlq list`", dropped,
                    over_s, self._max_bytes, self._max_entries,
                    extra={"dropped": dropped, "over_s": round(over_s, 1)})


def _say_summary(tallies: Sequence[Tally]) -> None:
    for t in tallies:
        log.warning("dead-lettered %d event(s) at %s for %s in %.0f s; first: %s; e.g. %s", t.count, t.stage,
                    t.reason, t.span_s, ", ".join(t.first_ids), t.example,
                    extra={"stage": t.stage, "reason": t.reason, "events": t.count, "dead_letter_ids": t.first_ids,
                           "error": t.example})
