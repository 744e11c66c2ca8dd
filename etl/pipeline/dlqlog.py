"""What the dead-letter store says about what it was given: metrics for every dead letter, and logs that do not
grow with a flood.

Each ``add`` logs one WARNING line for the entries it kept (a count per reason type and the first entry's
reason), not one per event; the entries kept are bounded by the queue's own limits. Dead letters not kept because
the queue was full are logged at most once per ``FULL_NOTICE_INTERVAL_S`` per process, with how many there were
and over how long (the first of them to the line: a quiet spell makes it longer than the interval).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from etl.pipeline.deadletter import DeadLetter, reason_type
from etl.pipeline.dlqscripts import DROPPED
from etl.runtime.metrics import DEAD_LETTERS, DEAD_LETTERS_DROPPED

log = logging.getLogger("etl.pipeline.dlq")

FULL_NOTICE_INTERVAL_S = 60.0


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


class DeadLetterLog:
    """Counts and logs the outcome of one ``DeadLetterStore.add``."""

    def __init__(self, *, max_bytes: int, max_entries: int) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._full = FullNotice(self._say_full)

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
        if kept:
            _say_kept(kept)

    def _say_full(self, dropped: int, over_s: float) -> None:
        log.warning("the DLQ is full, %d dead letters not kept over the last %.0f s (DLQ_MAX_BYTES=%d, "
                    "DLQ_MAX_ENTRIES=%d); each is still counted by stage and reason: see `etl dlq list`", dropped,
                    over_s, self._max_bytes, self._max_entries,
                    extra={"dropped": dropped, "over_s": round(over_s, 1)})


def _say_kept(kept: Sequence[DeadLetter]) -> None:
    first = kept[0]
    by_reason = Counter(f"{letter.stage}/{reason_type(letter.reason)}" for letter in kept)
    summary = ", ".join(f"{n} {key}" for key, n in sorted(by_reason.items()))
    log.warning("dead-lettered %d event(s) (%s); first: %s at %s after %d attempt(s): %s", len(kept), summary,
                first.id, first.stage, first.attempts, first.reason,
                extra={"stage": first.stage, "dead_letter_id": first.id, "error": first.reason,
                       "attempts": first.attempts, "events": len(kept)})
